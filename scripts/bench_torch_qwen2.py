#!/usr/bin/env python3
"""Qwen2-0.5B-shaped decoder in PyTorch eager (transformers' Qwen2ForCausalLM): the baseline for
`unireward bench model`.

Same work as the Rust command on the same machine: Qwen2-0.5B's shapes (hidden 896, 14 heads, 2 KV heads,
intermediate 4864, vocab 151,936, tied embeddings, rope theta 1e6, eps 1e-6) with --layers layers, random weights
(transformers' init: normal with std 0.02, biases 0, norms 1), random token ids [N, T]. Two passes:

- forward + loss:            model(input_ids, labels=input_ids).loss under no_grad (transformers shifts the labels);
- forward + loss + backward: the same with grad, then loss.backward() into fresh gradients.

Each (attention, pass) runs in its own subprocess so that its peak memory is its own. Peak extra memory: on the CPU,
the growth of the peak resident set (VmHWM, reset through /proc/self/clear_refs once the model and inputs exist)
over the resident set at that point; on CUDA, torch.cuda.max_memory_allocated() minus the allocation once the model
and inputs exist. Times are the median of --iters runs after one warm-up. Model FLOPs as the Rust command counts
them: 2·P·tokens forward and 6·P·tokens forward + backward, plus attention 4·L·N·T²·H forward (3× with the
backward); MFU on CUDA against H200's dense peaks (bf16 989 TFLOP/s, f32 67 TFLOP/s).

    /root/.cache/unireward/venv/bin/python scripts/bench_torch_qwen2.py              # f32, N=1, T=128, 24 layers
    python3 scripts/bench_torch_qwen2.py --device cuda --dtype bf16 --attn sdpa
"""

import argparse
import json
import statistics
import subprocess
import sys
import time

H200_BF16_FLOPS = 989e12
H200_F32_FLOPS = 67e12


def status_kib(field):
    """A memory field of /proc/self/status (VmRSS, VmHWM), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss():
    """Resets VmHWM to the current resident set (Linux >= 4.0); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def time_pass(once, iters, device):
    """Runs once() iters + 1 times (the first is the warm-up) and measures, from the memory in use now: the median
    and minimum time, the peak extra memory (resident set growth on the CPU, torch.cuda.max_memory_allocated() on
    CUDA) and the last run's result, as a dict for the pass's JSON line."""
    import torch

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        exact = reset_peak_rss()
        base = status_kib("VmRSS")
    times = []
    for i in range(iters + 1):
        start = time.perf_counter()
        result = once()
        if cuda:
            torch.cuda.synchronize()
        if i > 0:  # the first run is the warm-up
            times.append(time.perf_counter() - start)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "extra_bytes": max(0, (torch.cuda.max_memory_allocated() if cuda else status_kib("VmHWM")) - base),
        "peak_reset": cuda or exact,
        "device": torch.cuda.get_device_name() if cuda else f"cpu, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "result": result,
    }


def measure(args):
    """One (attention, pass) measurement in this process; prints a JSON line."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    device = torch.device(args.device)
    config = Qwen2Config(vocab_size=151_936, hidden_size=896, intermediate_size=4864, num_hidden_layers=args.layers,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32_768,
                         rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True, use_cache=False,
                         attn_implementation=args.attn)
    with device:  # initialised where it runs (the 0.5B init takes seconds on the host)
        model = Qwen2ForCausalLM(config).to(dtype)
    model.train(args.mode == "fwdbwd")
    params = sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, config.vocab_size, (args.n, args.t), device=device)
    def once():
        if args.mode == "fwd":
            with torch.no_grad():
                return model(input_ids=ids, labels=ids).loss
        model.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss

    r = time_pass(once, args.iters, device)
    print(json.dumps({**r, "result": None, "loss": r["result"].item(), "params": params}))


def model_flops(params, layers, n, t, mode):
    tokens = n * t
    attention = 4 * layers * tokens * t * 896
    return 2 * params * tokens + attention if mode == "fwd" else 6 * params * tokens + 3 * attention


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1, help="sequences")
    p.add_argument("--t", type=int, default=128, help="tokens per sequence")
    p.add_argument("--layers", type=int, default=24, help="decoder layers (Qwen2-0.5B: 24)")
    p.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--attn", choices=["eager", "sdpa", "both"], default="both", help="attention implementation")
    p.add_argument("--iters", type=int, default=3, help="timed runs after one warm-up")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--mode", choices=["fwd", "fwdbwd"], help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print one JSON object per measurement")
    args = p.parse_args()
    if args.mode:
        measure(args)
        return

    cuda = args.device.startswith("cuda")
    print(f"PyTorch eager, Qwen2ForCausalLM at Qwen2-0.5B shapes, {args.layers} layers, random weights, {args.dtype} "
          f"on {args.device}; N = {args.n}, T = {args.t}; median of {args.iters} runs after a warm-up, "
          f"each row in its own process")
    head = f"{'attn':<6} {'pass':<26} {'median':>10} {'tokens/s':>10} {'peak extra':>12} {'loss':>9}"
    print(head + (f" {'TFLOP/s':>10} {'MFU bf16':>10} {'MFU f32':>10}" if cuda else ""))
    attns = ["eager", "sdpa"] if args.attn == "both" else [args.attn]
    tokens = args.n * args.t
    for attn in attns:
        for mode, label in [("fwd", "forward + loss (no_grad)"), ("fwdbwd", "forward + loss + backward")]:
            cmd = [sys.executable, __file__, "--mode", mode, "--attn", attn, "--n", str(args.n), "--t", str(args.t),
                   "--layers", str(args.layers), "--dtype", args.dtype, "--device", args.device,
                   "--iters", str(args.iters), "--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                errors = [l for l in proc.stderr.splitlines() if "Error" in l] or proc.stderr.splitlines()[-1:]
                sys.exit(f"{attn} {mode} on {args.device} failed: {errors[-1] if errors else proc.returncode}")
            r = json.loads(proc.stdout.splitlines()[-1])
            if args.json:
                print(json.dumps({"attn": attn, "mode": mode, **r}))
                continue
            achieved = model_flops(r["params"], args.layers, args.n, args.t, mode) / r["median_s"]
            line = (f"{attn:<6} {label:<26} {r['median_s']:>8.3f} s {tokens / r['median_s']:>10.0f} "
                    f"{r['extra_bytes'] / 2**20:>8.1f} MiB {r['loss']:>9.4f}")
            if cuda:
                line += (f" {achieved / 1e12:>10.1f} {100 * achieved / H200_BF16_FLOPS:>9.1f}% "
                         f"{100 * achieved / H200_F32_FLOPS:>9.1f}%")
            else:
                line += f"   {achieved / 1e9:.1f} GFLOP/s"
            print(line)
    if not args.json:
        print(f"torch {r['torch']}, {r['device']}, {r['params'] / 1e6:.1f}M parameters"
              + ("" if r["peak_reset"] else " (peak memory not reset: VmHWM includes building the model)"))


if __name__ == "__main__":
    main()
