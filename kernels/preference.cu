#include "common.cuh"

// Preference losses: the DPO family, reward-model losses and Diffusion-DPO (host side: src/ops/preference/).
//
// The per-item math (one pair, one group, one sample) is done in double: it is a few dozen flops per item, the
// library is compiled with --use_fast_math (which leaves double alone), and it makes the kernels agree with the
// CPU path (also f64) to rounding at beta = 5000 or log-probs of 1e4. Reductions are deterministic: each block
// writes its partial sums (double) to `partial[block * count + stat]`, which the host adds in block order.

#define REDUCE_THREADS 256
#define LN2 0.6931471805599453
#define NEG_INF_D __longlong_as_double(0xfff0000000000000ULL)

__device__ __forceinline__ double log_sigmoid_d(double x) { return fmin(x, 0.0) - log1p(exp(-fabs(x))); }

__device__ __forceinline__ double sigmoid_d(double x) {
    if (x >= 0.0) return 1.0 / (1.0 + exp(-x));
    const double e = exp(x);
    return e / (1.0 + e);
}

// log(1 - e^x) for x < 0, accurate at both ends.
__device__ __forceinline__ double log1mexp_d(double x) { return x > -LN2 ? log(-expm1(x)) : log1p(-exp(x)); }

__device__ __forceinline__ double load(const float* p, long long i) { return (double)p[i]; }
__device__ __forceinline__ double load(const bf16* p, long long i) { return (double)to_float(p[i]); }
__device__ __forceinline__ double load(const f16* p, long long i) { return (double)to_float(p[i]); }

// Block-wide sum in double over a power-of-two block of at most REDUCE_THREADS threads, in a fixed order; every
// thread gets the result. Every thread of the block must call it.
__device__ double block_sum_f64(double v, double* scratch) {
    scratch[threadIdx.x] = v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) scratch[threadIdx.x] += scratch[threadIdx.x + s];
        __syncthreads();
    }
    const double total = scratch[0];
    __syncthreads();
    return total;
}

// Sums each of this thread's `count` statistics over the block into partial[blockIdx.x * count + s].
template <int COUNT>
__device__ void write_partials(const double (&v)[COUNT], double* partial) {
    __shared__ double scratch[REDUCE_THREADS];
#pragma unroll
    for (int s = 0; s < COUNT; ++s) {
        const double total = block_sum_f64(v[s], scratch);
        if (threadIdx.x == 0) partial[(long long)blockIdx.x * COUNT + s] = total;
    }
}

// ------------------------------------------------------------------------------------------------------------
// DPO family. Loss codes are the indices of DpoLossType::ALL; the formulas are TRL's (see dpo_cpu.rs, which
// mirrors these functions line by line).

#define DPO_SIGMOID 0
#define DPO_HINGE 1
#define DPO_IPO 2
#define DPO_ROBUST 3
#define DPO_BCO_PAIR 4
#define DPO_EXO_PAIR 5
#define DPO_NCA_PAIR 6
#define DPO_SPPO_HARD 7
#define DPO_APO_ZERO 8
#define DPO_APO_DOWN 9
#define DPO_SIMPO 10
#define DPO_ORPO 11
#define DPO_AOT 12
#define DPO_AOT_PAIR 13
#define DPO_DISCOPOP 14
#define DPO_TYPES 15
#define DPO_STATS 9

#define F_DIV_JS 1
#define F_DIV_ALPHA 2

// Rows of the AOT sort orders (dpo.rs's `order` module), each n long.
#define ORDER_AOT_PERM 0
#define ORDER_AOT_RANK 1
#define ORDER_AOT_REF_PERM 2
#define ORDER_PAIR_CHOSEN_PERM 3
#define ORDER_PAIR_CHOSEN_RANK 4
#define ORDER_PAIR_REJECTED_PERM 5
#define ORDER_PAIR_REJECTED_RANK 6

// The scalars of one call (cuda.rs's DpoScalars, field for field): a mixture of `terms` loss types.
struct DpoScalars {
    double beta, eps, gamma, delta, tau, f_alpha, exp_cap, ld_alpha, mean_scale, nll_grad, reward_scale;
    double weights[DPO_TYPES];
    int kinds[DPO_TYPES];
    int terms, f_divergence, reference_free, use_ld;
};

struct PairTerms {
    double loss, d_chosen, d_rejected, log_odds_ratio, log_odds;
};

// A pair's log-ratios: a, b with the reference always counted; a_free, b_free without it under reference_free.
struct LogRatios {
    double a, b, a_free, b_free;
};

__device__ LogRatios log_ratios(const DpoScalars& s, double c, double r, double c_ref, double r_ref) {
    LogRatios l;
    l.a = c - c_ref;
    l.b = r - r_ref;
    l.a_free = s.reference_free ? c : l.a;
    l.b_free = s.reference_free ? r : l.b;
    return l;
}

// exp(min(x, cap)) and its derivative (0 where capped): TRL's cap_exp.
__device__ __forceinline__ double cap_exp(double x, double cap, double* d) {
    const bool under = x <= cap;
    const double e = exp(under ? x : cap);
    *d = under ? e : 0.0;
    return e;
}

// -logsig(bx)(1-e) - logsig(-bx)e and its derivative in x.
__device__ double smoothed_sigmoid(const DpoScalars& s, double x, double* dx) {
    const double u = s.beta * x;
    *dx = s.beta * (-(1.0 - s.eps) * sigmoid_d(-u) + s.eps * sigmoid_d(u));
    return -(1.0 - s.eps) * log_sigmoid_d(u) - s.eps * log_sigmoid_d(-u);
}

// One pair's term of a loss type that does not sort the batch, with its derivatives in c and r.
__device__ PairTerms dpo_pair(const DpoScalars& s, int kind, const LogRatios& l) {
    const double beta = s.beta, eps = s.eps, a = l.a, b = l.b;
    PairTerms t = {0.0, 0.0, 0.0, 0.0, 0.0};
    // TRL's logits z under the f-divergence, and dz/dc, dz/dr.
    double z, z_c = 1.0, z_r = -1.0;
    if (s.f_divergence == F_DIV_JS) {  // a - b - (softplus(a) - softplus(b)), softplus(x) = -logsig(-x)
        z = l.a_free - l.b_free + log_sigmoid_d(-l.a_free) - log_sigmoid_d(-l.b_free);
        z_c = sigmoid_d(-l.a_free);
        z_r = -sigmoid_d(-l.b_free);
    } else if (s.f_divergence == F_DIV_ALPHA) {  // (cap_exp(-alpha b) - cap_exp(-alpha a)) / alpha
        double da, db;
        const double ea = cap_exp(-s.f_alpha * l.a_free, s.exp_cap, &da);
        const double eb = cap_exp(-s.f_alpha * l.b_free, s.exp_cap, &db);
        z = (eb - ea) / s.f_alpha;
        z_c = da;
        z_r = -db;
    } else {
        z = l.a_free - l.b_free;
    }
    double dz = 0.0;
    bool of_z = true;
    switch (kind) {
        case DPO_SIMPO:  // CPO simpo: the sigmoid loss of z - gamma/beta
            t.loss = smoothed_sigmoid(s, z - s.gamma / beta, &dz);
            break;
        case DPO_SIGMOID:  // -logsig(bz)(1-e) - logsig(-bz)e
            t.loss = smoothed_sigmoid(s, z, &dz);
            break;
        case DPO_ROBUST: {  // (-logsig(bz)(1-e) + logsig(-bz)e) / (1-2e)
            const double u = beta * z, k = 1.0 / (1.0 - 2.0 * eps);
            t.loss = k * (-(1.0 - eps) * log_sigmoid_d(u) + eps * log_sigmoid_d(-u));
            dz = k * beta * (-(1.0 - eps) * sigmoid_d(-u) - eps * sigmoid_d(u));
            break;
        }
        case DPO_EXO_PAIR: {  // sig(u)(logsig(u) - log(1-e)) + sig(-u)(logsig(-u) - log e), e = 1e-3 for 0
            const double e = eps == 0.0 ? 1e-3 : eps;
            const double u = beta * z, p = sigmoid_d(u), q = sigmoid_d(-u);
            t.loss = p * (log_sigmoid_d(u) - log(1.0 - e)) + q * (log_sigmoid_d(-u) - log(e));
            dz = beta * p * q * (u - log((1.0 - e) / e));
            break;
        }
        case DPO_HINGE: {  // relu(1 - bz)
            const double h = 1.0 - beta * z;
            t.loss = fmax(h, 0.0);
            dz = h > 0.0 ? -beta : 0.0;
            break;
        }
        case DPO_IPO: {  // (z - 1/(2b))^2
            const double d = z - 0.5 / beta;
            t.loss = d * d;
            dz = 2.0 * d;
            break;
        }
        default:
            of_z = false;
    }
    if (of_z) {
        t.d_chosen = dz * z_c;
        t.d_rejected = dz * z_r;
        return t;
    }
    switch (kind) {
        case DPO_BCO_PAIR: {  // -logsig(ba - delta) - logsig(-(bb - delta))
            const double u = beta * a - s.delta, v = beta * b - s.delta;
            t.loss = -log_sigmoid_d(u) - log_sigmoid_d(-v);
            t.d_chosen = -beta * sigmoid_d(-u);
            t.d_rejected = beta * sigmoid_d(v);
            break;
        }
        case DPO_NCA_PAIR: {  // -logsig(ba) - logsig(-ba)/2 - logsig(-bb)/2
            const double u = beta * a, v = beta * b;
            t.loss = -log_sigmoid_d(u) - 0.5 * log_sigmoid_d(-u) - 0.5 * log_sigmoid_d(-v);
            t.d_chosen = beta * (-sigmoid_d(-u) + 0.5 * sigmoid_d(u));
            t.d_rejected = beta * 0.5 * sigmoid_d(v);
            break;
        }
        case DPO_SPPO_HARD: {  // (a - 1/(2b))^2 + (b + 1/(2b))^2
            const double da = a - 0.5 / beta, db = b + 0.5 / beta;
            t.loss = da * da + db * db;
            t.d_chosen = 2.0 * da;
            t.d_rejected = 2.0 * db;
            break;
        }
        case DPO_APO_ZERO: {  // 1 - sig(b a_free) + sig(b b_free)
            const double u = beta * l.a_free, v = beta * l.b_free;
            t.loss = 1.0 - sigmoid_d(u) + sigmoid_d(v);
            t.d_chosen = -beta * sigmoid_d(u) * sigmoid_d(-u);
            t.d_rejected = beta * sigmoid_d(v) * sigmoid_d(-v);
            break;
        }
        case DPO_APO_DOWN: {  // sig(b a_free) + 1 - sig(b(a_free - b_free))
            const double u = beta * l.a_free, w = beta * (l.a_free - l.b_free);
            const double dw = beta * sigmoid_d(w) * sigmoid_d(-w);
            t.loss = sigmoid_d(u) + 1.0 - sigmoid_d(w);
            t.d_chosen = beta * sigmoid_d(u) * sigmoid_d(-u) - dw;
            t.d_rejected = dw;
            break;
        }
        case DPO_DISCOPOP: {  // u = b(a - b), m = sig(u/tau): -logsig(u)(1 - m) + exp(-u) m
            const double u = beta * (a - b), m = sigmoid_d(u / s.tau), e = exp(-u), ls = log_sigmoid_d(u);
            const double du = -sigmoid_d(-u) * (1.0 - m) - e * m + (e + ls) * m * (1.0 - m) / s.tau;
            t.loss = -ls * (1.0 - m) + e * m;
            t.d_chosen = beta * du;
            t.d_rejected = -beta * du;
            break;
        }
        case DPO_ORPO: {  // log_odds = (a - b) - (log1mexp(a) - log1mexp(b)); loss = -beta logsig(log_odds)
            t.log_odds = (a - b) - (log1mexp_d(a) - log1mexp_d(b));
            t.log_odds_ratio = log_sigmoid_d(t.log_odds);
            const double d = -beta * sigmoid_d(-t.log_odds);
            t.loss = -beta * t.log_odds_ratio;
            t.d_chosen = d / -expm1(a);
            t.d_rejected = d / expm1(b);
            break;
        }
    }
    return t;
}

// The inputs of a call. Reference, verbose, weight, length and order pointers may be null.
template <typename T>
struct DpoInputs {
    const T *pc, *pr, *rc, *rr, *cv, *rv, *pw;
    const long long *lc, *lr, *order;
    int n;

    // Pair i's log-probs as the losses see them: c, r (length-normalised, or LD-DPO's public + alpha verbose) and
    // the references (0 when absent; length-normalised likewise); scale_c, scale_r: dc/d pc, dr/d pr.
    __device__ void logps(const DpoScalars& s, long long i, double* c, double* r, double* c_ref, double* r_ref,
                         double* scale_c, double* scale_r) const {
        const double nc = lc ? 1.0 / (double)lc[i] : 1.0, nr = lr ? 1.0 / (double)lr[i] : 1.0;
        *c_ref = rc ? load_value(rc, i) * nc : 0.0;
        *r_ref = rr ? load_value(rr, i) * nr : 0.0;
        if (s.use_ld) {
            *c = load_value(pc, i) - (1.0 - s.ld_alpha) * load_value(cv, i);
            *r = load_value(pr, i) - (1.0 - s.ld_alpha) * load_value(rv, i);
            *scale_c = *scale_r = 1.0;
        } else {
            *c = load_value(pc, i) * nc;
            *r = load_value(pr, i) * nr;
            *scale_c = nc;
            *scale_r = nr;
        }
    }
    __device__ static double load_value(const T* p, long long i) { return ::load(p, i); }
    __device__ double weight(long long i) const { return pw ? ::load(pw, i) : 1.0; }
    __device__ long long at(int row, long long i) const { return order[(long long)row * n + i]; }
    __device__ void ratios(const DpoScalars& s, long long i, double* diff, double* ref_diff, double* a,
                           double* b) const {
        double c, r, c_ref, r_ref, sc, sr;
        logps(s, i, &c, &r, &c_ref, &r_ref, &sc, &sr);
        *diff = c - r;
        *ref_diff = c_ref - r_ref;
        *a = c - c_ref;
        *b = r - r_ref;
    }
};

// Per pair k (also sorted position k): the gradients with respect to the policy log-probs (and LD-DPO's verbose
// parts), TRL's per-pair loss, and the statistics of dpo.rs's `stat` module (loss, rewards chosen/rejected,
// accuracy, logps chosen/rejected, log_odds_ratio, log_odds, raw chosen log-prob), summed per block.
template <typename T>
__device__ void dpo_impl(const DpoInputs<T> in, const DpoScalars s, T* gc, T* gr, T* gcv, T* grv, float* losses,
                         double* partial) {
    double acc[DPO_STATS];
#pragma unroll
    for (int q = 0; q < DPO_STATS; ++q) acc[q] = 0.0;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < in.n;
         k += (long long)gridDim.x * blockDim.x) {
        double c, r, c_ref, r_ref, scale_c, scale_r;
        in.logps(s, k, &c, &r, &c_ref, &r_ref, &scale_c, &scale_r);
        const LogRatios own = log_ratios(s, c, r, c_ref, r_ref);
        double d_chosen = 0.0, d_rejected = 0.0, loss = 0.0, weighted = 0.0, log_odds_ratio = 0.0, log_odds = 0.0;
        for (int term = 0; term < s.terms; ++term) {
            const int kind = s.kinds[term];
            const double weight = s.weights[term];
            double d, diff, ref_diff, a, b, x_diff, x_ref, x_a, x_b;
            if (kind == DPO_AOT) {  // sort(c - r)_i - sort(c_ref - r_ref)_i; pair k's own sits at rank(k)
                in.ratios(s, in.at(ORDER_AOT_PERM, k), &diff, &x_ref, &x_a, &x_b);
                in.ratios(s, in.at(ORDER_AOT_REF_PERM, k), &x_diff, &ref_diff, &x_a, &x_b);
                const double l = smoothed_sigmoid(s, diff - ref_diff, &d);
                loss += weight * l;
                weighted += weight * in.weight(k) * l;
                const long long j = in.at(ORDER_AOT_RANK, k);
                in.ratios(s, in.at(ORDER_AOT_REF_PERM, j), &x_diff, &ref_diff, &x_a, &x_b);
                smoothed_sigmoid(s, (c - r) - ref_diff, &d);
                d_chosen += weight * in.weight(j) * d;
                d_rejected -= weight * in.weight(j) * d;
            } else if (kind == DPO_AOT_PAIR) {  // sort(a)_i - sort(b)_i
                in.ratios(s, in.at(ORDER_PAIR_CHOSEN_PERM, k), &x_diff, &x_ref, &a, &x_b);
                in.ratios(s, in.at(ORDER_PAIR_REJECTED_PERM, k), &x_diff, &x_ref, &x_a, &b);
                const double l = smoothed_sigmoid(s, a - b, &d);
                loss += weight * l;
                weighted += weight * in.weight(k) * l;
                long long j = in.at(ORDER_PAIR_CHOSEN_RANK, k);
                in.ratios(s, in.at(ORDER_PAIR_REJECTED_PERM, j), &x_diff, &x_ref, &x_a, &b);
                smoothed_sigmoid(s, own.a - b, &d);
                d_chosen += weight * in.weight(j) * d;
                j = in.at(ORDER_PAIR_REJECTED_RANK, k);
                in.ratios(s, in.at(ORDER_PAIR_CHOSEN_PERM, j), &x_diff, &x_ref, &a, &x_b);
                smoothed_sigmoid(s, a - own.b, &d);
                d_rejected -= weight * in.weight(j) * d;
            } else {
                const PairTerms t = dpo_pair(s, kind, own);
                const double w = weight * in.weight(k);
                loss += weight * t.loss;
                weighted += w * t.loss;
                d_chosen += w * t.d_chosen;
                d_rejected += w * t.d_rejected;
                log_odds_ratio = t.log_odds_ratio;
                log_odds = t.log_odds;
            }
        }
        const double dc = s.mean_scale * d_chosen, dr = s.mean_scale * d_rejected;
        gc[k] = from_float<T>((float)(dc * scale_c + s.nll_grad));
        gr[k] = from_float<T>((float)(dr * scale_r));
        if (s.use_ld) {  // c = full - (1 - alpha) verbose
            gcv[k] = from_float<T>((float)(-(1.0 - s.ld_alpha) * dc));
            grv[k] = from_float<T>((float)(-(1.0 - s.ld_alpha) * dr));
        }
        losses[k] = (float)loss;
        const double reward_c = s.reward_scale * s.beta * own.a, reward_r = s.reward_scale * s.beta * own.b;
        const double v[DPO_STATS] = {weighted, reward_c, reward_r, reward_c > reward_r ? 1.0 : 0.0, c, r,
                                     log_odds_ratio, log_odds, DpoInputs<T>::load_value(in.pc, k)};
#pragma unroll
        for (int q = 0; q < DPO_STATS; ++q) acc[q] += v[q];
    }
    write_partials<DPO_STATS>(acc, partial);
}

#define DPO_KERNEL(T, NAME)                                                                                          \
    extern "C" __global__ void __launch_bounds__(REDUCE_THREADS)                                                   \
        dpo_loss_##NAME(const T* pc, const T* pr, const T* rc, const T* rr, const T* cv, const T* rv, const T* pw,  \
                        const long long* lc, const long long* lr, const long long* order, int n, DpoScalars s,     \
                        T* gc, T* gr, T* gcv, T* grv, float* losses, double* partial) {                            \
        const DpoInputs<T> in = {pc, pr, rc, rr, cv, rv, pw, lc, lr, order, n};                                    \
        dpo_impl<T>(in, s, gc, gr, gcv, grv, losses, partial);                                                     \
    }
DPO_KERNEL(float, f32)
DPO_KERNEL(bf16, bf16)
DPO_KERNEL(f16, f16)

// ------------------------------------------------------------------------------------------------------------
// Reward models.

#define BT_STATS 5

// Bradley-Terry per pair (TRL RewardTrainer): -logsig(rc - rr - margin) + coef (rc + rr)^2; statistics: loss
// term, centring term, accuracy, rc, rr. `margin` may be null.
template <typename T>
__device__ void bradley_terry_impl(const T* rc, const T* rr, const T* margin, int n, double coef, double mean_scale,
                                   T* gc, T* gr, double* partial) {
    double acc[BT_STATS] = {0.0, 0.0, 0.0, 0.0, 0.0};
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const double c = load(rc, i), r = load(rr, i);
        const double d = c - r - (margin ? load(margin, i) : 0.0), center = c + r, g = -sigmoid_d(-d);
        gc[i] = from_float<T>((float)(mean_scale * (g + 2.0 * coef * center)));
        gr[i] = from_float<T>((float)(mean_scale * (-g + 2.0 * coef * center)));
        const double v[BT_STATS] = {-log_sigmoid_d(d), center * center, c > r ? 1.0 : 0.0, c, r};
#pragma unroll
        for (int s = 0; s < BT_STATS; ++s) acc[s] += v[s];
    }
    write_partials<BT_STATS>(acc, partial);
}

#define BT_KERNEL(T, NAME)                                                                                       \
    extern "C" __global__ void __launch_bounds__(REDUCE_THREADS)                                               \
        bradley_terry_##NAME(const T* rc, const T* rr, const T* margin, int n, double coef, double mean_scale,  \
                             T* gc, T* gr, double* partial) {                                                  \
        bradley_terry_impl<T>(rc, rr, margin, n, coef, mean_scale, gc, gr, partial);                           \
    }
BT_KERNEL(float, f32)
BT_KERNEL(bf16, bf16)
BT_KERNEL(f16, f16)

#define KWISE_ALL_PAIRS 0
#define KWISE_PLACKETT_LUCE 1

// K-wise losses, one thread per group of k candidates. `order` (may be null) gives per group the candidates'
// indices from best to worst; x_i below is the reward of the i-th best. Plackett-Luce keeps its suffix
// logsumexps in `lse` (groups * k doubles). Statistics: group loss, share of correctly ordered pairs.
template <typename T>
__device__ void kwise_impl(const T* rewards, const long long* order, int groups, int k, int method, double mean_scale,
                           double* lse, T* grad, double* partial) {
    double acc[2] = {0.0, 0.0};
    const double pairs = 0.5 * (double)k * (double)(k - 1);
    for (long long g = (long long)blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += (long long)gridDim.x * blockDim.x) {
        const long long row = g * k;
#define RANKED(i) (order ? order[row + (i)] : (long long)(i))
#define X(i) load(rewards, row + RANKED(i))
        double loss = 0.0, correct = 0.0;
        for (int i = 0; i < k; ++i)
            for (int j = i + 1; j < k; ++j) correct += X(i) > X(j) ? 1.0 : 0.0;
        if (method == KWISE_ALL_PAIRS) {
            // mean over pairs i < j of -logsig(x_i - x_j)
            for (int i = 0; i < k; ++i) {
                const double xi = X(i);
                double d = 0.0;
                for (int j = 0; j < k; ++j) {
                    if (j == i) continue;
                    const double diff = j > i ? xi - X(j) : X(j) - xi;  // (better) - (worse)
                    if (j > i) loss -= log_sigmoid_d(diff);
                    d += (j > i ? -1.0 : 1.0) * sigmoid_d(-diff);
                }
                grad[row + RANKED(i)] = from_float<T>((float)(mean_scale * d / pairs));
            }
            loss /= pairs;
        } else {
            // -sum_i [x_i - logsumexp(x_i..x_{k-1})]; d/dx_j = -1 + sum_{s <= j} exp(x_j - lse_s)
            double run = NEG_INF_D;
            for (int i = k - 1; i >= 0; --i) {
                const double xi = X(i), m = fmax(run, xi);
                run = m + log(exp(run - m) + exp(xi - m));
                lse[row + i] = run;
                loss += run - xi;
            }
            for (int j = 0; j < k; ++j) {
                const double xj = X(j);
                double d = -1.0;
                for (int s = 0; s <= j; ++s) d += exp(xj - lse[row + s]);
                grad[row + RANKED(j)] = from_float<T>((float)(mean_scale * d));
            }
        }
#undef X
#undef RANKED
        acc[0] += loss;
        acc[1] += correct / pairs;
    }
    write_partials<2>(acc, partial);
}

#define KWISE_KERNEL(T, NAME)                                                                                     \
    extern "C" __global__ void __launch_bounds__(REDUCE_THREADS)                                                \
        kwise_loss_##NAME(const T* rewards, const long long* order, int groups, int k, int method,              \
                          double mean_scale, double* lse, T* grad, double* partial) {                           \
        kwise_impl<T>(rewards, order, groups, k, method, mean_scale, lse, grad, partial);                       \
    }
KWISE_KERNEL(float, f32)
KWISE_KERNEL(bf16, bf16)
KWISE_KERNEL(f16, f16)

// ------------------------------------------------------------------------------------------------------------
// Diffusion-DPO.

// Squared-error sums of the four streams (model winner, model loser, reference winner, reference loser; blockIdx.z)
// over chunks of `chunk` elements of each sample (blockIdx.y) of `width` elements: block (c, b, s) writes
// partial[(s * batch + b) * gridDim.x + c]. Accumulates in double.
template <typename T>
__device__ void diffusion_sq_err_impl(const T* p0, const T* t0, const T* p1, const T* t1, const T* p2, const T* t2,
                                      const T* p3, const T* t3, long long width, long long chunk, double* partial) {
    __shared__ double scratch[REDUCE_THREADS];
    const T* pred = blockIdx.z == 0 ? p0 : blockIdx.z == 1 ? p1 : blockIdx.z == 2 ? p2 : p3;
    const T* target = blockIdx.z == 0 ? t0 : blockIdx.z == 1 ? t1 : blockIdx.z == 2 ? t2 : t3;
    const long long sample = (long long)blockIdx.y * width;
    const long long begin = (long long)blockIdx.x * chunk;
    const long long end = begin + chunk < width ? begin + chunk : width;
    double acc = 0.0;
    for (long long i = begin + threadIdx.x; i < end; i += blockDim.x) {
        const double d = load(pred, sample + i) - load(target, sample + i);
        acc += d * d;
    }
    const double total = block_sum_f64(acc, scratch);
    if (threadIdx.x == 0) partial[((long long)blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x] = total;
}

// grad = coef[b] * (pred - target) for the winner (blockIdx.y = 0) and the loser (1); coef is [2 * batch].
template <typename T>
__device__ void diffusion_grad_impl(const T* pw, const T* tw, const T* pl, const T* tl, const double* coef,
                                    int batch, long long width, T* gw, T* gl) {
    const bool loser = blockIdx.y == 1;
    const T* pred = loser ? pl : pw;
    const T* target = loser ? tl : tw;
    T* grad = loser ? gl : gw;
    const long long total = (long long)batch * width;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        const float c = (float)coef[(loser ? batch : 0) + i / width];
        grad[i] = from_float<T>(c * (to_float(pred[i]) - to_float(target[i])));
    }
}

#define DIFFUSION_KERNELS(T, NAME)                                                                                   \
    extern "C" __global__ void __launch_bounds__(REDUCE_THREADS)                                                   \
        diffusion_sq_err_##NAME(const T* p0, const T* t0, const T* p1, const T* t1, const T* p2, const T* t2,      \
                                const T* p3, const T* t3, long long width, long long chunk, double* partial) {     \
        diffusion_sq_err_impl<T>(p0, t0, p1, t1, p2, t2, p3, t3, width, chunk, partial);                           \
    }                                                                                                              \
    extern "C" __global__ void diffusion_grad_##NAME(const T* pw, const T* tw, const T* pl, const T* tl,           \
                                                     const double* coef, int batch, long long width, T* gw, T* gl) { \
        diffusion_grad_impl<T>(pw, tw, pl, tl, coef, batch, width, gw, gl);                                        \
    }
DIFFUSION_KERNELS(float, f32)
DIFFUSION_KERNELS(bf16, bf16)
DIFFUSION_KERNELS(f16, f16)
