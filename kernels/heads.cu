#include "common.cuh"

// Reward-model heads. Scalar head: the hidden state at each sequence's end position through a linear layer H → C.
// Verdict head: per-class logsumexps over token-id sets of a logits row, renormalised over the classes. One block
// per row; every reduction runs in a fixed order (shuffle trees, per-chunk partials summed in chunk order), so
// results do not change from run to run. Blocks are 256 threads (a multiple of 32, at most 1024).

// ------------------------------------------------------------------------------------------------ scalar head

// One block per sequence n: rewards[n, c] = hidden[rows[n], :] · weight[c, :] + bias[c]; rows[n] = n·T + end[n].
template <typename T>
__device__ void scalar_forward(const T* __restrict__ hidden, const long long* __restrict__ rows,
                               const T* __restrict__ weight, const T* __restrict__ bias, int h, int c_count,
                               float* __restrict__ rewards) {
    __shared__ float scratch[32];
    const int n = blockIdx.x;
    const T* x = hidden + rows[n] * h;
    for (int c = 0; c < c_count; ++c) {
        const T* w = weight + (long long)c * h;
        float acc = 0.0f;
        for (int j = threadIdx.x; j < h; j += blockDim.x) acc += to_float(x[j]) * to_float(w[j]);
        acc = block_sum(acc, scratch);
        if (threadIdx.x == 0) rewards[(long long)n * c_count + c] = acc + (bias ? to_float(bias[c]) : 0.0f);
    }
}

// One block per sequence n: grad_hidden[rows[n], j] = Σ_c grad[n, c] · weight[c, j] (the rest stays zero).
template <typename T>
__device__ void scalar_grad_hidden(const float* __restrict__ grad, const long long* __restrict__ rows,
                                   const T* __restrict__ weight, int h, int c_count, T* __restrict__ grad_hidden) {
    const int n = blockIdx.x;
    const float* g = grad + (long long)n * c_count;
    T* out = grad_hidden + rows[n] * h;
    for (int j = threadIdx.x; j < h; j += blockDim.x) {
        float acc = 0.0f;
        for (int c = 0; c < c_count; ++c) acc += g[c] * to_float(weight[(long long)c * h + j]);
        out[j] = from_float<T>(acc);
    }
}

// Block (chunk, tile): for the `chunk_rows` sequences of its chunk and the hidden columns of its tile,
// partial[chunk, c, j] = Σ_n grad[n, c] · hidden[rows[n], j].
template <typename T>
__device__ void scalar_grad_weight_partial(const float* __restrict__ grad, const long long* __restrict__ rows,
                                           const T* __restrict__ hidden, int n_count, int h, int c_count,
                                           int chunk_rows, float* __restrict__ partial) {
    const int tiles = (h + blockDim.x - 1) / blockDim.x;
    const int chunk = blockIdx.x / tiles, j = (blockIdx.x % tiles) * blockDim.x + threadIdx.x;
    if (j >= h) return;
    const int first = chunk * chunk_rows, last = first + chunk_rows < n_count ? first + chunk_rows : n_count;
    for (int c = 0; c < c_count; ++c) {
        float acc = 0.0f;
        for (int n = first; n < last; ++n) acc += grad[(long long)n * c_count + c] * to_float(hidden[rows[n] * h + j]);
        partial[((long long)chunk * c_count + c) * h + j] = acc;
    }
}

// grad_weight[i] = Σ_chunk partial[chunk, i], in chunk order, for i < C·H (grid-stride).
template <typename T>
__device__ void scalar_grad_weight_reduce(const float* __restrict__ partial, int chunks, long long size,
                                          T* __restrict__ grad_weight) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < size;
         i += (long long)gridDim.x * blockDim.x) {
        float acc = 0.0f;
        for (int chunk = 0; chunk < chunks; ++chunk) acc += partial[chunk * size + i];
        grad_weight[i] = from_float<T>(acc);
    }
}

// One block per output c: grad_bias[c] = Σ_n grad[n, c].
template <typename T>
__device__ void scalar_grad_bias(const float* __restrict__ grad, int n_count, int c_count, T* __restrict__ grad_bias) {
    __shared__ float scratch[32];
    const int c = blockIdx.x;
    float acc = 0.0f;
    for (int n = threadIdx.x; n < n_count; n += blockDim.x) acc += grad[(long long)n * c_count + c];
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) grad_bias[c] = from_float<T>(acc);
}

// ----------------------------------------------------------------------------------------------- verdict head

// Per-class logsumexps, as (max, Σ exp(x − max)) pairs in dynamic shared memory (K of them).
extern __shared__ Lse class_lse[];

// A −∞ logit (a masked token) leaves the state unchanged (lse_push would compute exp(−∞ − (−∞)) on an empty one).
// A NaN or +inf makes it NaN for good (verdict_cpu.rs: PyTorch's log_softmax is NaN then).
__device__ __forceinline__ Lse push_logit(Lse a, float x) {
    if (isnan(a.m) || isnan(x) || x == POS_INF) return lse_poisoned();
    return x == NEG_INF ? a : lse_push(a, x);
}

// Merge over the warp by a butterfly; lane 0's value is broadcast so that every lane holds the same bits.
__device__ __forceinline__ Lse warp_lse(Lse a) {
#pragma unroll
    for (int o = WARP_SIZE / 2; o > 0; o >>= 1)
        a = lse_merge(a, Lse{__shfl_xor_sync(FULL_MASK, a.m, o), __shfl_xor_sync(FULL_MASK, a.s, o)});
    return Lse{__shfl_sync(FULL_MASK, a.m, 0), __shfl_sync(FULL_MASK, a.s, 0)};
}

// Fills class_lse[0..K) for one logits row (each warp takes classes warp, warp + warps, …; its lanes stride over
// the class's ids) and returns the logsumexp of the union to every thread (the classes are disjoint, so it is the
// merge of the classes' values).
template <typename T>
__device__ Lse class_lses(const T* __restrict__ row, const int* __restrict__ offsets, const int* __restrict__ ids,
                          int k_count) {
    __shared__ Lse warps_lse[32];
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE, warps = blockDim.x / WARP_SIZE;
    for (int k = warp; k < k_count; k += warps) {
        Lse a = lse_empty();
        for (int i = offsets[k] + lane; i < offsets[k + 1]; i += WARP_SIZE) a = push_logit(a, to_float(row[ids[i]]));
        a = warp_lse(a);
        if (lane == 0) class_lse[k] = a;
    }
    __syncthreads();
    Lse u = lse_empty();
    for (int k = threadIdx.x; k < k_count; k += blockDim.x) u = lse_merge(u, class_lse[k]);
    u = warp_lse(u);
    if (lane == 0) warps_lse[warp] = u;
    __syncthreads();
    return warp_lse(lane < warps ? warps_lse[lane] : lse_empty());
}

// log p_k = L_k − U, taken between the maxima and the logs of the sums (exact for logits of magnitude 1e4).
__device__ __forceinline__ float log_ratio(Lse part, Lse whole) {
    return (part.m - whole.m) + (logf(part.s) - logf(whole.s));
}

// One block per row b: log_probs[b, k], probs[b, k] and, with class values, expected[b] = Σ_k p_k · values[k].
template <typename T>
__device__ void verdict_forward(const T* __restrict__ logits, long long v, const int* __restrict__ offsets,
                                const int* __restrict__ ids, const float* __restrict__ values, int k_count,
                                float* __restrict__ log_probs, float* __restrict__ probs, float* __restrict__ expected) {
    __shared__ float scratch[32];
    const int b = blockIdx.x;
    const Lse u = class_lses(logits + b * v, offsets, ids, k_count);
    float e = 0.0f;
    for (int k = threadIdx.x; k < k_count; k += blockDim.x) {
        const float lp = log_ratio(class_lse[k], u), p = expf(lp);
        log_probs[(long long)b * k_count + k] = lp;
        probs[(long long)b * k_count + k] = p;
        if (values) e += p * values[k];
    }
    if (values) {
        e = block_sum(e, scratch);
        if (threadIdx.x == 0) expected[b] = e;
    }
}

// One block per row b, writing the listed entries of a zeroed grad row: with w_i = exp(x_i − L_k) and
// q_i = p_k · w_i, d x_i = g_k · w_i − q_i · Σ_j g_j + g_E · q_i · (value_k − E).
template <typename T>
__device__ void verdict_backward(const T* __restrict__ logits, long long v, const int* __restrict__ offsets,
                                 const int* __restrict__ ids, const float* __restrict__ values, int k_count,
                                 const float* __restrict__ grad_log_probs, const float* __restrict__ grad_expected,
                                 T* __restrict__ grad) {
    __shared__ float scratch[32];
    const int b = blockIdx.x;
    const T* row = logits + b * v;
    const Lse u = class_lses(row, offsets, ids, k_count);
    const float* g = grad_log_probs ? grad_log_probs + (long long)b * k_count : nullptr;
    float g_sum = 0.0f, e = 0.0f;
    for (int k = threadIdx.x; k < k_count; k += blockDim.x) {
        if (g) g_sum += g[k];
        if (values) e += expf(log_ratio(class_lse[k], u)) * values[k];
    }
    g_sum = block_sum(g_sum, scratch);
    e = block_sum(e, scratch);
    const float g_e = grad_expected ? grad_expected[b] : 0.0f;
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE, warps = blockDim.x / WARP_SIZE;
    for (int k = warp; k < k_count; k += warps) {
        const Lse l = class_lse[k];
        const float p = expf(log_ratio(l, u)), g_k = g ? g[k] : 0.0f, value = values ? values[k] : 0.0f;
        for (int i = offsets[k] + lane; i < offsets[k + 1]; i += WARP_SIZE) {
            const float x = to_float(row[ids[i]]);
            const float w = x == NEG_INF ? 0.0f : expf(x - l.m) / l.s, q = p * w;
            grad[b * v + ids[i]] = from_float<T>(g_k * w - q * g_sum + g_e * q * (value - e));
        }
    }
}

#define INSTANTIATE(T, S)                                                                                        \
    extern "C" __global__ void heads_scalar_forward_##S(const T* hidden, const long long* rows, const T* weight,  \
                                                        const T* bias, int h, int c_count, float* rewards) {     \
        scalar_forward<T>(hidden, rows, weight, bias, h, c_count, rewards);                                      \
    }                                                                                                            \
    extern "C" __global__ void heads_scalar_grad_hidden_##S(const float* grad, const long long* rows,            \
                                                            const T* weight, int h, int c_count, T* grad_hidden) { \
        scalar_grad_hidden<T>(grad, rows, weight, h, c_count, grad_hidden);                                      \
    }                                                                                                            \
    extern "C" __global__ void heads_scalar_grad_weight_partial_##S(const float* grad, const long long* rows,    \
                                                                    const T* hidden, int n_count, int h,         \
                                                                    int c_count, int chunk_rows, float* partial) { \
        scalar_grad_weight_partial<T>(grad, rows, hidden, n_count, h, c_count, chunk_rows, partial);             \
    }                                                                                                            \
    extern "C" __global__ void heads_scalar_grad_weight_reduce_##S(const float* partial, int chunks,             \
                                                                   long long size, T* grad_weight) {             \
        scalar_grad_weight_reduce<T>(partial, chunks, size, grad_weight);                                        \
    }                                                                                                            \
    extern "C" __global__ void heads_scalar_grad_bias_##S(const float* grad, int n_count, int c_count,           \
                                                          T* grad_bias) {                                        \
        scalar_grad_bias<T>(grad, n_count, c_count, grad_bias);                                                  \
    }                                                                                                            \
    extern "C" __global__ void heads_verdict_forward_##S(const T* logits, long long v, const int* offsets,       \
                                                         const int* ids, const float* values, int k_count,       \
                                                         float* log_probs, float* probs, float* expected) {      \
        verdict_forward<T>(logits, v, offsets, ids, values, k_count, log_probs, probs, expected);                \
    }                                                                                                            \
    extern "C" __global__ void heads_verdict_backward_##S(const T* logits, long long v, const int* offsets,      \
                                                          const int* ids, const float* values, int k_count,      \
                                                          const float* grad_log_probs,                           \
                                                          const float* grad_expected, T* grad) {                 \
        verdict_backward<T>(logits, v, offsets, ids, values, k_count, grad_log_probs, grad_expected, grad);      \
    }

INSTANTIATE(float, f32)
INSTANTIATE(bf16, bf16)
INSTANTIATE(f16, f16)
