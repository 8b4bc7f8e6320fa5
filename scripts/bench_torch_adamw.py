#!/usr/bin/env python3
"""The optimizer step alone in PyTorch: torch.optim.AdamW with foreach=True and with fused=True, with and without
torch.nn.utils.clip_grad_norm_ (foreach), on the parameter shapes of Qwen2-0.5B (494,032,768 f32 values with the
tied head; --layers fewer decoder layers to fit a smaller machine): the baseline of `cargo bench --bench optim`,
which steps the same shapes. lr 1e-4, betas (0.9, 0.999), eps 1e-8, weight decay 0.01, max_norm 1.0.

Times are per step, the median of --repeats steps after --warmup steps (the first allocates the moments). On
CUDA (--device cuda) synchronised after each step. Any python with torch works:

    python3 scripts/bench_torch_adamw.py [--layers 24] [--repeats 5] [--device cpu]
"""

import argparse
import statistics
import time

import torch


def qwen2_05b_shapes(layers):
    h, kv, inter, vocab = 896, 128, 4864, 151936
    layer = [(h, h), (h,), (kv, h), (kv,), (kv, h), (kv,), (h, h), (inter, h), (inter, h), (h, inter), (h,), (h,)]
    return [(vocab, h)] + layer * layers + [(h,)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    shapes = qwen2_05b_shapes(args.layers)
    params = [torch.nn.Parameter(torch.randn(s, device=dev) * 0.02) for s in shapes]
    for p in params:
        p.grad = torch.randn(s := p.shape, device=dev) * 1e-3
    numel = sum(p.numel() for p in params)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(params)} tensors, {numel:,} f32 values")
    for variant in ["foreach", "fused"]:
        opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
                                **{variant: True})
        for clip in [False, True]:
            def step():
                if clip:
                    torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
                opt.step()
            for _ in range(args.warmup):
                step()
            sync()
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                step()
                sync()
                times.append(time.perf_counter() - t0)
            name = f"AdamW({variant}=True)" + (" + clip_grad_norm_" if clip else "")
            med = statistics.median(times)
            print(f"{name:<44} {med * 1e3:9.1f} ms/step  ({numel / med / 1e9:.2f} G params/s)")
        del opt


if __name__ == "__main__":
    main()
