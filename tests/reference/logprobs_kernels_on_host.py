"""Runs the kernels of kernels/logprobs.cu and kernels/fused_linear.cu on the host, against the committed float64
fixtures of tests/fixtures/logprobs/ and tests/fixtures/fused_linear/.

A check of the kernels for machines without a GPU (the GPU tests compare CUDA against the CPU where there is one).
It reuses heads_kernels_on_host.py's prelude: every CUDA thread of a block runs as a std::thread, warp shuffles go
through a per-warp buffer behind barriers, so the grid decomposition, the warp and block reductions, the 16-byte
vector loads (aligned rows) next to the scalar tail (unaligned rows) and every formula run as written. Each .cu
file is compiled on its own (both define a RowAcc). Grid sizes are the library's (src/ops/logprobs/cuda.rs,
src/ops/fused_linear/cuda.rs), also with a grid capped at 2 blocks to run the grid-stride loops; blocks of 64 and
256 threads (the library's). cuBLAS products of the fused path are numpy f32 products of the kernel-made
gathers and gradients. f32 kernels throughout, plus logprobs_forward_bf16 against the fixtures' bf16 expectations.
Needs g++ (C++20) and numpy.

    /root/.cache/unireward/torch-venv/bin/python tests/reference/logprobs_kernels_on_host.py
"""
import ctypes, json, os, subprocess, sys, tempfile
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
# PRELUDE, common_header() and ROOT: the definitions before heads_kernels_on_host.py's own harness.
_heads = open(HERE + "/heads_kernels_on_host.py").read()
exec(_heads[: _heads.index("HARNESS = ")])

EXTRA = r"""
#include <mutex>
struct alignas(16) uint4 { unsigned x, y, z, w; };
static std::mutex atomic_mutex;
static inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) {
    std::lock_guard<std::mutex> g(atomic_mutex); unsigned long long o = *p; if (v < o) *p = v; return o;
}
"""

RUN = r"""
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
static unsigned capped(long long want, long long cap) { return (unsigned)(want < 1 ? 1 : (want > cap ? cap : want)); }
"""

# Launch sizes of src/ops/logprobs/cuda.rs: THREADS per block, MAX_BLOCKS = 1 << 16 (`cap` lowers it).
LOGPROBS_HARNESS = RUN + r"""
extern "C" {
void emu_targets(const void* labels, int labels_i64, const void* mask, int mask_kind, long long rows, long long vocab,
                 long long ignore, int* targets, unsigned long long* first_bad, unsigned th, long long cap) {
    run(capped((rows + th - 1) / th, cap), th, [=] {
        logprobs_targets(labels, labels_i64, mask, mask_kind, rows, vocab, ignore, targets, first_bad);
    });
}
void emu_forward_f32(const float* x, const int* targets, long long rows, int v, float* lse, float* per_token, unsigned th, long long cap) {
    run(capped(rows, cap), th, [=] { logprobs_forward_f32(x, targets, rows, v, lse, per_token); });
}
void emu_forward_bf16(const void* x, const int* targets, long long rows, int v, float* lse, float* per_token, unsigned th, long long cap) {
    run(capped(rows, cap), th, [=] { logprobs_forward_bf16((const bf16*)x, targets, rows, v, lse, per_token); });
}
void emu_sequences(const float* per_token, const int* targets, int n, int t, int mean, float* logps, float* counts,
                   float* mean_logits, float* entropy, unsigned th, long long cap) {
    run(capped(n, cap), th, [=] { logprobs_sequences(per_token, targets, n, t, mean, logps, counts, mean_logits, entropy); });
}
void emu_backward_f32(const float* x, float* grad, const int* targets, const float* lse, const float* g, const float* counts,
                      long long rows, int t, int v, int mean, unsigned th, long long cap) {
    run(capped(rows, cap), th, [=] { logprobs_backward_f32(x, grad, targets, lse, g, counts, rows, t, v, mean); });
}
}
"""

# Launch sizes of src/ops/fused_linear/cuda.rs: THREADS per block, MAX_ELEMENT_BLOCKS = 4096 for element loops,
# one block per chunk row or per sequence.
FUSED_HARNESS = RUN + r"""
extern "C" {
void emu_gather(const float* hidden, const int* positions, float* rows, int c, int h, unsigned th, long long cap) {
    run(capped(((long long)c * h + th - 1) / th, cap), th, [=] { fl_gather_rows_f32(hidden, positions, rows, c, h); });
}
void emu_row_stats(const float* logits, const float* bias, const int* labels, int v, int first, int c, float* lse,
                   float* logp, float* mean_logit, float* entropy, float* log_collision, unsigned th) {
    run(c, th, [=] { fl_row_stats_f32(logits, bias, labels, v, first, lse, logp, mean_logit, entropy, log_collision); });
}
void emu_reduce(const int* starts, const int* positions, const float* lse, const float* logp, const float* mean_logit,
                const float* entropy, const float* weights, const float* collision, int mean, int n, float* logps,
                float* counts, float* mean_logits, float* ent, float* lse_full, float* weighted, float* coll, unsigned th) {
    run(n, th, [=] {
        fl_reduce_sequences(starts, positions, lse, logp, mean_logit, entropy, weights, collision, mean, logps, counts,
                            mean_logits, ent, lse_full, weighted, coll);
    });
}
void emu_row_grad(const float* logits, const float* bias, const int* labels, const int* positions,
                  const float* lse_full, const float* token_scale, int v, int first, int c, float* grad, unsigned th) {
    run(c, th, [=] { fl_row_grad_f32(logits, bias, labels, positions, lse_full, token_scale, v, first, grad); });
}
void emu_scatter(const float* rows, const int* positions, int first, int c, int h, float* gh, unsigned th, long long cap) {
    run(capped(((long long)c * h + th - 1) / th, cap), th, [=] { fl_scatter_rows_f32(rows, positions, first, c, h, gh); });
}
void emu_convert(const float* src, long long n, float* dst, unsigned th, long long cap) {
    run(capped((n + th - 1) / th, cap), th, [=] { fl_convert_f32(src, n, 0, dst); });
}
}
"""


def build(kernel_file, harness):
    src = open(ROOT + "/kernels/" + kernel_file).read().replace('#include "common.cuh"', "")
    src = src.replace('extern "C" __global__', 'extern "C"')
    d = tempfile.mkdtemp()
    open(d + "/k.cpp", "w").write(PRELUDE + EXTRA + common_header() + src + harness)
    subprocess.run(["g++", "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-Wno-unknown-pragmas",
                    d + "/k.cpp", "-o", d + "/k.so"], check=True)
    return ctypes.CDLL(d + "/k.so")


lp_lib = build("logprobs.cu", LOGPROBS_HARNESS)
fl_lib = build("fused_linear.cu", FUSED_HARNESS)
P = lambda a: None if a is None else a.ctypes.data_as(ctypes.c_void_p)
f32 = lambda x: np.ascontiguousarray(np.array(x, dtype=np.float32))
i32 = lambda x: np.ascontiguousarray(np.array(x, dtype=np.int32))
LL = ctypes.c_longlong
worst = {}


def close(what, got, exp, rel):
    got, exp = np.asarray(got, np.float64), np.asarray(exp, np.float64)
    fin = np.isfinite(exp)
    scale = max(1.0, np.abs(exp[fin]).max() if fin.any() else 1.0)
    err = np.abs(got[fin] - exp[fin]).max() if fin.any() else 0.0
    ok = bool(err <= rel * scale and np.array_equal(got[~fin], exp[~fin]))
    key = what.split("/")[0]
    worst[key] = max(worst.get(key, 0.0), err / scale)
    print(f"  {what:<22} max err {err:.2e} (scale {scale:.1e}) {'ok' if ok else 'FAIL'}")
    return ok


def check(what, cond):
    print(f"  {what:<22} {'ok' if cond else 'FAIL'}")
    return bool(cond)


def to_bf16_bits(x):
    """Round-to-nearest-even f32 -> bf16 bits (as torch's .bfloat16())."""
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return np.ascontiguousarray(u.astype(np.uint16))


def logprobs_case(name, th, cap):
    c = json.load(open(ROOT + "/tests/fixtures/logprobs/" + name + ".json"))
    n, t, v = c["shape"]
    rows, mean, e = n * t, int(c["reduction"] == "mean"), c["expected"]
    x = f32(c["logits"])
    assert x.ctypes.data % 16 == 0, "row 0 must be 16-byte aligned to run the vector loads"
    labels = np.array(c["labels"], np.int64)
    mask = None if c["mask"] is None else np.array(c["mask"], np.int64)
    ok = True

    def targets_of(lab, lab64, m, kind):
        tg = np.full(rows, 7, np.int32)
        bad = np.array([np.iinfo(np.int64).max], np.int64)
        lp_lib.emu_targets(P(lab), lab64, P(m), kind, LL(rows), LL(v), LL(c["ignore_index"]), P(tg), P(bad), th, LL(cap))
        return tg, int(bad[0])

    tg, bad = targets_of(labels, 1, mask, 0 if mask is None else 2)
    counted = labels != c["ignore_index"]
    if mask is not None:
        counted &= mask != 0
    ok &= check("targets", np.array_equal(tg, np.where(counted, labels, -1)) and bad == np.iinfo(np.int64).max)
    # The other label and mask encodings give the same targets; a counted label outside [0, V) is reported.
    same = np.array_equal(targets_of(labels.astype(np.int32), 0, mask, 0 if mask is None else 2)[0], tg)
    if mask is not None:
        same &= np.array_equal(targets_of(labels, 1, mask.astype(np.int32), 1)[0], tg)
        same &= np.array_equal(targets_of(labels, 1, mask.astype(np.float32), 3)[0], tg)
    ok &= check("targets/encodings", same)
    counted_rows = np.flatnonzero(counted)
    if len(counted_rows) >= 2:
        bad_labels = labels.copy()
        bad_labels[counted_rows[-1]] = v
        bad_labels[counted_rows[1]] = -5
        tgb, badb = targets_of(bad_labels, 1, mask, 0 if mask is None else 2)
        ok &= check("targets/out_of_range", badb == counted_rows[1] and tgb[counted_rows[1]] == -1
                    and tgb[counted_rows[-1]] == -1)

    lse = np.full(rows, 9.0, np.float32)
    per_token = np.full(3 * rows, 9.0, np.float32)
    lp_lib.emu_forward_f32(P(x), P(tg), LL(rows), v, P(lse), P(per_token), th, LL(cap))
    outs = [np.full(n, 9.0, np.float32) for _ in range(4)]
    lp_lib.emu_sequences(P(per_token), P(tg), n, t, mean, *[P(o) for o in outs], th, LL(cap))
    logps, counts, mean_logits, entropy = outs
    ok &= close("logps", logps, e["logps"], 1e-4)
    ok &= close("token_counts", counts, e["token_counts"], 0.0)
    ok &= close("mean_logits", mean_logits, e["mean_logits"], 1e-4)
    ok &= close("entropy", entropy, e["entropy"], 1e-4)
    ok &= close("lse", lse, e["lse"], 1e-4)

    if e["grad"] is not None:
        g = f32(c["grad_logps"])
        grad_rel = 1e-4
        grad = np.zeros(rows * v, np.float32)
        lp_lib.emu_backward_f32(P(x), P(grad), P(tg), P(lse), P(g), P(counts), LL(rows), t, v, mean, th, LL(cap))
        ok &= close("grad", grad, e["grad"], grad_rel)
        inplace = x.copy()
        lp_lib.emu_backward_f32(P(inplace), P(inplace), P(tg), P(lse), P(g), P(counts), LL(rows), t, v, mean, th, LL(cap))
        ok &= close("grad/in_place", inplace, e["grad"], grad_rel)

    ok &= poisoned_rows(x, tg, n, t, v, counted_rows, th, cap)

    # bf16 logits (the fixture's expectations are on the logits rounded to bf16).
    xb = to_bf16_bits(x)
    lse_b = np.zeros(rows, np.float32)
    per_b = np.zeros(3 * rows, np.float32)
    lp_lib.emu_forward_bf16(P(xb), P(tg), LL(rows), v, P(lse_b), P(per_b), th, LL(cap))
    outs = [np.zeros(n, np.float32) for _ in range(4)]
    lp_lib.emu_sequences(P(per_b), P(tg), n, t, mean, *[P(o) for o in outs], th, LL(cap))
    eb = c["expected_bf16"]
    ok &= close("bf16/logps", outs[0], eb["logps"], 1e-4)
    ok &= close("bf16/mean_logits", outs[2], eb["mean_logits"], 1e-4)
    ok &= close("bf16/entropy", outs[3], eb["entropy"], 1e-4)
    return ok


def poisoned_rows(x, tg, n, t, v, counted_rows, th, cap):
    """A NaN in one counted row and a +inf in another (both off the label): as PyTorch's log_softmax, those rows'
    lse and gradients are NaN and their sequences' log-probs NaN; every other row is as without them."""
    if len(counted_rows) < 2:
        return True
    rows = n * t
    bad = x.copy().reshape(rows, v)
    # The NaN in a row the kernel reads with scalar loads where it can (one element per thread: the NaN alone in a
    # thread's accumulator, which the running max alone would drop).
    unaligned = [r for r in counted_rows[:-1] if (r * v * 4) % 16 != 0]
    nan_row, inf_row = (unaligned or list(counted_rows))[0], counted_rows[-1]
    bad[nan_row, (tg[nan_row] + 1) % v] = np.nan
    bad[inf_row, (tg[inf_row] + 2) % v] = np.inf
    bad = np.ascontiguousarray(bad.reshape(-1))
    outs = {}
    for key, logits in (("clean", x), ("bad", bad)):
        lse, per = np.zeros(rows, np.float32), np.zeros(3 * rows, np.float32)
        lp_lib.emu_forward_f32(P(logits), P(tg), LL(rows), v, P(lse), P(per), th, LL(cap))
        seq = [np.zeros(n, np.float32) for _ in range(4)]
        lp_lib.emu_sequences(P(per), P(tg), n, t, 0, *[P(o) for o in seq], th, LL(cap))
        grad = np.zeros(rows * v, np.float32)
        g = np.ones(n, np.float32)
        lp_lib.emu_backward_f32(P(logits), P(grad), P(tg), P(lse), P(g), P(seq[1]), LL(rows), t, v, 0, th, LL(cap))
        outs[key] = (lse, seq[0], grad.reshape(rows, v))
    (lse0, logps0, grad0), (lse1, logps1, grad1) = outs["clean"], outs["bad"]
    poisoned = np.zeros(rows, bool)
    poisoned[[nan_row, inf_row]] = True
    seq_poisoned = np.zeros(n, bool)
    seq_poisoned[[nan_row // t, inf_row // t]] = True
    return check("non-finite rows", np.isnan(lse1[poisoned]).all() and np.array_equal(lse1[~poisoned], lse0[~poisoned])
                 and np.isnan(logps1[seq_poisoned]).all() and np.array_equal(logps1[~seq_poisoned], logps0[~seq_poisoned])
                 and np.isnan(grad1[poisoned]).all() and np.array_equal(grad1[~poisoned], grad0[~poisoned]))


def fused_case(name, th, cap, chunk_len, extended):
    """The fused LM head's kernels on one fixture. With `extended`, also the per-token weighted sums and each
    token's log Σ softmax² (LD-DPO / WPO's statistics, against float64), and the backward of both sums (per-token
    scales g + weight · g_weighted); the plain outputs must stay the fixture's."""
    c = json.load(open(ROOT + "/tests/fixtures/fused_linear/" + name + ".json"))
    n, t, h, v, mean = c["n"], c["t"], c["h"], c["v"], int(c["reduction"] == "mean")
    hidden, w = f32(c["hidden"]), f32(c["weight"]).reshape(v, h)
    bias = f32(c["bias"]) if c["has_bias"] else None
    labels, mask = np.array(c["labels"]), np.array(c["mask"])
    pos = np.flatnonzero((labels != -100) & (mask != 0))  # counted tokens, in position order
    k = len(pos)
    positions, tok_labels = i32(list(pos) + [0]), i32(list(labels[pos]) + [0])
    seq_of = pos // t
    chunk_len = min(chunk_len, max(k, 1))
    ranges = [(f, min(chunk_len, k - f)) for f in range(0, k, chunk_len)]
    rng = np.random.default_rng(len(name) * 1000 + k)
    weights = f32(list(rng.uniform(-1.5, 2.0, k)) + [0]) if extended else None
    ok = True

    def chunk_logits(first, cnt):
        rows = np.zeros(chunk_len * h, np.float32)
        fl_lib.emu_gather(P(hidden), P(positions[first:]), P(rows), cnt, h, th, LL(cap))
        rows = rows.reshape(chunk_len, h)
        logits = np.zeros((chunk_len, v), np.float32)
        logits[:cnt] = rows[:cnt] @ w.T  # cuBLAS, f32 out
        return rows, np.ascontiguousarray(logits)

    tok = [np.zeros(k + 1, np.float32) for _ in range(4)]  # lse, logp, mean logit, entropy per counted token
    collision = np.full(k + 1, 9.0, np.float32) if extended else None
    gather_ok = True
    for first, cnt in ranges:
        rows, logits = chunk_logits(first, cnt)
        gather_ok &= np.array_equal(rows[:cnt], hidden.reshape(-1, h)[pos[first:first + cnt]])
        fl_lib.emu_row_stats(P(logits), P(bias), P(tok_labels), v, first, cnt, *[P(a) for a in tok], P(collision), th)
    ok &= check("gather_rows", gather_ok)
    starts = i32(np.concatenate([[0], np.cumsum(np.bincount(seq_of, minlength=n))]))
    outs = [np.full(n, 9.0, np.float32) for _ in range(4)]
    lse_full = np.zeros(n * t, np.float32)
    extra = [np.full(n, 9.0, np.float32) for _ in range(2)] if extended else [None, None]
    fl_lib.emu_reduce(P(starts), P(positions), *[P(a) for a in tok], P(weights), P(collision), mean, n,
                      *[P(o) for o in outs], P(lse_full), *[P(e) for e in extra], th)
    logps, counts, mean_logits, entropy = outs
    ok &= close("logps", logps, c["logps"], 1e-4)
    ok &= close("token_counts", counts, c["token_counts"], 0.0)
    ok &= close("mean_logits", mean_logits, c["mean_logits"], 1e-4)
    ok &= close("entropy", entropy, c["entropy"], 1e-4)
    # lse, log-probs and softmax against float64 logits of the f32 inputs
    logits64 = hidden.reshape(-1, h).astype(np.float64) @ w.T.astype(np.float64) + (0 if bias is None else bias)
    m = logits64.max(-1)
    lse64 = m + np.log(np.exp(logits64 - m[:, None]).sum(-1))
    ok &= close("lse", lse_full[pos], lse64[pos], 1e-4)
    ok &= check("lse/uncounted_zero", np.all(np.delete(lse_full, pos) == 0))
    softmax64 = np.exp(logits64[pos] - lse64[pos, None])
    divisor = np.maximum(np.bincount(seq_of, minlength=n), 1) if mean else np.ones(n)
    if extended:
        logp64 = logits64[pos, labels[pos]] - lse64[pos]
        w64 = weights[:k].astype(np.float64)
        weighted64 = np.bincount(seq_of, w64 * logp64, minlength=n) / divisor
        collision64 = np.log((softmax64 ** 2).sum(-1))
        ok &= close("log_collision", collision[:k], collision64, 1e-4)
        ok &= close("weighted_logps", extra[0], weighted64, 1e-4)
        ok &= close("collision_sums", extra[1], np.bincount(seq_of, collision64, minlength=n) / divisor, 1e-4)

    # Backward (Plan::gradient_scales): per counted token -(g + weight · g_weighted) / (1 or its sequence's count).
    g = f32(c["grad_logps"])
    g_weighted = f32(rng.uniform(-1.0, 1.0, n)) if extended else np.zeros(n, np.float32)
    token_weight = weights[:k] if extended else np.zeros(k, np.float32)
    scale64 = -(g[seq_of].astype(np.float64) + token_weight * g_weighted[seq_of]) / divisor[seq_of]
    scale = f32(list(scale64) + [0])
    grad_hidden = np.zeros(n * t * h, np.float32)
    grad_weight = np.zeros((v, h), np.float32)
    grad_bias = np.zeros(v, np.float32)
    for first, cnt in ranges:
        rows, logits = chunk_logits(first, cnt)
        # f32: the gradient overwrites the chunk's logits (in place).
        fl_lib.emu_row_grad(P(logits), P(bias), P(tok_labels), P(positions), P(lse_full), P(scale), v, first, cnt,
                            P(logits), th)
        G = logits[:cnt]
        grad_rows = np.zeros((chunk_len, h), np.float32)
        grad_rows[:cnt] = G @ w
        grad_weight += G.T @ rows[:cnt]
        grad_bias += G.sum(0)
        fl_lib.emu_scatter(P(np.ascontiguousarray(grad_rows)), P(positions), first, cnt, h, P(grad_hidden), th, LL(cap))
    gw = np.zeros(v * h, np.float32)
    fl_lib.emu_convert(P(np.ascontiguousarray(grad_weight.reshape(-1))), LL(v * h), P(gw), th, LL(cap))
    if extended:
        # d/dlogits of Σ g·logp + g_w·weighted = scale · (softmax − onehot), per counted token
        onehot = np.zeros_like(softmax64)
        onehot[np.arange(k), labels[pos]] = 1.0
        G64 = scale64[:, None] * (softmax64 - onehot)
        exp_hidden = np.zeros((n * t, h))
        exp_hidden[pos] = G64 @ w.astype(np.float64)
        expected = {"grad_hidden": exp_hidden.reshape(-1), "grad_weight": (G64.T @ hidden.reshape(-1, h)[pos]).reshape(-1),
                    "grad_bias": G64.sum(0)}
    else:
        expected = {key: c[key] for key in ("grad_hidden", "grad_weight", "grad_bias") if key in c}
    ok &= close("grad_hidden", grad_hidden, expected["grad_hidden"], 1e-4)
    ok &= close("grad_weight", gw, expected["grad_weight"], 1e-4)
    if bias is not None:
        ok &= close("grad_bias", grad_bias, expected["grad_bias"], 1e-4)
    return ok

ok = True
for th in (64, 256):
    for cap in (1 << 16, 2):
        print(f"== {th} threads per block, grid cap {cap}")
        for name in ["basic_v37", "mask_and_ignore_mean_v1000", "t1_magnitude_1e4", "masked_row_mean_v16"]:
            print("logprobs", name)
            ok &= logprobs_case(name, th, cap)
        for name in ["sum_bias", "mean_nobias", "single_token", "large_logits"]:
            for chunk_len in ((1 << 30, 2) if cap != 2 else (3,)):
                for extended in (False, True):
                    print(f"fused_linear {name} (chunks of {min(chunk_len, 999)} tokens{', weighted + collision' if extended else ''})")
                    ok &= fused_case(name, th, 4096 if cap != 2 else cap, chunk_len, extended)
print("worst relative errors: " + ", ".join(f"{k} {v:.1e}" for k, v in sorted(worst.items())))
print("ALL OK" if ok else "FAILURES")
sys.exit(0 if ok else 1)
