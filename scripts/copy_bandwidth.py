#!/usr/bin/env python3
"""Memory copy bandwidth of this machine, for BENCHMARKS.md: bytes read plus bytes written per second when copying
a buffer much larger than the caches (default 1 GiB), one thread (numpy) and all threads (torch, if installed).
The floor of a memory-bound kernel is its bytes moved divided by this."""

import argparse
import statistics
import time

import numpy as np


def best_rate(copy, nbytes, repeats):
    copy()  # warm-up: touches every page
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        copy()
        times.append(time.perf_counter() - start)
    return 2 * nbytes / statistics.median(times) / 1e9


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--mib", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    nbytes = args.mib << 20
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    print(f"copy of {args.mib} MiB, median of {args.repeats}, counting bytes read + written")
    print(f"numpy, 1 thread: {best_rate(lambda: np.copyto(dst, src), nbytes, args.repeats):.1f} GB/s")
    try:
        import torch
    except ImportError:
        return
    s, d = torch.from_numpy(src), torch.from_numpy(dst)
    print(f"torch, {torch.get_num_threads()} threads: {best_rate(lambda: d.copy_(s), nbytes, args.repeats):.1f} GB/s")


if __name__ == "__main__":
    main()
