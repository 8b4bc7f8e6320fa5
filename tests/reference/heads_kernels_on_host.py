"""Runs the f32 kernels of kernels/heads.cu on the host, against the committed float64 fixtures.

A check of the kernels for machines without a GPU (the GPU tests compare CUDA against the CPU where there is one):
the .cu file is compiled with g++ behind a prelude that runs every CUDA thread of a block as a std::thread, with
std::barrier for __syncthreads and for the warp shuffles (exchanged through a per-warp buffer), so the warp and
block reductions, the shared-memory layout, the grid decomposition and every formula run as written. Blocks of 64
and of 256 threads (the library's launch size). f16 conversions use _Float16; fast-math intrinsics map to libm.
Needs g++ (C++20) and numpy.

    /root/.cache/unireward/venv/bin/python tests/reference/heads_kernels_on_host.py
"""
import ctypes, json, os, re, subprocess, sys, tempfile
import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
F = ROOT + "/tests/fixtures/heads/"

PRELUDE = r"""
#include <cmath>
#include <cstring>
#include <cstdint>
#include <thread>
#include <barrier>
#include <vector>
#include <memory>
using std::fmin; using std::fmax;
#define __device__
#define __global__
#define __forceinline__ inline
#define __restrict__
#define __shared__ static
#define __align__(x)
struct dim3 { unsigned x, y, z; };
static dim3 blockIdx, blockDim, gridDim;
static thread_local dim3 threadIdx;
static std::barrier<>* block_barrier;
static std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
static float shfl_buf[32][32];
static inline void __syncthreads() { block_barrier->arrive_and_wait(); }
static inline float __shfl_xor_sync(unsigned, float v, int o) {
    int lane = threadIdx.x % 32, w = threadIdx.x / 32;
    shfl_buf[w][lane] = v; warp_barriers[w]->arrive_and_wait();
    float r = shfl_buf[w][lane ^ o]; warp_barriers[w]->arrive_and_wait(); return r;
}
static inline float __shfl_sync(unsigned, float v, int src) {
    int lane = threadIdx.x % 32, w = threadIdx.x / 32;
    shfl_buf[w][lane] = v; warp_barriers[w]->arrive_and_wait();
    float r = shfl_buf[w][src]; warp_barriers[w]->arrive_and_wait(); return r;
}
static inline float __int_as_float(int v) { float f; memcpy(&f, &v, 4); return f; }
static inline float __uint_as_float(unsigned v) { float f; memcpy(&f, &v, 4); return f; }
#define __expf expf
#define __logf logf
using std::isnan;
using std::isfinite;


"""

def common_header():
    s = open(ROOT + "/kernels/common.cuh").read()
    s = s.replace("#pragma once", "")
    # f16 conversions via inline PTX: emulate with _Float16.
    s = re.sub(r"__device__ __forceinline__ float to_float\(f16 x\) \{.*?\n\}", 
               "inline float to_float(f16 x) { _Float16 h; memcpy(&h, &x.bits, 2); return (float)h; }", s, flags=re.S)
    s = re.sub(r"template <> __device__ __forceinline__ bf16 from_float<bf16>\(float x\) \{.*?\n\}",
               "template <> inline bf16 from_float<bf16>(float x) { unsigned u; memcpy(&u, &x, 4); u += 0x7fff + ((u >> 16) & 1); return bf16{(unsigned short)(u >> 16)}; }", s, flags=re.S)
    s = re.sub(r"template <> __device__ __forceinline__ f16 from_float<f16>\(float x\) \{.*?\n\}",
               "template <> inline f16 from_float<f16>(float x) { _Float16 h = (_Float16)x; f16 r; memcpy(&r.bits, &h, 2); return r; }", s, flags=re.S)
    return s

HARNESS = r"""
template <typename K>
static void run(unsigned blocks, unsigned threads, K kernel) {
    gridDim = {blocks, 1, 1}; blockDim = {threads, 1, 1};
    for (unsigned b = 0; b < blocks; ++b) {
        blockIdx = {b, 0, 0};
        std::barrier<> bar(threads); block_barrier = &bar;
        warp_barriers.clear();
        for (unsigned w = 0; w < threads / 32; ++w) warp_barriers.emplace_back(new std::barrier<>(32));
        std::vector<std::thread> ts;
        for (unsigned t = 0; t < threads; ++t) ts.emplace_back([=] { threadIdx = {t, 0, 0}; kernel(); });
        for (auto& t : ts) t.join();
    }
}
static Lse dyn_shared[8192];
extern "C" {
void emu_scalar_forward(const float* hidden, const long long* rows, const float* w, const float* b, int n, int h, int c, float* out, unsigned th) {
    run(n, th, [=] { heads_scalar_forward_f32(hidden, rows, w, b, h, c, out); });
}
void emu_scalar_grad_hidden(const float* g, const long long* rows, const float* w, int n, int h, int c, float* out, unsigned th) {
    run(n, th, [=] { heads_scalar_grad_hidden_f32(g, rows, w, h, c, out); });
}
void emu_scalar_grad_weight(const float* g, const long long* rows, const float* hidden, int n, int h, int c, int chunk_rows, float* partial, float* out, unsigned th) {
    int chunks = (n + chunk_rows - 1) / chunk_rows, tiles = (h + th - 1) / th;
    run(chunks * tiles, th, [=] { heads_scalar_grad_weight_partial_f32(g, rows, hidden, n, h, c, chunk_rows, partial); });
    run(2, th, [=] { heads_scalar_grad_weight_reduce_f32(partial, chunks, (long long)c * h, out); });
}
void emu_scalar_grad_bias(const float* g, int n, int c, float* out, unsigned th) {
    run(c, th, [=] { heads_scalar_grad_bias_f32(g, n, c, out); });
}
void emu_verdict_forward(const float* x, long long v, const int* off, const int* ids, const float* vals, int k, int b, float* lp, float* p, float* e, unsigned th) {
    run(b, th, [=] { heads_verdict_forward_f32(x, v, off, ids, vals, k, lp, p, e); });
}
void emu_verdict_backward(const float* x, long long v, const int* off, const int* ids, const float* vals, int k, int b, const float* g, const float* ge, float* out, unsigned th) {
    run(b, th, [=] { heads_verdict_backward_f32(x, v, off, ids, vals, k, g, ge, out); });
}
}
"""

def build():
    src = open(ROOT + "/kernels/heads.cu").read().replace('#include "common.cuh"', "")
    src = src.replace("extern __shared__ Lse class_lse[];", "#define class_lse dyn_shared_ptr\nstatic Lse* dyn_shared_ptr;")
    src = src.replace('extern "C" __global__', 'extern "C"')
    harness = HARNESS.replace("static Lse dyn_shared[8192];", "static Lse dyn_shared[8192];\nstatic int _init = (dyn_shared_ptr = dyn_shared, 0);")
    d = tempfile.mkdtemp()
    open(d + "/k.cpp", "w").write(PRELUDE + common_header() + src + harness)
    subprocess.run(["g++", "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", d + "/k.cpp", "-o", d + "/k.so"], check=True)
    return ctypes.CDLL(d + "/k.so")

lib = build()
P = lambda a: a.ctypes.data_as(ctypes.c_void_p)
f32 = lambda x: np.ascontiguousarray(np.array(x, dtype=np.float32))

def close(what, got, exp, rel):
    got, exp = np.asarray(got, np.float64), np.asarray(exp, np.float64)
    fin = np.isfinite(exp)
    scale = max(1.0, np.abs(exp[fin]).max() if fin.any() else 1.0)
    err = np.abs(got[fin] - exp[fin]).max() if fin.any() else 0.0
    ok = err <= rel * scale and np.array_equal(got[~fin], exp[~fin])
    print(f"  {what:<14} max err {err:.2e} (scale {scale:.1e}) {'ok' if ok else 'FAIL'}")
    return ok

ok = True
for th in (64, 256):
    print(f"== {th} threads per block")
    for name in ["scalar_bt", "scalar_multi", "scalar_t1"]:
        c = json.load(open(F + name + ".json")); print(name)
        n, t, h, k = c["n"], c["t"], c["h"], c["c"]
        hidden, w = f32(c["hidden"]), f32(c["weight"])
        b = f32(c["bias"]) if c["has_bias"] else None
        rows = np.array([i * t + e for i, e in enumerate(c["ends"])], dtype=np.int64)
        g = f32(c["grad"])
        out = np.zeros(n * k, np.float32)
        lib.emu_scalar_forward(P(hidden), P(rows), P(w), P(b) if b is not None else None, n, h, k, P(out), th)
        ok &= close("rewards", out, c["rewards"], 1e-5)
        gh = np.zeros(n * t * h, np.float32)
        lib.emu_scalar_grad_hidden(P(g), P(rows), P(w), n, h, k, P(gh), th)
        ok &= close("grad_hidden", gh, c["grad_hidden"], 1e-5)
        for chunk_rows in (1, 2, 32):
            chunks = (n + chunk_rows - 1) // chunk_rows
            partial = np.zeros(chunks * k * h, np.float32); gw = np.zeros(k * h, np.float32)
            lib.emu_scalar_grad_weight(P(g), P(rows), P(hidden), n, h, k, chunk_rows, P(partial), P(gw), th)
            ok &= close(f"grad_weight/{chunk_rows}", gw, c["grad_weight"], 1e-5)
        if b is not None:
            gb = np.zeros(k, np.float32)
            lib.emu_scalar_grad_bias(P(g), n, k, P(gb), th)
            ok &= close("grad_bias", gb, c["grad_bias"], 1e-5)
    for name in ["verdict_pair", "verdict_scores", "verdict_large", "verdict_k1", "verdict_many_ids"]:
        c = json.load(open(F + name + ".json")); print(name)
        bsz, v = c["b"], c["v"]
        k = len(c["offsets"]) - 1
        x = f32(c["logits"]); off = np.array(c["offsets"], np.int32); ids = np.array(c["ids"], np.int32)
        vals = f32(c["values"]) if c["values"] else None
        lp = np.zeros(bsz * k, np.float32); p = np.zeros(bsz * k, np.float32); e = np.zeros(bsz, np.float32)
        lib.emu_verdict_forward(P(x), ctypes.c_longlong(v), P(off), P(ids), P(vals) if vals is not None else None, k, bsz, P(lp), P(p), P(e), th)
        ok &= close("log_probs", lp, c["log_probs"], 1e-5)
        ok &= close("probs", p, c["probs"], 1e-5)
        if vals is not None:
            ok &= close("expected", e, c["expected"], 1e-5)
        g = f32(c["grad_log_probs"]); ge = f32(c["grad_expected"])
        out = np.zeros(bsz * v, np.float32)
        lib.emu_verdict_backward(P(x), ctypes.c_longlong(v), P(off), P(ids), P(vals) if vals is not None else None, k, bsz, P(g), P(ge) if vals is not None else None, P(out), th)
        ok &= close("grad_logits", out, c["grad_logits"], 1e-5)
print("ALL OK" if ok else "FAILURES")
sys.exit(0 if ok else 1)
