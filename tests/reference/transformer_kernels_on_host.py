"""Runs the f32 kernels of the transformer ops (kernels/attention.cu, its KV-cache kernels included, rmsnorm.cu,
rope.cu, embedding.cu, swiglu.cu, layernorm.cu, gelu.cu, interpolate.cu) on the host, against the committed float64 fixtures of
tests/fixtures/transformer_ops/ (and numpy float64 references on random inputs).

A check of the kernels for machines without a GPU (the GPU tests compare CUDA against the CPU where there is one).
It reuses heads_kernels_on_host.py's prelude: every CUDA thread of a block runs as a std::thread, warp shuffles go
through a per-warp buffer behind barriers, so the grid decomposition, the warp reductions (attention's butterfly
included) and every formula run as written. Launch sizes are the library's. Needs g++ (C++20) and numpy.

    /root/.cache/unireward/venv/bin/python tests/reference/transformer_kernels_on_host.py
"""
import ctypes, json, math, os, subprocess, sys, tempfile
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
# PRELUDE, common_header() and ROOT: the definitions before heads_kernels_on_host.py's own harness.
_heads = open(HERE + "/heads_kernels_on_host.py").read()
exec(_heads[: _heads.index("HARNESS = ")])
FIX = ROOT + "/tests/fixtures/transformer_ops/"

EXTRA = r"""
#define __launch_bounds__(...)
using std::min;
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline float __fmul_rn(float a, float b) { return a * b; }
"""

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
static unsigned tiled(int n, int heads, int t) { return n * heads * ((t + 15) / 16); }
static unsigned elementwise(long long len) { long long b = (len + 255) / 256; return b < 1 ? 1 : (b > 4096 ? 4096 : b); }
extern "C" {
void emu_attention_forward(const float* q, const float* k, const float* v, const int* mask, int n, int t, int hq,
                           int hkv, int d, int causal, float* out, float* lse) {
    float scale = 1.0f / sqrtf((float)d);
    run(tiled(n, hq, t), 128, [=] { attention_forward_f32(q, k, v, mask, t, hq, hkv, d, causal, scale, out, lse); });
}
void emu_attention_backward(const float* q, const float* k, const float* v, const float* g, const float* out,
                            const int* mask, const float* lse, int n, int t, int hq, int hkv, int d, int causal,
                            float* delta, float* dq, float* dk_part, float* dv_part, float* dk, float* dv) {
    float scale = 1.0f / sqrtf((float)d);
    long long rows = (long long)n * t * hq, total = (long long)n * t * hkv * d;
    run(elementwise(rows * 32), 256, [=] { attention_backward_delta_f32(g, out, rows, t, hq, hkv, d, delta); });
    run(tiled(n, hq, t), 128, [=] {
        attention_backward_dq_f32(q, k, v, g, mask, lse, delta, t, hq, hkv, d, causal, scale, dq);
    });
    run(tiled(n, hq, t), 128, [=] {
        attention_backward_dkv_f32(q, k, v, g, mask, lse, delta, t, hq, hkv, d, causal, scale, dk_part, dv_part);
    });
    run(elementwise(total), 256, [=] { attention_backward_dkv_reduce_f32(dk_part, dv_part, total, t, hq, hkv, d, dk, dv); });
}
void emu_attention_cached(const float* q, const float* k, const float* v, const void* mask, int mask_i64,
                          const long long* start, int n, int tq, int s, int hq, int hkv, int d, float* out) {
    float scale = 1.0f / sqrtf((float)d);
    run(n * tq * hq, 128, [=] { attention_cached_f32(q, k, v, mask, mask_i64, start, tq, s, hq, hkv, d, scale, out); });
}
void emu_kv_cache_write(float* cache, const float* src, const long long* start, int n, int tq, int s, int row,
                        int broadcast) {
    long long total = (long long)n * tq * row;
    run(elementwise(total), 256, [=] { kv_cache_write_f32(cache, src, start, total, tq, s, row, broadcast); });
}
void emu_rmsnorm(const float* x, const float* w, const float* g, int rows, int h, float eps, float* y, float* rstd,
                 float* dx, float* partial, float* dw) {
    run(rows, 256, [=] { rmsnorm_forward_f32(x, w, eps, h, y, rstd); });
    run(rows, 256, [=] { rmsnorm_backward_dx_f32(g, x, w, rstd, h, dx); });
    int chunks = (rows + 31) / 32;
    run(chunks * ((h + 255) / 256), 256, [=] { rmsnorm_backward_dw_partial_f32(g, x, rstd, rows, h, 32, partial); });
    run(elementwise(h), 256, [=] { rmsnorm_backward_dw_reduce_f32(partial, chunks, h, dw); });
}
void emu_layernorm(const float* x, const float* w, const float* b, const float* g, int rows, int h, float eps,
                   float* y, float* mean, float* rstd, float* dx, float* partial_w, float* partial_b, float* dw,
                   float* db) {
    run(rows, 256, [=] { layernorm_forward_f32(x, w, b, eps, h, y, mean, rstd); });
    run(rows, 256, [=] { layernorm_backward_dx_f32(g, x, w, mean, rstd, h, dx); });
    int chunks = (rows + 31) / 32;
    run(chunks * ((h + 255) / 256), 256, [=] {
        layernorm_backward_dwb_partial_f32(g, x, mean, rstd, rows, h, 32, partial_w, partial_b);
    });
    run(elementwise(h), 256, [=] { layernorm_backward_dwb_reduce_f32(partial_w, partial_b, chunks, h, dw, db); });
}
void emu_rope(float* x, const int* pos, const float* inv, long long rows, int heads, int d, float sign) {
    run(elementwise(rows * heads * d / 2), 256, [=] { rope_f32(x, pos, inv, rows, heads, d, sign); });
}
void emu_embedding(const float* table, const int* ids, long long tokens, int h, float* out, const float* g,
                   const int* starts, const int* toks, int vocab, int accumulate, float* d_table) {
    run(elementwise(tokens * h), 256, [=] { embedding_forward_f32(table, ids, tokens, h, out); });
    run(vocab, 256, [=] { embedding_backward_f32(g, starts, toks, h, accumulate, d_table); });
}
void emu_swiglu(const float* gate, const float* up, const float* dy, long long n, float* y, float* dg, float* du) {
    run(elementwise(n), 256, [=] { swiglu_forward_f32(gate, up, n, y); });
    run(elementwise(n), 256, [=] { swiglu_backward_f32(dy, gate, up, n, dg, du); });
}
void emu_gelu(const float* x, const float* dy, long long n, int tanh_form, float* y, float* dx) {
    run(elementwise(n), 256, [=] { gelu_forward_f32(x, n, tanh_form, y); });
    run(elementwise(n), 256, [=] { gelu_backward_f32(dy, x, n, tanh_form, dx); });
}
void emu_bilinear(const float* x, const float* dy, int n, int h, int w, int c, int h2, int w2, float* y, float* dx) {
    float scale_h = (float)h / h2, scale_w = (float)w / w2;
    run(elementwise((long long)n * h2 * w2 * c), 256, [=] { bilinear_forward_f32(x, n, h, w, c, h2, w2, scale_h, scale_w, y); });
    run(elementwise((long long)n * h * w * c), 256, [=] { bilinear_backward_f32(dy, n, h, w, c, h2, w2, scale_h, scale_w, dx); });
}
}
"""

def build():
    src = ""
    for name in ["attention", "rmsnorm", "rope", "embedding", "swiglu", "layernorm", "gelu", "interpolate"]:
        body = open(f"{ROOT}/kernels/{name}.cu").read().replace('#include "common.cuh"', "")
        # Each file defines its own INSTANTIATE (and attention its TILE-sized macros): undefine between files.
        src += body.replace('extern "C" __global__', 'extern "C"') + "\n#undef INSTANTIATE\n"
    d = tempfile.mkdtemp()
    open(d + "/k.cpp", "w").write(PRELUDE + EXTRA + common_header() + src + HARNESS)
    subprocess.run(["g++", "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", d + "/k.cpp", "-o", d + "/k.so"],
                   check=True)
    return ctypes.CDLL(d + "/k.so")

lib = build()
P = lambda a: a.ctypes.data_as(ctypes.c_void_p)
f32 = lambda x: np.ascontiguousarray(np.array(x, dtype=np.float32))
i32 = lambda x: np.ascontiguousarray(np.array(x, dtype=np.int32))
# Outputs start as NaN, as a caller's reused buffer may: a kernel that skips an element fails the comparison.
garbage = lambda n: np.full(n, np.nan, np.float32)
load = lambda name: json.load(open(FIX + name + ".json"))

def close(what, got, exp, rel=1e-5):
    got, exp = np.asarray(got, np.float64), np.asarray(exp, np.float64)
    scale = max(1e-30, np.abs(exp).max())
    err = np.abs(got - exp).max()
    ok = bool(err <= rel * scale)
    print(f"  {what:<12} max err {err:.2e} (scale {scale:.1e}) {'ok' if ok else 'FAIL'}")
    return ok

ok = True
for name in ["attention_gqa", "attention_padded", "attention_bidirectional", "attention_bidirectional_padded"]:
    c = load(name); print(name)
    n, t, hq, hkv, d, causal = c["n"], c["t"], c["hq"], c["hkv"], c["d"], int(c["causal"])
    q, k, v, g, mask = f32(c["q"]), f32(c["k"]), f32(c["v"]), f32(c["grad_out"]), i32(c["mask"])
    out, lse = garbage(q.size), garbage(n * hq * t)
    lib.emu_attention_forward(P(q), P(k), P(v), P(mask), n, t, hq, hkv, d, causal, P(out), P(lse))
    ok &= close("out", out, c["out"]) & close("lse", lse, c["lse"])
    delta, dq, dkp, dvp, dk, dv = garbage(n * hq * t), garbage(q.size), garbage(q.size), garbage(q.size), garbage(k.size), garbage(k.size)
    lib.emu_attention_backward(P(q), P(k), P(v), P(g), P(out), P(mask), P(lse), n, t, hq, hkv, d, causal, P(delta),
                               P(dq), P(dkp), P(dvp), P(dk), P(dv))
    ok &= close("grad_q", dq, c["grad_q"]) & close("grad_k", dk, c["grad_k"]) & close("grad_v", dv, c["grad_v"])

def attention_reference(q, k, v, g, mask, n, t, hq, hkv, d, causal):
    """float64 attention as in transformer_ops.py (numpy): out, lse, and the gradients of sum(g * out)."""
    q, k, v, g = (a.astype(np.float64).reshape(n, t, -1, d).transpose(0, 2, 1, 3) for a in (q, k, v, g))
    k, v = np.repeat(k, hq // hkv, axis=1), np.repeat(v, hq // hkv, axis=1)
    real = mask.reshape(n, t) != 0
    visible = np.tril(np.ones((t, t), bool)) if causal else np.ones((t, t), bool)
    allowed = visible[None, None] & real[:, None, None, :]
    s = np.where(allowed, q @ k.transpose(0, 1, 3, 2) / math.sqrt(d), -np.inf)
    m = np.where(real[:, None, :, None], s.max(-1, keepdims=True), 0.0)
    e = np.where(allowed, np.exp(s - m), 0.0)
    lse = np.where(real[:, None, :], m[..., 0] + np.log(np.maximum(e.sum(-1), 1e-300)), 0.0)
    p = np.where(real[:, None, :, None], e / np.maximum(e.sum(-1, keepdims=True), 1e-300), 0.0)
    dp = g @ v.transpose(0, 1, 3, 2)
    ds = p * (dp - (p * dp).sum(-1, keepdims=True)) / math.sqrt(d)
    group = lambda x: x.reshape(n, hkv, hq // hkv, t, d).sum(2)
    back = lambda x: x.transpose(0, 2, 1, 3).reshape(-1)
    return back(p @ v), lse.reshape(-1), back(ds @ k), back(group(ds.transpose(0, 1, 3, 2) @ q)), \
        back(group(p.transpose(0, 1, 3, 2) @ g))

# Several tiles per head, d > 64 (a partly used third column per lane: SigLIP-so400m's 72), GQA, right padding, an
# all-padding row; causal and bidirectional.
rng = np.random.default_rng(7)
n, t, hq, hkv, d = 3, 37, 6, 2, 72
for causal in [1, 0]:
    print(f"attention random n={n} t={t} hq={hq} hkv={hkv} d={d} causal={causal}")
    q, g = f32(rng.standard_normal(n * t * hq * d)), f32(rng.standard_normal(n * t * hq * d))
    k, v = f32(rng.standard_normal(n * t * hkv * d)), f32(rng.standard_normal(n * t * hkv * d))
    mask = i32([[1] * t, [1] * 20 + [0] * (t - 20), [0] * t])
    want = attention_reference(q, k, v, g, mask, n, t, hq, hkv, d, causal)
    out, lse = garbage(q.size), garbage(n * hq * t)
    lib.emu_attention_forward(P(q), P(k), P(v), P(mask), n, t, hq, hkv, d, causal, P(out), P(lse))
    delta, dq, dkp, dvp, dk, dv = garbage(n * hq * t), garbage(q.size), garbage(q.size), garbage(q.size), garbage(k.size), garbage(k.size)
    lib.emu_attention_backward(P(q), P(k), P(v), P(g), P(out), P(mask), P(lse), n, t, hq, hkv, d, causal, P(delta),
                               P(dq), P(dkp), P(dvp), P(dk), P(dv))
    for what, got, exp in zip(["out", "lse", "grad_q", "grad_k", "grad_v"], [out, lse, dq, dk, dv], want):
        ok &= close(what, got, exp)

def cached_reference(q, k, v, mask, start, n, tq, s, hq, hkv, d):
    """float64 attention of queries at slots start[b] + i over the real cache slots up to theirs; zeros if none."""
    q, k, v = q.astype(np.float64).reshape(n, tq, hq, d), k.reshape(n, s, hkv, d), v.reshape(n, s, hkv, d)
    out = np.zeros((n, tq, hq, d))
    for b in range(n):
        for i in range(tq):
            seen = [j for j in range(start[b] + i + 1) if mask[b, j]]
            for h in range(hq):
                if seen:
                    g = h // (hq // hkv)
                    sc = k[b, seen, g].astype(np.float64) @ q[b, i, h] / math.sqrt(d)
                    p = np.exp(sc - sc.max())
                    out[b, i, h] = p / p.sum() @ v[b, seen, g]
    return out.reshape(-1)

# KV-cache attention: several strides of keys per warp, holes in the mask, per-sequence starts, a sequence that
# sees no key; then decode (Tq = 1) over a longer cache with d = 128 and an i32 mask.
for (n, tq, s, hq, hkv, d, starts, wide) in [(3, 5, 45, 6, 2, 72, [0, 40, 17], True),
                                             (2, 1, 300, 2, 1, 128, [299, 150], False)]:
    print(f"attention_cached n={n} tq={tq} s={s} hq={hq} hkv={hkv} d={d} starts={starts}")
    q = f32(rng.standard_normal(n * tq * hq * d))
    k, v = f32(rng.standard_normal(n * s * hkv * d)), f32(rng.standard_normal(n * s * hkv * d))
    mask = (rng.random((n, s)) < 0.7).astype(np.int64 if wide else np.int32)
    if n > 2:
        mask[2] = 0
    start = np.array(starts, np.int64)
    out = garbage(q.size)
    lib.emu_attention_cached(P(q), P(k), P(v), P(mask), int(wide), P(start), n, tq, s, hq, hkv, d, P(out))
    ok &= close("out", out, cached_reference(q, k, v, mask, starts, n, tq, s, hq, hkv, d))

# Cache writes: one block per sequence, then a broadcast one, over several grid-stride blocks.
n, s, row, tq = 3, 50, 24, 20
print(f"kv_cache_write n={n} s={s} row={row} tq={tq}")
cache = f32(rng.standard_normal(n * s * row))
want = cache.reshape(n, s, row).copy()
for starts, b in [([0, 30, 7], n), ([5, 0, 30], 1)]:
    src, start = f32(rng.standard_normal(b * tq * row)), np.array(starts, np.int64)
    lib.emu_kv_cache_write(P(cache), P(src), P(start), n, tq, s, row, int(b == 1))
    for i, st in enumerate(starts):
        want[i, st:st + tq] = src.reshape(b, tq, row)[0 if b == 1 else i]
    ok &= close(f"cache (B={b})", cache, want.reshape(-1), 0.0)

c = load("rmsnorm"); print("rmsnorm")
h = c["shape"][-1]; rows = len(c["x"]) // h
x, w, g = f32(c["x"]), f32(c["weight"]), f32(c["grad_y"])
y, rstd, dx, partial, dw = garbage(x.size), garbage(rows), garbage(x.size), garbage(((rows + 31) // 32) * h), garbage(h)
lib.emu_rmsnorm(P(x), P(w), P(g), rows, h, ctypes.c_float(c["eps"]), P(y), P(rstd), P(dx), P(partial), P(dw))
ok &= close("y", y, c["y"]) & close("grad_x", dx, c["grad_x"]) & close("grad_weight", dw, c["grad_weight"])

def layernorm_reference(x, w, b, g, h, eps):
    """float64 LayerNorm over rows of h (numpy): y, mean, rstd and the gradients of sum(g * y)."""
    x, g = x.astype(np.float64).reshape(-1, h), g.astype(np.float64).reshape(-1, h)
    mean = x.mean(-1, keepdims=True)
    rstd = 1.0 / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps)
    xhat, gw = (x - mean) * rstd, g * w
    dx = rstd * (gw - gw.mean(-1, keepdims=True) - xhat * (gw * xhat).mean(-1, keepdims=True))
    return (xhat * w + b).reshape(-1), mean.reshape(-1), rstd.reshape(-1), dx.reshape(-1), (g * xhat).sum(0), g.sum(0)

# The fixture, then several row chunks and column blocks of the d_w/d_b passes (H = 1152, SigLIP-so400m's width)
# with a common offset that a one-pass variance would lose.
c = load("layernorm")
h = c["shape"][-1]
cases = [("layernorm", f32(c["x"]), f32(c["weight"]), f32(c["bias"]), f32(c["grad_y"]), h, c["eps"])]
rows, h = 70, 1152
cases.append(("layernorm random rows=70 h=1152", f32(rng.standard_normal(rows * h) + 30.0),
              f32(1.0 + 0.2 * rng.standard_normal(h)), f32(rng.standard_normal(h)), f32(rng.standard_normal(rows * h)),
              h, 1e-6))
for name, x, w, b, g, h, eps in cases:
    print(name)
    rows = x.size // h
    chunks = (rows + 31) // 32
    outs = [garbage(n) for n in [x.size, rows, rows, x.size, chunks * h, chunks * h, h, h]]
    lib.emu_layernorm(P(x), P(w), P(b), P(g), rows, h, ctypes.c_float(eps), *map(P, outs))
    y, mean, rstd, dx, _, _, dw, db = outs
    want = layernorm_reference(x, w.astype(np.float64), b.astype(np.float64), g, h, eps)
    for what, got, exp in zip(["y", "mean", "rstd", "grad_x", "grad_weight", "grad_bias"], [y, mean, rstd, dx, dw, db], want):
        ok &= close(what, got, exp, 2e-5 if name != "layernorm" else 1e-5)

for name in ["rope", "rope_far"]:
    c = load(name); print(name)
    heads, d, theta = c["heads"], c["d"], c["theta"]
    inv = f32([1.0 / np.float32(theta ** float(np.float32(2 * i) / np.float32(d))) for i in range(d // 2)])
    pos = i32(c["positions"])
    for key, src, sign in [("out", c["x"], 1.0), ("grad_x", c["grad_out"], -1.0)]:
        x = f32(src)
        lib.emu_rope(P(x), P(pos), P(inv), ctypes.c_longlong(pos.size), heads, d, ctypes.c_float(sign))
        ok &= close(key, x, c[key])

c = load("embedding"); print("embedding")
vocab, h, ids = c["v"], c["h"], c["ids"]
toks = [p for vid in range(vocab) for p in range(len(ids)) if ids[p] == vid]
starts = np.cumsum([0] + [ids.count(vid) for vid in range(vocab)])
table, g = f32(c["table"]), f32(c["grad_out"])
out, d_table = garbage(len(ids) * h), garbage(vocab * h)
lib.emu_embedding(P(table), P(i32(ids)), ctypes.c_longlong(len(ids)), h, P(out), P(g), P(i32(starts)),
                  P(i32(toks)), vocab, 0, P(d_table))
ok &= close("out", out, c["out"]) & close("grad_table", d_table, c["grad_table"])
# Accumulating onto a tied head's gradient: rows of ids that occur gain their sums, the others keep their values.
prior = f32(np.random.default_rng(7).standard_normal(vocab * h))
d_table = prior.copy()
lib.emu_embedding(P(table), P(i32(ids)), ctypes.c_longlong(len(ids)), h, P(out), P(g), P(i32(starts)),
                  P(i32(toks)), vocab, 1, P(d_table))
ok &= close("grad_table accumulated", d_table, prior.astype(np.float64) + np.asarray(c["grad_table"]).reshape(-1))

c = load("swiglu"); print("swiglu")
gate, up, dy = f32(c["gate"]), f32(c["up"]), f32(c["grad_y"])
y, dg, du = garbage(gate.size), garbage(gate.size), garbage(gate.size)
lib.emu_swiglu(P(gate), P(up), P(dy), ctypes.c_longlong(gate.size), P(y), P(dg), P(du))
ok &= close("y", y, c["y"]) & close("grad_gate", dg, c["grad_gate"]) & close("grad_up", du, c["grad_up"])

# The fixtures (unit, wide and tail values), then NaN in either input: NaN out where it went in, nothing else touched.
for name, form in [("gelu_tanh", 1), ("gelu_exact", 0)]:
    c = load(name); print(name)
    x, dy = f32(c["x"]), f32(c["grad_y"])
    y, dx = garbage(x.size), garbage(x.size)
    lib.emu_gelu(P(x), P(dy), ctypes.c_longlong(x.size), form, P(y), P(dx))
    ok &= close("y", y, c["y"]) & close("grad_x", dx, c["grad_x"])
    x, dy = f32([1.0, np.nan, -2.0]), f32([1.0, 1.0, np.nan])
    y, dx = garbage(3), garbage(3)
    lib.emu_gelu(P(x), P(dy), ctypes.c_longlong(3), form, P(y), P(dx))
    nan_ok = bool(np.isnan(y).tolist() == [False, True, False] and np.isnan(dx).tolist() == [False, True, True])
    print(f"  NaN in, NaN out: {'ok' if nan_ok else 'FAIL'} (y {y}, grad_x {dx})")
    ok &= nan_ok

def bilinear_matrices(n_in, n_out):
    """float64 [n_out, n_in] weights of one axis of torch's bilinear resize (align_corners=False), and which inputs
    each output reads (its two taps, even at a zero weight; an axis of unchanged size is the identity)."""
    if n_in == n_out:
        return np.eye(n_in), np.eye(n_in)
    a, reads = np.zeros((n_out, n_in)), np.zeros((n_out, n_in))
    for o in range(n_out):
        s = max(n_in / n_out * (o + 0.5) - 0.5, 0.0)
        i0 = min(int(math.floor(s)), n_in - 1)
        for i, weight in [(i0, 1.0 - (s - i0)), (min(i0 + 1, n_in - 1), s - i0)]:
            a[o, i] += weight
            reads[o, i] = 1.0
    return a, reads

def resize(a_h, reads_h, a_w, reads_w, t):
    """a_h · t · a_wᵀ over the spatial axes of a channels-last t [n, h, w, c], NaN wherever a NaN is read."""
    nan = np.isnan(t)
    apply = lambda m_h, m_w, u: np.einsum("oh,nhwc,qw->noqc", m_h, u, m_w)
    return np.where(apply(reads_h, reads_w, nan.astype(float)) > 0, np.nan, apply(a_h, a_w, np.where(nan, 0.0, t)))

def with_nans(c, key):
    """A fixture's values with NaN at its `{key}_nan` indices (JSON has no NaN)."""
    v = np.array(c[key], np.float64)
    v[c.get(key + "_nan", [])] = np.nan
    return v

# The fixtures (NaN where torch puts it included), then LLaVA-OneVision's sizes on numpy references: video pooling
# 27 -> 14 over several grid-stride blocks, an anyres grid down-sampled by a non-integer ratio, up-sampling from one
# row; a NaN pixel and a NaN gradient spread to exactly what they touch, along resized axes and not along an
# unchanged one.
cases = []
for name in ["bilinear_pool", "bilinear_down", "bilinear_up", "bilinear_nan"]:
    c = load(name)
    cases.append((name, c["n"], c["c"], *c["input_size"], *c["size"], f32(with_nans(c, "x")),
                  f32(with_nans(c, "grad_y")), with_nans(c, "y"), with_nans(c, "grad_x")))
for (n, ch, h, w, h2, w2) in [(2, 40, 27, 27, 14, 14), (1, 9, 24, 40, 17, 28), (2, 3, 1, 5, 6, 11), (1, 2, 14, 6, 7, 12),
                              (1, 2, 14, 6, 14, 12)]:
    x, g = f32(rng.standard_normal(n * h * w * ch)), f32(rng.standard_normal(n * h2 * w2 * ch))
    if h == 14:
        x[(5 * 6 + 3) * 2 + 1], g[(3 * 12 + 11) * 2] = np.nan, np.nan
    (ah, rh), (aw, rw) = bilinear_matrices(h, h2), bilinear_matrices(w, w2)
    x4, g4 = x.astype(np.float64).reshape(n, h, w, ch), g.astype(np.float64).reshape(n, h2, w2, ch)
    y, dx = resize(ah, rh, aw, rw, x4), resize(ah.T, rh.T, aw.T, rw.T, g4)
    cases.append((f"bilinear random n={n} c={ch} {h}x{w} -> {h2}x{w2}", n, ch, h, w, h2, w2, x, g, y, dx))
for name, n, ch, h, w, h2, w2, x, g, want_y, want_dx in cases:
    print(name)
    y, dx = garbage(n * h2 * w2 * ch), garbage(n * h * w * ch)
    lib.emu_bilinear(P(x), P(g), n, h, w, ch, h2, w2, P(y), P(dx))
    for what, got, exp in [("y", y, want_y), ("grad_x", dx, want_dx)]:
        exp = np.asarray(exp, np.float64).reshape(-1)
        nan_ok = bool((np.isnan(got) == np.isnan(exp)).all())
        if np.isnan(exp).any():
            print(f"  {what:<12} NaN at {int(np.isnan(exp).sum())} elements, as expected: {'ok' if nan_ok else 'FAIL'}")
        ok &= nan_ok & close(what, got[~np.isnan(exp)], exp[~np.isnan(exp)])

print("ALL OK" if ok else "FAILURES")
sys.exit(0 if ok else 1)
