#include "common.cuh"

// Batched pairwise comparisons and UnifiedReward's selection rule (host side: src/ops/compare/). Every function
// mirrors one in the CPU path: margin/probability (group.rs), the statistics (preference.rs), the Bradley–Terry
// fit (bradley_terry.rs) and the selection (selection.rs). The margins are f32; the fit is f64 with its Newton
// system in f32 shared memory. The library compiles with --use_fast_math, which flushes f32 denormals: a margin of
// denormal size (|s_i − s_j| < 1.2e-38) reads as a tie here.

#define MAX_HALVINGS 30

__device__ __forceinline__ double sigmoid_d(double x) {
    if (x >= 0.0) return 1.0 / (1.0 + exp(-x));
    const double e = exp(x);
    return e / (1.0 + e);
}

// One group's verdicts: K scores or K×K log-odds, starting at `base`.
template <typename T>
struct GroupIn {
    const T* v;
    long long base;
    int k;
    int log_odds;

    // M[i,j]: s_i − s_j, or ½(L[i,j] − L[j,i]); M[j,i] = −M[i,j] exactly.
    __device__ __forceinline__ float margin(int i, int j) const {
        if (log_odds) return 0.5f * (to_float(v[base + (long long)i * k + j]) - to_float(v[base + (long long)j * k + i]));
        return to_float(v[base + i]) - to_float(v[base + j]);
    }
};

// P from a margin in f64: the sigmoid, or 1, ½, 0 by its sign; NaN for a void pair.
__device__ __forceinline__ double probability(float m, int hard) {
    if (!hard) return sigmoid_d((double)m);
    if (m > 0.0f) return 1.0;
    if (m < 0.0f) return 0.0;
    if (m == 0.0f) return 0.5;
    return (double)NAN_F;
}

// Block-wide sum and max in double; every thread gets the same value. `red` holds one double per warp; every
// thread of the block must call them.
__device__ double block_sum_d(double v, double* red) {
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE, warps = blockDim.x / WARP_SIZE;
#pragma unroll
    for (int o = WARP_SIZE / 2; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    double total = 0.0;
    for (int w = 0; w < warps; ++w) total += red[w];
    return total;
}

__device__ double block_max_d(double v, double* red) {
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE, warps = blockDim.x / WARP_SIZE;
#pragma unroll
    for (int o = WARP_SIZE / 2; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(FULL_MASK, v, o));
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    double m = red[0];
    for (int w = 1; w < warps; ++w) m = fmax(m, red[w]);
    return m;
}

// Shared memory of one comparison block; the host sizes it with the same layout (cuda.rs: shared_bytes).
struct FitShared {
    double* theta;  // [K] log-strengths
    double* trial;  // [K] line-search point
    double* red;    // [32] reduction scratch
    float* sys;     // [K*K] minus the Hessian, eliminated in place
    float* rhs;     // [K] gradient, then the Newton step
    float* step;    // [K] the Newton step of the current iteration
    int* cope;      // [K] Copeland scores
};

__device__ FitShared carve(void* smem, int k) {
    FitShared s;
    s.theta = (double*)smem;
    s.trial = s.theta + k;
    s.red = s.trial + k;
    s.sys = (float*)(s.red + 32);
    s.rhs = s.sys + (long long)k * k;
    s.step = s.rhs + k;
    s.cope = (int*)(s.step + k);
    return s;
}

// Row i of bradley_terry.rs::evaluate at `point`: writes row i of the Newton system (minus the Hessian) and the
// gradient into sh.rhs[i], returns Σ_j P[i,j]·log σ(θ_i − θ_j) − ½·ridge·θ_i² (0 for threads past K).
template <typename T>
__device__ double evaluate_row(const GroupIn<T>& in, int hard, int i, const double* point, double ridge,
                               const FitShared& sh) {
    const int k = in.k;
    if (i >= k) return 0.0;
    double value = -0.5 * ridge * point[i] * point[i], grad = -ridge * point[i], diag = ridge;
    for (int j = 0; j < k; ++j) {
        if (j == i) continue;
        const float m = in.margin(i, j);
        const double p = probability(m, hard), q = probability(-m, hard);
        if (isnan(p)) {
            sh.sys[i * k + j] = 0.0f;
            continue;
        }
        const double x = point[i] - point[j], e = exp(-fabs(x));
        const double big = 1.0 / (1.0 + e), small = e * big;
        const double sig = x >= 0.0 ? big : small, sig_neg = x >= 0.0 ? small : big;
        value += p * (fmin(x, 0.0) - log1p(e));
        // d/dθ_i of the pair's two terms, written without cancellation when P is 0 or 1.
        grad += p * sig_neg - q * sig;
        const double w = sig * sig_neg;
        diag += w;
        sh.sys[i * k + j] = (float)(-w);
    }
    sh.sys[i * k + i] = (float)diag;
    sh.rhs[i] = (float)grad;
    return value;
}

// bradley_terry.rs::start: the row means of the margins clamped to ±START_CLAMP for the sigmoid link, else 0.
#define START_CLAMP 8.0f

template <typename T>
__device__ double start_row(const GroupIn<T>& in, int hard, int i) {
    if (hard || i >= in.k) return 0.0;
    double sum = 0.0;
    for (int j = 0; j < in.k; ++j) {
        const float m = in.margin(i, j);
        if (!isnan(m)) sum += (double)fminf(fmaxf(m, -START_CLAMP), START_CLAMP);
    }
    return sum / in.k;
}

// The ridge-regularised Bradley–Terry fit by damped Newton steps (bradley_terry.rs::fit), one thread per row.
// Leaves θ (not centred) in sh.theta; returns the steps taken and sets *converged.
template <typename T>
__device__ int fit_bt(const GroupIn<T>& in, int hard, double ridge, double tol, int max_iter, const FitShared& sh,
                      int* converged) {
    const int k = in.k, i = threadIdx.x;
    const bool row = i < k;
    const double start = start_row(in, hard, i);
    const double start_mean = block_sum_d(start, sh.red) / k;  // centred, as bradley_terry.rs::start
    if (row) sh.theta[i] = start - start_mean;
    __syncthreads();
    double current = block_sum_d(evaluate_row(in, hard, i, sh.theta, ridge, sh), sh.red);
    int it = 0, done = 0;
    while (it < max_iter && !done) {
        ++it;
        // bradley_terry.rs::pin_common_shift: c/k on every entry, c the mean diagonal (the step is unchanged, the
        // system stays invertible when a tiny ridge vanishes in f32).
        const float shift = (float)(block_sum_d(row ? (double)sh.sys[i * k + i] : 0.0, sh.red) / ((double)k * k));
        if (row)
            for (int j = 0; j < k; ++j) sh.sys[i * k + j] += shift;
        __syncthreads();
        // Gaussian elimination (SPD, no pivoting): step p updates rows below p, each by its own thread.
        for (int p = 0; p < k; ++p) {
            if (row && i > p) {
                const float f = sh.sys[i * k + p] / sh.sys[p * k + p];
                for (int j = p + 1; j < k; ++j) sh.sys[i * k + j] -= f * sh.sys[p * k + j];
                sh.rhs[i] -= f * sh.rhs[p];
            }
            __syncthreads();
        }
        for (int p = k - 1; p >= 0; --p) {
            if (i == p) sh.rhs[p] /= sh.sys[p * k + p];
            __syncthreads();
            if (i < p) sh.rhs[i] -= sh.sys[i * k + p] * sh.rhs[p];
            __syncthreads();
        }
        if (row) sh.step[i] = sh.rhs[i];
        const double full = block_max_d(row ? fabs((double)sh.rhs[i]) : 0.0, sh.red);
        // A step f32 could not solve: stop at the last finite point, not converged.
        if (block_sum_d(row && !isfinite(sh.rhs[i]) ? 1.0 : 0.0, sh.red) > 0.0) break;
        if (full <= tol) {  // Converged: take the step without evaluating the objective there.
            if (row) sh.theta[i] += (double)sh.step[i];
            __syncthreads();
            done = 1;
            break;
        }
        // Damped step: halve until the objective does not decrease; the accepted point's system is then built.
        double t = 1.0;
        int accepted = 0;
        for (int h = 0; h <= MAX_HALVINGS; ++h) {
            if (row) sh.trial[i] = sh.theta[i] + t * (double)sh.step[i];
            __syncthreads();
            const double value = block_sum_d(evaluate_row(in, hard, i, sh.trial, ridge, sh), sh.red);
            if (isfinite(value) && (value >= current - 1e-12 * (1.0 + fabs(current)) || h == MAX_HALVINGS)) {
                current = value;
                accepted = 1;
                break;
            }
            t *= 0.5;
        }
        if (!accepted) break;
        if (row) sh.theta[i] = sh.trial[i];
        __syncthreads();
        done = t * full <= tol;
    }
    *converged = done;
    return it;
}

#define STRENGTH_TIE 1e-5f

// Whether candidate a ranks above b: a higher Copeland score, or an equal one and a strength higher by more than
// STRENGTH_TIE (on the centred f32 strengths, as the host sees them).
__device__ __forceinline__ bool better(const FitShared& sh, double mean, int a, int b) {
    const float sa = (float)(sh.theta[a] - mean), sb = (float)(sh.theta[b] - mean);
    return sh.cope[a] > sh.cope[b] || (sh.cope[a] == sh.cope[b] && sa > sb + STRENGTH_TIE);
}

// One block per group, blockDim = K rounded up to a warp (K ≤ 96); dynamic shared memory as `carve` lays out.
// Outputs as in Comparison; `consistency` is null for scores.
template <typename T>
__device__ void compare_group(const T* verdicts, int log_odds, int hard, int k, double ridge, double tol,
                              int max_iter, float* pref, float* wins, int* copeland, int* ranks, float* strengths,
                              int* iterations, int* converged, int* best, int* worst, float* consistency) {
    extern __shared__ double smem[];
    const FitShared sh = carve(smem, k);
    const long long g = blockIdx.x;
    const GroupIn<T> in{verdicts, log_odds ? g * k * k : g * k, k, log_odds};
    const int i = threadIdx.x;
    const bool row = i < k;

    for (int e = threadIdx.x; e < k * k; e += blockDim.x) {
        const int a = e / k, b = e % k;
        pref[g * k * k + e] = a == b ? 0.5f : (float)probability(in.margin(a, b), hard);
    }
    if (row) {
        float w = 0.0f;
        int c = 0;
        for (int j = 0; j < k; ++j) {
            if (j == i) continue;
            const float m = in.margin(i, j);
            if (m > 0.0f) {
                w += 1.0f;
                ++c;
            } else if (m < 0.0f) {
                --c;
            } else if (m == 0.0f) {
                w += 0.5f;
            }
        }
        wins[g * k + i] = w;
        copeland[g * k + i] = c;
        sh.cope[i] = c;
    }
    __syncthreads();
    if (row) {
        int r = 1;
        for (int j = 0; j < k; ++j) r += sh.cope[j] > sh.cope[i];
        ranks[g * k + i] = r;
    }

    int done = 0;
    const int steps = fit_bt(in, hard, ridge, tol, max_iter, sh, &done);
    const double mean = block_sum_d(row ? sh.theta[i] : 0.0, sh.red) / k;
    if (row) strengths[g * k + i] = (float)(sh.theta[i] - mean);

    double pairs = 0.0, agree = 0.0;
    if (consistency && row) {
        for (int j = i + 1; j < k; ++j) {
            const float a = to_float(verdicts[in.base + (long long)i * k + j]);
            const float b = to_float(verdicts[in.base + (long long)j * k + i]);
            if (isnan(a) || isnan(b)) continue;
            pairs += 1.0;
            agree += ((a > 0.0f) - (a < 0.0f)) == -((b > 0.0f) - (b < 0.0f));
        }
    }
    pairs = block_sum_d(pairs, sh.red);
    agree = block_sum_d(agree, sh.red);

    if (threadIdx.x == 0) {
        iterations[g] = steps;
        converged[g] = done;
        // preference.rs::best_and_worst: strengths within STRENGTH_TIE are equal.
        int bi = 0, wi = k - 1;
        for (int a = 0; a < k; ++a) {
            if (better(sh, mean, a, bi)) bi = a;
            const int z = k - 1 - a;
            if (better(sh, mean, wi, z)) wi = z;
        }
        best[g] = bi;
        worst[g] = wi;
        if (consistency) consistency[g] = pairs == 0.0 ? NAN_F : (float)(agree / pairs);
    }
}

// selection.rs::partners: the range [lo, hi) of candidates c is compared with (it may include c itself).
__device__ __forceinline__ void partners(int all_pairs, int c, int k, int& lo, int& hi) {
    if (all_pairs) {
        lo = 0;
        hi = k;
    } else {
        lo = c ^ 1;
        hi = lo < k ? lo + 1 : lo;
    }
}

// UnifiedReward's selection rule (selection.rs::select_group), one thread per group, grid-stride. Pairing: 0
// adjacent, 1 all pairs; ties: 0 skip, 1 first wins, 2 drop group; nans: 0 error, 1 skip. status[g] is 0, or 1
// (NaN verdict) / 2 (NaN score) under the error policy.
template <typename T>
__device__ void select_groups(const T* verdicts, int log_odds, const T* scores, int groups, int k, int all_pairs,
                              int ties, int nan_skip, int* chosen, int* rejected, float* chosen_score,
                              float* rejected_score, int* kept, int* status) {
    for (long long g = blockIdx.x * (long long)blockDim.x + threadIdx.x; g < groups;
         g += (long long)gridDim.x * blockDim.x) {
        const GroupIn<T> in{verdicts, log_odds ? g * k * k : g * k, k, log_odds};
        const T* s = scores + g * k;
        int code = 0, dropped = 0;
        for (int a = 0; a < k && !code; ++a) {
            int lo, hi;
            partners(all_pairs, a, k, lo, hi);
            for (int b = max(lo, a + 1); b < hi && !code; ++b) {
                const float m = in.margin(a, b);
                if (!nan_skip) {
                    if (isnan(m)) code = 1;
                    else if (isnan(to_float(s[a])) || isnan(to_float(s[b]))) code = 2;
                }
                dropped |= m == 0.0f && ties == 2;
            }
        }
        int ci = -1, ri = -1;
        float cs = NAN_F, rs = NAN_F;
        if (!code && !dropped) {
            for (int c = 0; c < k; ++c) {
                const float sc = to_float(s[c]);
                if (isnan(sc)) continue;
                bool won = false, lost = false;
                int lo, hi;
                partners(all_pairs, c, k, lo, hi);
                for (int p = lo; p < hi; ++p) {
                    if (p == c) continue;
                    const float m = in.margin(c, p);
                    const bool first_wins = m == 0.0f && ties == 1;
                    won |= m > 0.0f || (first_wins && c < p);
                    lost |= m < 0.0f || (first_wins && c > p);
                }
                if (won && (ci < 0 || sc > cs)) { ci = c; cs = sc; }
                if (lost && (ri < 0 || sc < rs)) { ri = c; rs = sc; }
            }
        }
        chosen[g] = ci;
        rejected[g] = ri;
        chosen_score[g] = cs;
        rejected_score[g] = rs;
        kept[g] = ci >= 0 && ri >= 0 && cs > rs;
        status[g] = code;
    }
}

#define COMPARE_KERNELS(T, NAME)                                                                                   \
    extern "C" __global__ void cmp_group_##NAME(const T* verdicts, int log_odds, int hard, int k, double ridge,   \
                                                double tol, int max_iter, float* pref, float* wins, int* copeland, \
                                                int* ranks, float* strengths, int* iterations, int* converged,     \
                                                int* best, int* worst, float* consistency) {                       \
        compare_group<T>(verdicts, log_odds, hard, k, ridge, tol, max_iter, pref, wins, copeland, ranks,           \
                         strengths, iterations, converged, best, worst, consistency);                              \
    }                                                                                                              \
    extern "C" __global__ void cmp_select_##NAME(const T* verdicts, int log_odds, const T* scores, int groups,     \
                                                 int k, int all_pairs, int ties, int nan_skip, int* chosen,        \
                                                 int* rejected, float* chosen_score, float* rejected_score,        \
                                                 int* kept, int* status) {                                         \
        select_groups<T>(verdicts, log_odds, scores, groups, k, all_pairs, ties, nan_skip, chosen, rejected,       \
                         chosen_score, rejected_score, kept, status);                                              \
    }

COMPARE_KERNELS(float, f32)
COMPARE_KERNELS(bf16, bf16)
COMPARE_KERNELS(f16, f16)
