#!/usr/bin/env python3
"""Per-sequence log-probabilities in PyTorch eager, as TRL computes them: the baseline for unireward's fused kernels.

Same work as `unireward::ops::logprobs` on the same machine: logits [N, T, V] and labels [N, T] (a tenth of them set
to the ignore index -100), summed per sequence; the backward gives d logits. Two formulations:

- naive:     log_softmax over [N, T, V], gather the labels, masked sum (TRL's `get_batch_logps`), then `.backward()`;
- selective: TRL's current `selective_log_softmax` (f32: gather minus a per-sequence logsumexp; bf16: a row loop).

Logits and labels are aligned (TRL's one-token shift is left out: it is a view and the op takes aligned inputs).
Each measurement runs in a fresh subprocess so that its peak resident memory (ru_maxrss) is its own; "extra memory"
is that peak minus the resident memory once the inputs exist (the peak is reset after making them); on CUDA
(--device cuda), torch's peak allocation minus its allocation once the inputs exist. Times are the median of --repeats runs after one
warm-up. Any python with torch works:

    python3 scripts/bench_torch_logprobs.py                     # N=4, T=512, V=151936, f32, CPU
    python3 scripts/bench_torch_logprobs.py --dtype bf16 --impl selective --n 2
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

IGNORE_INDEX = -100


def current_rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def reset_peak_rss():
    """Forgets the peak so far (Linux >= 4.0), so that making the inputs does not count; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def logps_naive(torch, logits, labels):
    mask = labels != IGNORE_INDEX
    safe = labels.masked_fill(~mask, 0)
    per_token = torch.gather(logits.log_softmax(-1), 2, safe.unsqueeze(2)).squeeze(2)
    return (per_token * mask).sum(-1)


def logps_selective(torch, logits, labels):
    mask = labels != IGNORE_INDEX
    safe = labels.masked_fill(~mask, 0)
    if logits.dtype in (torch.float32, torch.float64):
        selected = torch.gather(logits, -1, safe.unsqueeze(-1)).squeeze(-1)
        lse = torch.stack([torch.logsumexp(row, dim=-1) for row in logits])
        per_token = selected - lse
    else:
        rows = []
        for row_logits, row_labels in zip(logits, safe):
            row_logps = torch.nn.functional.log_softmax(row_logits, dim=-1)
            rows.append(row_logps.gather(-1, row_labels.unsqueeze(-1)).squeeze(-1))
        per_token = torch.stack(rows)
    return (per_token * mask).sum(-1)


def measure(args):
    """One measurement (runs in its own process); prints a JSON line."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    fn = {"naive": logps_naive, "selective": logps_selective}[args.impl]
    device = torch.device(args.device)
    gen = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(args.n, args.t, args.v, generator=gen, device=device).to(dtype)
    labels = torch.randint(0, args.v, (args.n, args.t), generator=gen, device=device)
    labels[torch.rand(args.n, args.t, generator=gen, device=device) < 0.1] = IGNORE_INDEX
    if args.mode == "fwdbwd":
        logits.requires_grad_(True)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        exact = reset_peak_rss()
        base = current_rss_bytes()

    def once():
        if args.mode == "fwd":
            with torch.no_grad():
                return fn(torch, logits, labels)
        logits.grad = None
        out = fn(torch, logits, labels)
        out.sum().backward()
        return out

    times = []
    for i in range(args.repeats + 1):
        start = time.perf_counter()
        out = once()
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        if i > 0:  # the first run is the warm-up
            times.append(elapsed)
    assert torch.isfinite(out).all()
    print(json.dumps({
        "median_s": statistics.median(times),
        "min_s": min(times),
        "extra_bytes": max(0, (torch.cuda.max_memory_allocated() if cuda else peak_rss_bytes()) - base),
        "peak_reset": cuda or exact,
        "device": torch.cuda.get_device_name() if cuda else f"cpu, {torch.get_num_threads()} threads",
        "input_bytes": logits.numel() * logits.element_size(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=4, help="sequences")
    p.add_argument("--t", type=int, default=512, help="tokens per sequence")
    p.add_argument("--v", type=int, default=151_936, help="vocabulary (Qwen2)")
    p.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    p.add_argument("--device", default="cpu", help="cpu or cuda (extra memory: torch's peak allocation there)")
    p.add_argument("--impl", choices=["naive", "selective", "both"], default="naive")
    p.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--mode", choices=["fwd", "fwdbwd"], help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print one JSON object per measurement")
    args = p.parse_args()
    if args.mode:
        measure(args)
        return

    gb = args.n * args.t * args.v * (4 if args.dtype == "f32" else 2) / 1e9
    print(f"PyTorch eager, {args.device}: N={args.n} T={args.t} V={args.v} {args.dtype} ({gb:.2f} GB of logits), "
          f"median of {args.repeats} after a warm-up, each row in its own process")
    impls = ["naive", "selective"] if args.impl == "both" else [args.impl]
    print(f"{'impl':<10} {'pass':<28} {'median':>9} {'min':>9} {'extra memory':>13} {'extra/logits':>13}")
    for impl in impls:
        for mode, label in [("fwd", "forward (no_grad)"), ("fwdbwd", "forward + backward")]:
            cmd = [sys.executable, __file__, "--mode", mode, "--impl", impl, "--n", str(args.n), "--t", str(args.t),
                   "--v", str(args.v), "--dtype", args.dtype, "--repeats", str(args.repeats),
                   "--threads", str(args.threads), "--device", args.device]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                errors = [l for l in proc.stderr.splitlines() if "Error" in l] or proc.stderr.splitlines()[-1:]
                sys.exit(f"{impl} {mode} on {args.device} failed: {errors[-1] if errors else proc.returncode}")
            r = json.loads(proc.stdout.splitlines()[-1])
            if args.json:
                print(json.dumps({"impl": impl, "mode": mode, **r}))
                continue
            print(f"{impl:<10} {label:<28} {r['median_s']:>8.3f}s {r['min_s']:>8.3f}s "
                  f"{r['extra_bytes'] / 1e9:>10.2f} GB {r['extra_bytes'] / r['input_bytes']:>12.2f}x")
    if not args.json:
        print(f"torch {r['torch']}, {r['device']}")


if __name__ == "__main__":
    main()
