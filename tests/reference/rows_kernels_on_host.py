"""Runs kernels/rows.cu (the row copies and row sums of LLaVA's feature packing) on the host, against numpy.

A check of the kernels for machines without a GPU, reusing heads_kernels_on_host.py's prelude (every CUDA thread
of a block a std::thread). Launch sizes are the library's: grid-stride loops of 256-thread blocks, at most 4096
blocks. Needs g++ (C++20) and numpy.

    ~/.cache/unireward/torch-venv/bin/python tests/reference/rows_kernels_on_host.py
"""
import ctypes, os, subprocess, sys, tempfile
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
_heads = open(HERE + "/heads_kernels_on_host.py").read()
exec(_heads[: _heads.index("HARNESS = ")])

HARNESS = r"""
template <typename K>
static void run(unsigned blocks, unsigned threads, K kernel) {
    gridDim = {blocks, 1, 1}; blockDim = {threads, 1, 1};
    for (unsigned b = 0; b < blocks; ++b) {
        blockIdx = {b, 0, 0};
        std::barrier<> bar(threads); block_barrier = &bar;
        std::vector<std::thread> ts;
        for (unsigned t = 0; t < threads; ++t) ts.emplace_back([=] { threadIdx = {t, 0, 0}; kernel(); });
        for (auto& t : ts) t.join();
    }
}
static unsigned elementwise(long long len) { long long b = (len + 255) / 256; return b < 1 ? 1 : (b > 4096 ? 4096 : b); }
extern "C" {
void emu_copy_rows(const float* src, const int* src_rows, const int* dst_rows, long long count, int c, float* dst) {
    run(elementwise(count * c), 256, [=] { copy_rows_f32(src, src_rows, dst_rows, count, c, dst); });
}
void emu_sum_rows(const float* src, const int* rows, int count, int c, float* out) {
    run(elementwise(c), 256, [=] { sum_rows_f32(src, rows, count, c, out); });
}
}
"""

body = open(ROOT + "/kernels/rows.cu").read().replace('#include "common.cuh"', "")
d = tempfile.mkdtemp()
open(d + "/k.cpp", "w").write(PRELUDE + common_header() + body.replace('extern "C" __global__', 'extern "C"') + HARNESS)
subprocess.run(["g++", "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", d + "/k.cpp", "-o", d + "/k.so"], check=True)
lib = ctypes.CDLL(d + "/k.so")
P = lambda a: a.ctypes.data_as(ctypes.c_void_p)

rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
ok = True
# Awkward sizes: a row length that is not a multiple of a warp, more elements than one block, repeated sources.
for rows, c, count in [(9, 37, 7), (40, 129, 30), (5, 1, 5)]:
    src = rng.standard_normal((rows, c)).astype(np.float32)
    src_rows = rng.integers(0, rows, count).astype(np.int32)
    dst_rows = rng.permutation(count + 3)[:count].astype(np.int32)
    dst = np.full((count + 3, c), np.nan, np.float32)
    lib.emu_copy_rows(P(src), P(src_rows), P(dst_rows), count, c, P(dst))
    want = np.full_like(dst, np.nan)
    want[dst_rows] = src[src_rows]
    copy_ok = np.array_equal(dst, want, equal_nan=True)
    out = np.full(c, np.nan, np.float32)
    lib.emu_sum_rows(P(src), P(src_rows), count, c, P(out))
    ref = src.astype(np.float64)[src_rows].sum(axis=0)
    err = np.abs(out - ref).max()
    sum_ok = bool(err <= 1e-5 * max(1.0, np.abs(ref).max()))
    print(f"rows={rows} c={c} count={count}: copy {'ok' if copy_ok else 'FAIL'}, sum max err {err:.1e} "
          f"{'ok' if sum_ok else 'FAIL'}")
    ok &= copy_ok and sum_ok
sys.exit(0 if ok else 1)
