#!/usr/bin/env python3
"""PyTorch's side of `unireward bench products`: x [T, in] @ W.T (--product y, the forward), g [T, out] @ W (dx)
or g.T @ x (dw) for Qwen2-0.5B's weight shapes with `torch.mm` on the CPU, in GFLOP/s (best of --iters runs after a
warm-up). With --dtype bf16/f16 both operands are in that dtype, as in a bf16 PyTorch model (oneDNN's AVX512-BF16 /
AMX kernels where the CPU has them); with f32, f32. `--backend openblas` runs the same f32 products through numpy's
bundled OpenBLAS (DYNAMIC_ARCH: its kernels for the CPU found at run time), the system-BLAS alternative to `gemm`.

    ~/.cache/unireward/torch-venv/bin/python scripts/bench_torch_matmul.py --dtype bf16
    ~/.cache/unireward/torch-venv/bin/python scripts/bench_torch_matmul.py --backend openblas
"""

import argparse
import time

import torch

SHAPES = [("q/o proj", 896, 896), ("k/v proj", 128, 896), ("gate/up proj", 4864, 896), ("down proj", 896, 4864),
          ("lm head", 151_936, 896)]  # fmt: skip


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--t", type=int, default=128)
    p.add_argument("--dtype", default="f32", choices=["f32", "bf16", "f16"])
    p.add_argument("--product", default="y", choices=["y", "dx", "dw"])
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--backend", default="torch", choices=["torch", "openblas"])
    args = p.parse_args()
    if args.backend == "openblas" and args.dtype != "f32":
        p.error("--backend openblas runs f32 products only")
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[args.dtype]
    formula = {"y": "x [T, in] @ W.T", "dx": "g [T, out] @ W", "dw": "g.T @ x [T, in]"}[args.product]
    if args.backend == "openblas":
        import numpy as np

        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        product = lambda a, b: np.matmul(a.numpy(), b.numpy())  # noqa: E731
        engine = f"numpy {np.__version__} ({blas['name']} {blas['version']})"
    else:
        product, engine = torch.mm, f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
    print(f"{engine}: {formula} ({args.dtype}), T = {args.t}; best of {args.iters} runs after a warm-up")
    print(f"{'weight':<14} {'out':>8} {'in':>6} {'time':>10} {'GFLOP/s':>10}")
    g = torch.Generator().manual_seed(0)
    for name, out_features, in_features in SHAPES:
        x = torch.randn(args.t, in_features, generator=g).to(dtype)
        w = (0.03 * torch.randn(out_features, in_features, generator=g)).to(dtype)
        grad = torch.randn(args.t, out_features, generator=g).to(dtype)
        a, b = {"y": (x, w.t()), "dx": (grad, w), "dw": (grad.t(), x)}[args.product]
        best = float("inf")
        for run in range(args.iters + 1):
            start = time.perf_counter()
            product(a, b)
            if run:
                best = min(best, time.perf_counter() - start)
        gflops = 2 * args.t * out_features * in_features / best / 1e9
        print(f"{name:<14} {out_features:>8} {in_features:>6} {best * 1e3:>7.2f} ms {gflops:>10.1f}")


if __name__ == "__main__":
    main()
