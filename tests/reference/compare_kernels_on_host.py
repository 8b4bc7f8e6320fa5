"""Runs every kernel of kernels/compare.cu on the host, against float64 references written from the definitions in
src/ops/compare/mod.rs, and (when libunireward.so and torch are at hand, as in scripts/test.sh) against the CPU path.

A check of the kernels for machines without a GPU (the GPU tests compare CUDA against the CPU where there is one).
It reuses heads_kernels_on_host.py's prelude, with its CUDA threads as fibers (see FIBERS) rather than std::threads:
barriers, warp shuffles and shared memory behave as written, so the block reductions, the parallel elimination of
the Newton system and the line search run as on the GPU. Launches are the library's (src/ops/compare/cuda.rs): one
block of ⌈K/32⌉·32 threads per group (32, 64 and 96 here) with exactly `shared_bytes(K)` of dynamic shared memory
(the expression read from cuda.rs), NaN bytes before each block and a guard after it that must stay intact; the
selection with its 128 threads per block, also on a grid capped at one block to run its grid-stride loop.

Checks, over K in {1,2,3,5,8,13,33,64,96}, both score links and log-odds, ridges 1e-8, 1e-4 and 1, on continuous,
tied, separable (clusters 80 apart, every hard-link group, ±inf), NaN and noisy-judge groups:
- preference, wins, Copeland scores and ranks, best/worst and consistency equal to their definitions;
- strengths finite and centred; `converged` only where the f64 gradient is as small as the step tolerance leaves
  it, and always where the fit is well posed (no pair separated, graph connected or ridge >= 1e-4); strengths
  within 1e-6·(1 + max|θ|) of a float64 Newton fit where its Hessian's condition number is at most 1e4;
- decisive verdicts beyond the start's clamp, equal Copeland scores with strengths 5e-6 / 1.6e-5 / 5e-4 apart
  (STRENGTH_TIE), graphs in pieces joined only by ridge 1e-8 (a step f32 cannot solve: finite, not converged),
  the iteration cap, the separable pair [1, 0] at its analytic gap;
- the selection rule against a reference of every pairing, tie and NaN policy (NaN status codes included);
- bf16 and f16 instantiations bit for bit equal to the f32 one on the values they read;
- the CPU path: the same outputs, the same iteration counts for well-posed fits, strengths within 1e-6.
Needs g++ (C++20) and numpy; torch and the library only for the CPU path, which is reported as not compared without.

    ~/.cache/unireward/torch-venv/bin/python tests/reference/compare_kernels_on_host.py
"""
import ctypes, os, re, subprocess, sys, tempfile
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
# PRELUDE, common_header() and ROOT: the definitions before heads_kernels_on_host.py's own harness.
_heads = open(HERE + "/heads_kernels_on_host.py").read()
exec(_heads[: _heads.index("HARNESS = ")])

# CUDA threads as fibers (ucontext) on one OS thread: heads_kernels_on_host.py's std::barrier and std::thread cost a
# context switch of the OS per thread and barrier, too slow for Newton fits of hundreds of barriers on 2 cores. A
# barrier yields to the scheduler until its last thread arrives; the scheduler resumes the threads in a fresh
# random order every round, so a read that races a write of the same barrier interval sees either order.
FIBERS = r"""
#include <ucontext.h>
#include <cstdio>
#include <cstdlib>
#include <vector>
static ucontext_t scheduler_ctx;
static std::vector<ucontext_t> fiber_ctx;
static unsigned current_fiber;
static unsigned long long fiber_events;  // arrivals at barriers and finished threads: progress
static inline void fiber_yield() { swapcontext(&fiber_ctx[current_fiber], &scheduler_ctx); }
struct FiberBarrier {
    unsigned expected, arrived = 0;
    unsigned long long generation = 0;
    explicit FiberBarrier(unsigned n) : expected(n) {}
    void arrive_and_wait() {
        const unsigned long long mine = generation;
        ++fiber_events;
        if (++arrived == expected) { arrived = 0; ++generation; return; }
        while (generation == mine) fiber_yield();
    }
};
"""

EXTRA = r"""
static double shfl_buf_d[32][32];
static inline double __shfl_xor_sync(unsigned, double v, int o) {
    int lane = threadIdx.x % 32, w = threadIdx.x / 32;
    shfl_buf_d[w][lane] = v; warp_barriers[w]->arrive_and_wait();
    double r = shfl_buf_d[w][lane ^ o]; warp_barriers[w]->arrive_and_wait(); return r;
}
using std::max;
static unsigned char* dyn_smem;
"""

HARNESS = r"""
static const size_t GUARD = 256, FIBER_STACK = 1 << 16;
static std::function<void()> fiber_body;
static std::vector<char> fiber_done;
static void fiber_main() { fiber_body(); fiber_done[current_fiber] = 1; ++fiber_events; }
// Runs `blocks` blocks of `threads` threads; each block gets `smem` bytes of NaN-filled shared memory followed by
// a guard. Returns 0, or -1 if a block wrote past its shared memory. Aborts on a barrier some thread never reaches.
template <typename K>
static int run(unsigned blocks, unsigned threads, size_t smem, K kernel) {
    std::vector<unsigned char> buf(smem + GUARD);
    std::vector<char> stacks((size_t)threads * FIBER_STACK);
    std::vector<unsigned> order(threads);
    unsigned long long lcg = 0x9e3779b97f4a7c15ull;
    dyn_smem = buf.data();
    fiber_body = kernel;
    gridDim = {blocks, 1, 1}; blockDim = {threads, 1, 1};
    int bad = 0;
    for (unsigned b = 0; b < blocks; ++b) {
        blockIdx = {b, 0, 0};
        memset(buf.data(), 0xff, smem);
        memset(buf.data() + smem, 0xa5, GUARD);
        FiberBarrier bar(threads); block_barrier = &bar;
        warp_barriers.clear();
        for (unsigned w = 0; w < threads / 32; ++w) warp_barriers.emplace_back(new FiberBarrier(32));
        fiber_ctx.assign(threads, ucontext_t{});
        fiber_done.assign(threads, 0);
        for (unsigned t = 0; t < threads; ++t) {
            getcontext(&fiber_ctx[t]);
            fiber_ctx[t].uc_stack.ss_sp = stacks.data() + (size_t)t * FIBER_STACK;
            fiber_ctx[t].uc_stack.ss_size = FIBER_STACK;
            fiber_ctx[t].uc_link = &scheduler_ctx;
            makecontext(&fiber_ctx[t], fiber_main, 0);
            order[t] = t;
        }
        for (unsigned live = threads; live;) {
            for (unsigned t = threads - 1; t > 0; --t) {  // a random order for this round
                lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
                std::swap(order[t], order[(lcg >> 33) % (t + 1)]);
            }
            const unsigned long long before = fiber_events;
            for (unsigned t : order) {
                if (fiber_done[t]) continue;
                current_fiber = t;
                threadIdx = {t, 0, 0};
                swapcontext(&scheduler_ctx, &fiber_ctx[t]);
            }
            live = 0;
            for (unsigned t = 0; t < threads; ++t) live += !fiber_done[t];
            if (live && fiber_events == before) {
                fprintf(stderr, "block %u: %u threads wait at a barrier the others never reach\n", b, live);
                abort();
            }
        }
        for (size_t i = 0; i < GUARD; ++i) bad |= buf[smem + i] != 0xa5;
    }
    return bad ? -1 : 0;
}
#define EMULATE(NAME, T)                                                                                          \
extern "C" int emu_group_##NAME(const void* v, int log_odds, int hard, int g, int k, double ridge, double tol,       \
                                int max_iter, float* pref, float* wins, int* cope, int* ranks, float* strengths,    \
                                int* its, int* conv, int* best, int* worst, float* cons, unsigned threads,          \
                                size_t smem) {                                                                      \
    return run(g, threads, smem, [=] {                                                                              \
        cmp_group_##NAME((const T*)v, log_odds, hard, k, ridge, tol, max_iter, pref, wins, cope, ranks, strengths,  \
                         its, conv, best, worst, cons);                                                             \
    });                                                                                                             \
}                                                                                                                   \
extern "C" void emu_select_##NAME(const void* v, int log_odds, const void* s, int g, int k, int all_pairs, int ties, \
                                  int nan_skip, int* chosen, int* rejected, float* cs, float* rs, int* kept,        \
                                  int* status, unsigned blocks, unsigned threads) {                                 \
    run(blocks, threads, 0, [=] {                                                                                   \
        cmp_select_##NAME((const T*)v, log_odds, (const T*)s, g, k, all_pairs, ties, nan_skip, chosen, rejected,    \
                          cs, rs, kept, status);                                                                    \
    });                                                                                                             \
}
EMULATE(f32, float)
EMULATE(bf16, bf16)
EMULATE(f16, f16)
"""

CUDA_RS = open(ROOT + "/src/ops/compare/cuda.rs").read()


def rust_const(name):
    return int(re.search(rf"const {name}: \w+ = (\d+);", CUDA_RS).group(1))


# The host's sizing of the comparison's shared memory, read from cuda.rs so that a layout the host under-sizes fails.
_SHARED = re.search(r"fn shared_bytes\(k: usize\) -> u32 \{\s*(.*?) as u32\s*\}", CUDA_RS, re.S).group(1)
shared_bytes = lambda k: eval(_SHARED, {"k": k})
_THREADS = re.search(r"let threads = k\.div_ceil\((\d+)\) as u32 \* (\d+);", CUDA_RS)
threads_for = lambda k: -(-k // int(_THREADS.group(1))) * int(_THREADS.group(2))  # as cuda.rs launches
SELECT_THREADS, MAX_SELECT_BLOCKS = rust_const("SELECT_THREADS"), rust_const("MAX_SELECT_BLOCKS")


def build():
    src = open(ROOT + "/kernels/compare.cu").read().replace('#include "common.cuh"', "")
    src = src.replace("extern __shared__ double smem[];", "double* smem = (double*)dyn_smem;")
    src = src.replace('extern "C" __global__', 'extern "C"')
    d = tempfile.mkdtemp(prefix="compare_kernels_")
    prelude = FIBERS + PRELUDE.replace("std::barrier<>", "FiberBarrier") + "#include <functional>\n"
    open(d + "/k.cpp", "w").write(prelude + EXTRA + common_header() + src + HARNESS)
    subprocess.run(["g++", "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-Wno-unknown-pragmas",
                    d + "/k.cpp", "-o", d + "/k.so"], check=True)
    return ctypes.CDLL(d + "/k.so")


lib = build()
P = lambda a: None if a is None else a.ctypes.data_as(ctypes.c_void_p)
as_f32 = lambda x: float(np.float32(x))  # what the library does to an f32 setting before widening it
TOL, MAX_ITER = as_f32(1e-6), 100


# ---- launches ---------------------------------------------------------------------------------------------------

def to_storage(values, dtype):
    """f32 values as the kernel's storage type (bits for bf16 and f16), and the f32 values it reads back."""
    v = np.ascontiguousarray(values, np.float32)
    if dtype == "f32":
        return v, v
    if dtype == "f16":
        h = v.astype(np.float16)
        return h, h.astype(np.float32)
    u = v.view(np.uint32).astype(np.uint64)
    bits = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even
    bits = np.where(np.isnan(v), np.uint16(0x7FC0), bits)
    return bits, (bits.astype(np.uint32) << 16).view(np.float32)


def unwritten(shape, dtype):
    """An output buffer whose every element the kernel must write: filled with a value no output of these tests
    takes (−1e30 is no probability, count, strength, rate or pointwise score; −12345 no index, count or flag)."""
    return np.full(shape, -1e30 if dtype == np.float32 else -12345, dtype)


def compare_kernel(values, log_odds, hard, ridge, tol=TOL, max_iter=MAX_ITER, dtype="f32"):
    """cmp_group_<dtype> on [G,K] scores or [G,K,K] log-odds, launched as cuda.rs does; a dict of the outputs."""
    g, k = values.shape[:2]
    stored, _ = to_storage(values, dtype)
    o = dict(preference=unwritten((g, k, k), np.float32), wins=unwritten((g, k), np.float32),
             copeland=unwritten((g, k), np.int32), ranks=unwritten((g, k), np.int32),
             strengths=unwritten((g, k), np.float32), iterations=unwritten(g, np.int32),
             converged=unwritten(g, np.int32), best=unwritten(g, np.int32), worst=unwritten(g, np.int32),
             consistency=unwritten(g, np.float32) if log_odds else None)
    rc = getattr(lib, "emu_group_" + dtype)(
        P(stored), int(log_odds), int(hard and not log_odds), g, k, ctypes.c_double(as_f32(ridge)),
        ctypes.c_double(tol), max_iter, *[P(x) for x in o.values()], threads_for(k), ctypes.c_size_t(shared_bytes(k)))
    assert rc == 0, f"cmp_group_{dtype} wrote past the {shared_bytes(k)} bytes of shared memory cuda.rs gives K = {k}"
    return o


def select_kernel(verdicts, log_odds, pointwise, all_pairs, ties, nan_skip, capped=False, dtype="f32"):
    g, k = pointwise.shape
    v, _ = to_storage(verdicts, dtype)
    s, _ = to_storage(pointwise, dtype)
    o = dict(chosen=unwritten(g, np.int32), rejected=unwritten(g, np.int32), chosen_score=unwritten(g, np.float32),
             rejected_score=unwritten(g, np.float32), kept=unwritten(g, np.int32), status=unwritten(g, np.int32))
    blocks = 1 if capped else min(-(-g // SELECT_THREADS), MAX_SELECT_BLOCKS)
    getattr(lib, "emu_select_" + dtype)(P(v), int(log_odds), P(s), g, k, int(all_pairs), ties, int(nan_skip),
                                        *[P(x) for x in o.values()], blocks, SELECT_THREADS)
    return o


# ---- float64 references from the definitions (src/ops/compare/mod.rs) -------------------------------------------

def margins(values, log_odds):
    """M[i,j] in f32 as the inputs are read: s_i − s_j, or ½(L[i,j] − L[j,i])."""
    v = np.asarray(values, np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        if log_odds:
            return np.float32(0.5) * (v - v.T)
        return v[:, None] - v[None, :]


def sigmoid(x):
    """σ(x) without overflow or cancellation for either sign."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def probabilities(m, hard):
    """P[i,j] in f64: σ(M) or 1, ½, 0 by its sign; NaN for a void pair; ½ on the diagonal."""
    x = m.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        p = np.sign(x) * 0.5 + 0.5 if hard else sigmoid(x)
    p[np.isnan(x)] = np.nan
    np.fill_diagonal(p, 0.5)
    return p


def pair_terms(p, theta):
    """The pairs of the fit: a mask of valid off-diagonal pairs, P with void pairs as 0, and x = θ_i − θ_j."""
    valid = ~np.isnan(p) & ~np.eye(len(p), dtype=bool)
    return valid, np.where(valid, p, 0.0), theta[:, None] - theta[None, :]


def bt_objective(p, theta, ridge):
    """Σ_{i≠j} P[i,j]·log σ(θ_i − θ_j) − ½·ridge·Σθ², void pairs left out."""
    _, q, x = pair_terms(p, theta)
    log_sig = np.minimum(x, 0.0) - np.log1p(np.exp(-np.abs(x)))
    return (q * log_sig).sum() - 0.5 * ridge * theta @ theta


def bt_gradient_hessian(p, theta, ridge):
    """The objective's gradient and minus its Hessian."""
    _, q, x = pair_terms(p, theta)
    sig, sig_neg = sigmoid(x), sigmoid(-x)
    grad = (q * sig_neg - q.T * sig).sum(1) - ridge * theta
    w = (q + q.T) * sig * sig_neg
    return grad, np.diag(w.sum(1) + ridge) - w


def bt_reference(p, ridge):
    """The maximiser by f64 Newton steps with halving, centred."""
    theta = np.zeros(len(p))
    for _ in range(1000):
        grad, h = bt_gradient_hessian(p, theta, ridge)
        step = np.linalg.solve(h, grad)
        current, t = bt_objective(p, theta, ridge), 1.0
        while bt_objective(p, theta + t * step, ridge) < current and t > 1e-15:
            t *= 0.5
        theta = theta + t * step
        if np.abs(t * step).max() <= 1e-13 * (1.0 + np.abs(theta).max()):
            break
    return theta - theta.mean()


def compare_reference(values, log_odds, hard, ridge, strengths):
    """Every output but the fit's report; best/worst use the kernel's own `strengths` (the rule reads them)."""
    k = values.shape[0]
    m = margins(values, log_odds)
    p = probabilities(m, hard and not log_odds)
    off = ~np.eye(k, dtype=bool)
    wins = ((m > 0) & off).sum(1) + 0.5 * ((m == 0) & off).sum(1)
    cope = ((m > 0) & off).sum(1) - ((m < 0) & off).sum(1)
    ranks = 1 + (cope[None, :] > cope[:, None]).sum(1)
    # Best: highest Copeland, then highest strength, then lowest index, strengths within 1e-5 counting as equal —
    # not a transitive rule, so as Comparison::best states it: scanning up from 0, a candidate replaces the best if
    # it is better; the worst scanning down from K − 1.
    better = lambda a, b: cope[a] > cope[b] or (cope[a] == cope[b] and strengths[a] > strengths[b] + np.float32(1e-5))
    best, worst = 0, k - 1
    for a in range(k):
        best = a if better(a, best) else best
        worst = k - 1 - a if better(worst, k - 1 - a) else worst
    out = dict(preference=p, wins=wins, copeland=cope, ranks=ranks, best=best, worst=worst)
    if log_odds:
        iu = np.triu_indices(k, 1)
        a, b = np.asarray(values, np.float32)[iu], np.asarray(values, np.float32).T[iu]
        keep = ~np.isnan(a) & ~np.isnan(b)
        out["consistency"] = (np.sign(a[keep]) == -np.sign(b[keep])).mean() if keep.any() else np.nan
    ref = bt_reference(p, as_f32(ridge))
    return out, p, ref


# ---- checks -------------------------------------------------------------------------------------------------------

failures = []


def check(what, cond, detail=""):
    if not cond:
        failures.append(what)
        print(f"  FAIL {what} {detail}")
    return bool(cond)


def same(a, b):
    """Equal values, NaN where NaN."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return a.shape == b.shape and np.array_equal(np.isnan(a), np.isnan(b)) and np.array_equal(a[~np.isnan(a)],
                                                                                               b[~np.isnan(b)])


def close(a, b, rtol):
    """Equal within `rtol` relative, NaN where NaN."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    fin = ~np.isnan(b)
    err = np.abs(a[fin] - b[fin])
    return np.array_equal(np.isnan(a), np.isnan(b)) and bool(np.all(err <= rtol * (1e-30 + np.abs(b[fin]))))


stats = dict(worst_rel=0.0, most_steps=0, groups=0, converged=0, well_posed=0, compared=0)


def well_posed(p, ridge):
    """Whether f32 Newton steps must converge: no pair is (nearly) separated, and the comparison graph is connected
    or the ridge is large enough to survive in f32 next to the pair weights (1e-8 + 0.25 is 0.25 in f32)."""
    k = len(p)
    valid = ~np.isnan(p) & ~np.eye(k, dtype=bool)
    if np.any((p[valid] < 1e-6) | (p[valid] > 1 - 1e-6)):
        return False
    reached, frontier = {0}, [0]
    while frontier:
        i = frontier.pop()
        for j in np.flatnonzero(valid[i]):
            if j not in reached:
                reached.add(j), frontier.append(j)
    return len(reached) == k or ridge >= 1e-4


def converged_honestly(p, theta, ridge):
    """Whether the f64 gradient at `theta` is as small as a converged fit leaves it: its last f32-solved step was
    within the tolerance (twice it, for the f32 solve), then θ was rounded to f32; the gradient is at most ‖H‖∞
    times that."""
    grad, h = bt_gradient_hessian(p, theta, ridge)
    bound = 2 * np.abs(h).sum(1).max() * (TOL + np.abs(theta).max() * 2.0**-23)
    ok = np.abs(grad).max() <= bound
    if not ok:
        print(f"  |grad| {np.abs(grad).max():.2e} > {bound:.2e}")
    return ok


def check_group_outputs(name, values, log_odds, hard, ridge, o, gi, max_iter=MAX_ITER):
    """One group of a compare_kernel result against the references."""
    ridge32 = as_f32(ridge)
    ref, p, theta_ref = compare_reference(values, log_odds, hard, ridge, o["strengths"][gi])
    tag = f"{name} group {gi}"
    check(f"{tag} preference", close(o["preference"][gi], ref["preference"], 1e-6))
    check(f"{tag} wins", same(o["wins"][gi], ref["wins"]))
    check(f"{tag} copeland", same(o["copeland"][gi], ref["copeland"]))
    check(f"{tag} ranks", same(o["ranks"][gi], ref["ranks"]))
    check(f"{tag} best/worst", (o["best"][gi], o["worst"][gi]) == (ref["best"], ref["worst"]),
          f"got {(o['best'][gi], o['worst'][gi])}, want {(ref['best'], ref['worst'])}")
    if log_odds:
        check(f"{tag} consistency", same(o["consistency"][gi], np.float32(ref["consistency"])))
    theta = o["strengths"][gi].astype(np.float64)
    conv, steps = o["converged"][gi], o["iterations"][gi]
    stats["groups"] += 1
    stats["converged"] += int(conv)
    stats["most_steps"] = max(stats["most_steps"], int(steps))
    check(f"{tag} strengths finite", np.isfinite(theta).all(), theta)
    check(f"{tag} strengths centred", abs(theta.mean()) <= 1e-6 * (1 + np.abs(theta).max()))
    check(f"{tag} iterations in 1..max", 1 <= steps <= max_iter, steps)
    if well_posed(p, ridge32) and max_iter == MAX_ITER:
        stats["well_posed"] += 1
        check(f"{tag} converged", conv == 1, f"after {steps} steps")
    if conv:
        check(f"{tag} converged with a small f64 gradient", converged_honestly(p, theta, ridge32))
    _, h_ref = bt_gradient_hessian(p, theta_ref, ridge32)
    cond = np.linalg.cond(h_ref)
    if conv and cond <= 1e4:
        rel = np.abs(theta - theta_ref).max() / (1 + np.abs(theta_ref).max())
        stats["worst_rel"] = max(stats["worst_rel"], rel)
        stats["compared"] += 1
        check(f"{tag} strengths vs f64 fit", rel <= 1e-6, f"rel err {rel:.2e} (cond {cond:.1e})")


KINDS = ["continuous", "tied", "clusters", "nan", "inf"]


def score_group(rng, kind, k):
    if kind == "continuous":
        return rng.uniform(-4, 4, k)
    if kind == "tied":  # a few repeated values: exact zero margins
        return rng.choice(rng.uniform(-3, 3, max(1, k // 3)), k)
    if kind == "clusters":  # two clusters 80 apart: separable under either link
        return rng.uniform(-1, 1, k) + np.where(np.arange(k) % 2 == 0, 40.0, -40.0)
    s = rng.uniform(-4, 4, k)  # NaN scores: void pairs, a candidate compared with no one
    s[rng.permutation(k)[: max(1, k // 4)]] = np.nan
    if kind == "inf" and k >= 3:  # ±inf: P = 1 or 0 (separable), ∞ − ∞ void
        s[rng.permutation(k)[:3]] = [np.inf, -np.inf, np.inf]
    return s


def log_odds_group(rng, k, noise=1.0):
    """Judge log-odds with a position bias, a few NaN verdicts and exact ties; a large `noise` makes a judge of
    strong, inconsistent verdicts (whose fits start far off and need damped steps)."""
    s = rng.uniform(-3, 3, k)
    lo = s[:, None] - s[None, :] + 0.7 + rng.normal(0, noise, (k, k))
    lo[rng.random((k, k)) < 0.08] = np.nan
    lo[rng.random((k, k)) < 0.05] = 0.0
    return lo


def check_compare():
    rng = np.random.default_rng(20261204)
    for k in (1, 2, 3, 5, 8, 13, 33, 64):
        for hard in (False, True):
            for ridge in (1e-8, 1e-4, 1.0):
                values = np.stack([score_group(rng, kind, k) for kind in KINDS]).astype(np.float32)
                o = compare_kernel(values, False, hard, ridge)
                for gi in range(len(KINDS)):
                    check_group_outputs(f"scores k={k} {'hard' if hard else 'sigmoid'} ridge={ridge:g}",
                                        values[gi], False, hard, ridge, o, gi)
        for ridge in (1e-8, 1e-4, 1.0):
            values = np.stack([log_odds_group(rng, k, noise) for noise in (1.0, 1.0, 40.0)]).astype(np.float32)
            o = compare_kernel(values, True, False, ridge)
            for gi in range(len(values)):
                check_group_outputs(f"log-odds k={k} ridge={ridge:g}", values[gi], True, False, ridge, o, gi)
    # The largest K the CUDA path takes: three warps.
    values = score_group(rng, "tied", 96)[None].astype(np.float32)
    o = compare_kernel(values, False, False, 1e-4)
    check_group_outputs("scores k=96", values[0], False, False, 1e-4, o, 0)
    lo = np.stack([log_odds_group(rng, 96)]).astype(np.float32)
    o = compare_kernel(lo, True, False, 1e-2)
    check_group_outputs("log-odds k=96", lo[0], True, False, 1e-2, o, 0)


def check_special_fits():
    # Decisive verdicts beyond the start's clamp: the fit walks out to the ridge's optimum.
    for values, hard, ridge in (([100.0, 0.0], False, 1e-8), ([100.0, 0.0, -100.0], False, 1e-8),
                                ([20.0, 0.0], False, 1e-4), ([1.0, 0.0], True, 1e-8)):
        v = np.array([values], np.float32)
        check_group_outputs(f"scores {values} {'hard' if hard else 'sigmoid'} ridge={ridge:g}", v[0], False, hard,
                            ridge, compare_kernel(v, False, hard, ridge), 0)
    # Equal Copeland scores (a cycle 0 > 1 > 2 > 0) with strengths apart by 5e-6 (equal), 1.6e-5 (2 beats 0 but
    # not 1: the scan's order decides) and 5e-4 (distinct), under every relabelling.
    for d in (1e-5, 3e-5, 1e-3):
        m = np.zeros((3, 3))
        m[0, 1], m[1, 2], m[2, 0] = 1.0, 1.0, 1.0 + d
        for perm in ([0, 1, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]):
            v = (m - m.T)[np.ix_(perm, perm)].astype(np.float32)[None]
            check_group_outputs(f"cycle d={d:g} labels {perm}", v[0], True, False, 1e-2,
                                compare_kernel(v, True, False, 1e-2), 0)
    # The separable pair [1, 0] (hard link, ridge 1e-8): the optimum is at the gap d with σ(−d) = ridge·d/2.
    lo, hi = 0.0, 100.0
    ridge = as_f32(1e-8)
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if 1 / (1 + np.exp(mid)) > ridge * mid / 2 else (lo, mid)
    o = compare_kernel(np.array([[1.0, 0.0]], np.float32), False, True, 1e-8)
    check("[1, 0] hard ridge 1e-8: the analytic gap", o["converged"][0] == 1
          and np.allclose(o["strengths"][0], [lo / 2, -lo / 2], rtol=0, atol=1e-5 * lo), o["strengths"][0])
    # Comparison graphs in pieces joined only by ridge 1e-8, which vanishes in f32: the step cannot be solved.
    for name, lo_odds in unsolvable_groups():
        check_group_outputs(f"{name} ridge=1e-8", lo_odds, True, False, 1e-8,
                            compare_kernel(lo_odds[None], True, False, 1e-8), 0)
    # The iteration cap.
    rng = np.random.default_rng(5)
    values = np.stack([score_group(rng, "clusters", 8), score_group(rng, "continuous", 8)]).astype(np.float32)
    for max_iter in (1, 2):
        o = compare_kernel(values, False, True, 1e-8, max_iter=max_iter)
        for gi in range(2):
            check_group_outputs(f"max_iter={max_iter}", values[gi], False, True, 1e-8, o, gi, max_iter)


def unsolvable_groups():
    """(name, log-odds) of candidates in pieces with no verdict between them (NaN): tied pieces (a 0/0 step), and
    pieces with margins 0.3·(i − j)."""
    groups = []
    for pieces, slope in ((((0, 1), (2, 3)), 0.0), (((0, 1), (2, 3, 4)), 0.0), (((0, 1, 2), (3, 4, 5)), 0.3)):
        k = sum(map(len, pieces))
        lo = np.full((k, k), np.nan, np.float32)
        for piece in pieces:
            for i in piece:
                for j in piece:
                    lo[i, j] = slope * (i - j)
        groups.append((f"pieces {pieces} slope {slope}", lo))
    return groups


def check_storage_types():
    """bf16 and f16 instantiations against the f32 one on the values they read, bit for bit."""
    rng = np.random.default_rng(7)
    cases = [(np.stack([score_group(rng, kind, 13) for kind in ("continuous", "tied", "nan")]), False, False),
             (np.stack([score_group(rng, kind, 5) for kind in ("continuous", "clusters")]), False, True),
             (np.stack([log_odds_group(rng, 8) for _ in range(2)]), True, False)]
    for dtype in ("bf16", "f16"):
        for values, log_odds, hard in cases:
            values = values.astype(np.float32)
            _, read = to_storage(values, dtype)
            got = compare_kernel(values, log_odds, hard, 1e-2, dtype=dtype)
            want = compare_kernel(read, log_odds, hard, 1e-2)
            for key, w in want.items():
                if w is not None:
                    check(f"cmp_group_{dtype} {key} (log_odds={log_odds}, hard={hard})", same(got[key], w))
        v = rng.uniform(-2, 2, (40, 6)).astype(np.float32)
        s = rng.uniform(0, 10, (40, 6)).astype(np.float32)
        v[rng.random(v.shape) < 0.1] = np.nan
        _, vr = to_storage(v, dtype)
        _, sr = to_storage(s, dtype)
        got = select_kernel(v, False, s, True, 1, True, dtype=dtype)
        want = select_kernel(vr, False, sr, True, 1, True)
        for key in want:
            check(f"cmp_select_{dtype} {key}", same(got[key], want[key]))


# ---- the selection rule -------------------------------------------------------------------------------------------

def select_reference(values, log_odds, pointwise, all_pairs, ties, nan_skip):
    """UnifiedReward's rule from its definition (mod.rs: select_pairs, Pairing, TiePolicy, NanPolicy)."""
    k = len(pointwise)
    m = margins(values, log_odds)
    pairs = [(a, b) for a in range(k) for b in range(a + 1, k) if (all_pairs or b == a ^ 1)]
    none = dict(chosen=-1, rejected=-1, chosen_score=np.nan, rejected_score=np.nan, kept=0, status=0)
    if not nan_skip:
        for a, b in pairs:  # the first pair with a NaN names the kind
            if np.isnan(m[a, b]):
                return dict(none, status=1)
            if np.isnan(pointwise[a]) or np.isnan(pointwise[b]):
                return dict(none, status=2)
    if ties == 2 and any(m[a, b] == 0 for a, b in pairs):
        return none
    winners, losers = set(), set()
    for a, b in pairs:
        if m[a, b] > 0 or (m[a, b] == 0 and ties == 1):
            winners.add(a), losers.add(b)
        elif m[a, b] < 0:
            winners.add(b), losers.add(a)
    winners = sorted(c for c in winners if not np.isnan(pointwise[c]))
    losers = sorted(c for c in losers if not np.isnan(pointwise[c]))
    out = dict(none)
    if winners:  # the best score, the lowest index among equals
        c = max(winners, key=lambda c: (pointwise[c], -c))
        out.update(chosen=c, chosen_score=pointwise[c])
    if losers:
        c = min(losers, key=lambda c: (pointwise[c], c))
        out.update(rejected=c, rejected_score=pointwise[c])
    out["kept"] = int(bool(winners) and bool(losers) and out["chosen_score"] > out["rejected_score"])
    return out


def check_select():
    rng = np.random.default_rng(3)
    for k in (1, 2, 3, 5, 8):
        g = 300  # three blocks of 128 threads, or one block striding
        scores = rng.choice(np.arange(-3.0, 4.0), (g, k)).astype(np.float32)  # many exact ties
        lo = np.stack([log_odds_group(rng, k) for _ in range(g)]).astype(np.float32)
        pointwise = rng.choice(np.arange(0.0, 11.0), (g, k)).astype(np.float32)  # 10 > 9 as numbers
        scores[rng.random((g, k)) < 0.03] = np.nan
        pointwise[rng.random((g, k)) < 0.05] = np.nan
        for log_odds, values in ((False, scores), (True, lo)):
            for all_pairs in (False, True):
                for ties in (0, 1, 2):
                    for nan_skip in (False, True):
                        name = f"select k={k} log_odds={log_odds} all_pairs={all_pairs} ties={ties} skip={nan_skip}"
                        want = [select_reference(values[gi], log_odds, pointwise[gi], all_pairs, ties, nan_skip)
                                for gi in range(g)]
                        for capped in (False, True):
                            o = select_kernel(values, log_odds, pointwise, all_pairs, ties, nan_skip, capped)
                            for key in o:
                                ok = same(o[key], [w[key] for w in want])
                                check(f"{name}{' capped' if capped else ''} {key}", ok)


# ---- the CPU path, through the Python bindings ---------------------------------------------------------------------

def check_library():
    """The library on the same inputs, on the CPU and, where torch sees one, on a GPU (the real kernels: a check of
    this emulation itself): the same per-group math, so the same outputs (strengths up to the rounding of the f32
    Newton systems). Needs torch and libunireward.so (UNIREWARD_LIB, or the repository's target/), as
    scripts/test.sh has them."""
    sys.path.insert(0, ROOT + "/bindings/python")
    try:
        import torch
        import unireward
    except (ImportError, OSError) as e:
        print(f"library: NOT COMPARED ({e})")
        return
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        check_library_on(device, torch, unireward)


def check_library_on(device, torch, unireward):
    tensor = lambda a: torch.from_numpy(a).to(device)
    rng = np.random.default_rng(11)
    cases = [("pieces ridge=1e-8", lo[None], True, False, 1e-8) for _, lo in unsolvable_groups()]
    for k in (2, 5, 13, 33):
        for hard, log_odds in ((False, False), (True, False), (False, True)):
            for ridge in (1e-8, 1e-4, 1.0):
                values = (np.stack([log_odds_group(rng, k, noise) for noise in (1, 1, 40)]) if log_odds else
                          np.stack([score_group(rng, kind, k) for kind in KINDS])).astype(np.float32)
                cases.append((f"k={k} hard={hard} log_odds={log_odds} ridge={ridge:g}", values, log_odds, hard, ridge))
    worst = 0.0
    for name, values, log_odds, hard, ridge in cases:
        name, ridge32 = f"{device} path {name}", as_f32(ridge)
        emu = compare_kernel(values, log_odds, hard, ridge)
        t = tensor(values)
        kw = dict(log_odds=t) if log_odds else dict(scores=t, score_link="hard" if hard else "sigmoid")
        lib_out = {key: None if v is None else v.cpu().numpy()
               for key, v in unireward.compare(**kw, ridge=ridge32, tolerance=TOL, max_iterations=MAX_ITER)
               ._asdict().items()}
        for key in ("preference", "wins", "copeland", "ranks", "consistency"):
            if emu[key] is not None:
                check(f"{name} {key}", close(emu[key], lib_out[key], 1e-6))
        for gi in range(len(values)):
            p = probabilities(margins(values[gi], log_odds), hard and not log_odds)
            a, b = emu["strengths"][gi].astype(float), lib_out["strengths"][gi].astype(float)
            check(f"{name} group {gi} strengths finite on both", np.isfinite(a).all() and np.isfinite(b).all(),
                  f"{a} vs {b}")
            check(f"{name} group {gi} library converged only with a small f64 gradient",
                  not lib_out["converged"][gi] or converged_honestly(p, b, ridge32))
            if well_posed(p, ridge32):
                # The same steps up to rounding (the CPU sums the systems' diagonals in f32, the kernel in f64; the
                # GPU fuses multiply-adds): the same count, and the same strengths to break Copeland ties with.
                # Ill-conditioned fits amplify that rounding.
                for key in ("iterations", "converged", "best", "worst"):
                    check(f"{name} group {gi} {key}", emu[key][gi] == lib_out[key][gi],
                          f"{emu[key][gi]} vs {lib_out[key][gi]}")
                rel = np.abs(a - b).max() / (1 + np.abs(b).max())
                worst = max(worst, rel)
                check(f"{name} group {gi} strengths", rel <= 1e-6, f"rel {rel:.1e}")
    # The selection under the skip policy (the error policy raises).
    v = rng.choice(np.arange(-2.0, 3.0), (64, 5)).astype(np.float32)
    s = rng.choice(np.arange(0.0, 11.0), (64, 5)).astype(np.float32)
    v[rng.random(v.shape) < 0.05], s[rng.random(s.shape) < 0.05] = np.nan, np.nan
    for all_pairs in (False, True):
        for ties, tie_name in enumerate(("skip", "first_wins", "drop_group")):
            emu = select_kernel(v, False, s, all_pairs, ties, True)
            got = unireward.select_pairs(tensor(s), scores=tensor(v), nans="skip", ties=tie_name,
                                         pairing="all_pairs" if all_pairs else "adjacent")._asdict()
            for key, c in got.items():
                check(f"{device} path select all_pairs={all_pairs} ties={tie_name} {key}",
                      same(emu[key], c.cpu().numpy()))
    print(f"{device} path: same outputs; strengths of well-posed fits within {worst:.1e}·(1 + max|θ|)")


if __name__ == "__main__":
    check_compare()
    check_special_fits()
    check_storage_types()
    check_select()
    check_library()
    print(f"{stats['groups']} fitted groups ({stats['converged']} converged, {stats['well_posed']} required to; "
          f"at most {stats['most_steps']} Newton steps); {stats['compared']} well-conditioned fits within "
          f"{stats['worst_rel']:.1e}·(1 + max|θ|) of the f64 fit")
    print("ALL OK" if not failures else f"{len(failures)} FAILURES")
    sys.exit(0 if not failures else 1)
