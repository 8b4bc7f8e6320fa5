#!/usr/bin/env python3
"""SigLIP-so400m vision tower in PyTorch eager (transformers' SiglipVisionModel): the baseline for benches/siglip.rs.

Same work as the Rust bench on the same machine: so400m's shapes (hidden 1152, intermediate 4304, 16 heads of 72,
patch 14, image 384: 729 patches) with --layers encoder layers (LLaVA-OneVision runs 26 of 27), no head, random
weights (transformers' init), f32, one random 384×384 image (or --tiles of them: 10 are a 9-tile anyres image with
its base image). Two passes:

- forward:            model(pixel_values) under no_grad;
- forward + backward: the same with grad (parameters and pixels), then (last_hidden_state · g).sum().backward() into
                      fresh gradients, g a fixed random [1, 729, 1152] tensor.

(transformers also applies post_layernorm to last_hidden_state, one LayerNorm the Rust tower skips: a negligible
share of the work.) Each pass runs in its own subprocess so that its peak memory is its own: the growth of the peak
resident set over the resident set once the model and inputs exist (as bench_torch_qwen2.py measures), or on CUDA
torch.cuda.max_memory_allocated() over the allocation then. Times are the median of --iters runs after a warm-up.

    ~/.cache/unireward/torch-venv/bin/python scripts/bench_torch_siglip.py            # 26 layers, CPU
    python3 scripts/bench_torch_siglip.py --device cuda
"""

import argparse
import json
import subprocess
import sys

from bench_torch_qwen2 import time_pass


def measure(args):
    """One pass's measurement in this process; prints a JSON line."""
    import torch
    from transformers import SiglipVisionConfig, SiglipVisionModel

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    config = SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=args.layers,
                                num_attention_heads=16, image_size=384, patch_size=14, vision_use_head=False,
                                attn_implementation="eager")
    with device:
        model = SiglipVisionModel(config).float()
    model.train(False)
    pixels = torch.randn(args.tiles, 3, 384, 384, device=device)
    grad = torch.randn(args.tiles, 729, 1152, device=device)
    def once():
        if args.mode == "fwd":
            with torch.no_grad():
                return model(pixel_values=pixels).last_hidden_state
        model.zero_grad(set_to_none=True)
        x = pixels.clone().requires_grad_()
        out = model(pixel_values=x).last_hidden_state
        (out * grad).sum().backward()
        return out

    r = time_pass(once, args.iters, device)
    print(json.dumps({**r, "result": None, "params": sum(p.numel() for p in model.parameters())}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=26, help="encoder layers (LLaVA-OneVision: 26 of so400m's 27)")
    p.add_argument("--tiles", type=int, default=1, help="384x384 tiles in the batch (10: a 9-tile anyres image)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--iters", type=int, default=3, help="timed runs after one warm-up")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--mode", choices=["fwd", "fwdbwd"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode:
        measure(args)
        return
    print(f"PyTorch eager, SiglipVisionModel at so400m-patch14-384 shapes, {args.layers} layers, f32 on "
          f"{args.device}, {args.tiles} 384x384 tile(s); median of {args.iters} runs after a warm-up, each row in its "
          "own process")
    print(f"{'pass':<20} {'median':>10} {'min':>10} {'peak extra':>12}")
    for mode, label in [("fwd", "forward (no_grad)"), ("fwdbwd", "forward + backward")]:
        cmd = [sys.executable, __file__, "--mode", mode, "--layers", str(args.layers), "--tiles", str(args.tiles),
               "--device", args.device,
               "--iters", str(args.iters), "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{mode} on {args.device} failed: {proc.stderr.strip().splitlines()[-1:]}")
        r = json.loads(proc.stdout.splitlines()[-1])
        print(f"{label:<20} {r['median_s']:>8.3f} s {r['min_s']:>8.3f} s {r['extra_bytes'] / 2**20:>8.1f} MiB")
    print(f"torch {r['torch']}, {r['device']}, {r['params'] / 1e6:.1f}M parameters"
          + ("" if r["peak_reset"] else " (peak memory not reset: VmHWM includes building the model)"))


if __name__ == "__main__":
    main()
