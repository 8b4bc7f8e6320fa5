#include "common.cuh"

// Per-sequence log-probabilities from logits [N,T,V] (src/ops/logprobs/cuda.rs).
//
// 1. logprobs_targets: per row (n,t), the label if the token counts, else -1; the first counted label outside
//    [0, V) is reported through `first_bad` (atomicMin of its position) instead of being read.
// 2. logprobs_forward_<T>: one block per counted row, one pass with an online logsumexp in f32 (16-byte loads
//    when the row is aligned), writing the row's lse and its log-prob, mean logit and entropy.
// 3. logprobs_sequences: one block per sequence reduces its tokens in a fixed order (deterministic).
// 4. logprobs_backward_<T>: one block per row writes scale·(softmax - onehot); `grad` is either freshly zeroed or
//    `logits` itself (in place).

#define MAX_WARPS 32

// Online state of a row: running max m, s = sum exp(x - m), sd = sum exp(x - m)·(x - m), sx = sum x.
struct RowAcc {
    float m, s, sd, sx;
};

__device__ __forceinline__ RowAcc acc_empty() { return RowAcc{NEG_INF, 0.0f, 0.0f, 0.0f}; }

// Moves `a` to the larger max `m`: d shifts by (a.m - m), e scales by exp(a.m - m).
__device__ __forceinline__ void acc_rescale(RowAcc& a, float m) {
    if (a.s > 0.0f) {
        const float shift = a.m - m;
        const float scale = __expf(shift);
        a.sd = (a.sd + shift * a.s) * scale;
        a.s *= scale;
    }
    a.m = m;
}

// Adds `k` values at once: one rescale for their max, then plain accumulation.
template <int K>
__device__ __forceinline__ void acc_push(RowAcc& a, const float (&x)[K]) {
    float m = a.m;
#pragma unroll
    for (int i = 0; i < K; ++i) m = fmaxf(m, x[i]);
    if (m > a.m) acc_rescale(a, m);
    if (a.m == NEG_INF) {  // only -inf so far: nothing to add but the logits' sum (avoids -inf - -inf)
#pragma unroll
        for (int i = 0; i < K; ++i) a.sx += x[i];
        return;
    }
#pragma unroll
    for (int i = 0; i < K; ++i) {
        const float d = x[i] - a.m;
        const float e = __expf(d);
        a.s += e;
        a.sd += e > 0.0f ? e * d : 0.0f;  // a logit of -inf adds nothing (not 0·inf)
        a.sx += x[i];
    }
}

__device__ __forceinline__ RowAcc acc_merge(RowAcc a, RowAcc b) {
    const float m = fmaxf(a.m, b.m);
    if (m == NEG_INF) return RowAcc{m, 0.0f, 0.0f, a.sx + b.sx};
    acc_rescale(a, m);
    acc_rescale(b, m);
    return RowAcc{m, a.s + b.s, a.sd + b.sd, a.sx + b.sx};
}

__device__ __forceinline__ RowAcc acc_warp_merge(RowAcc a) {
#pragma unroll
    for (int o = WARP_SIZE / 2; o > 0; o >>= 1) {
        RowAcc b;
        b.m = __shfl_xor_sync(FULL_MASK, a.m, o);
        b.s = __shfl_xor_sync(FULL_MASK, a.s, o);
        b.sd = __shfl_xor_sync(FULL_MASK, a.sd, o);
        b.sx = __shfl_xor_sync(FULL_MASK, a.sx, o);
        a = acc_merge(a, b);
    }
    return a;
}

// Block-wide merge (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
__device__ __forceinline__ RowAcc acc_block_merge(RowAcc a, RowAcc* scratch) {
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int warps = blockDim.x / WARP_SIZE;
    a = acc_warp_merge(a);
    __syncthreads();  // earlier readers of `scratch` are done
    if (lane == 0) scratch[warp] = a;
    __syncthreads();
    a = lane < warps ? scratch[lane] : acc_empty();
    return acc_warp_merge(a);
}

// Elements of T in one 16-byte load.
template <typename T>
struct Vec16 {
    static constexpr int N = 16 / sizeof(T);
    union {
        uint4 raw;
        T e[N];
    };
};

__device__ __forceinline__ bool aligned16(const void* p) { return ((u64)p & 15) == 0; }

extern "C" __global__ void logprobs_targets(const void* labels, int labels_i64, const void* mask, int mask_kind,
                                            long long rows, long long vocab, long long ignore_index, int* targets,
                                            unsigned long long* first_bad) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < rows;
         i += (long long)gridDim.x * blockDim.x) {
        const long long label = labels_i64 ? ((const long long*)labels)[i] : (long long)((const int*)labels)[i];
        bool counted = label != ignore_index;
        if (mask_kind == 1) counted = counted && ((const int*)mask)[i] != 0;
        if (mask_kind == 2) counted = counted && ((const long long*)mask)[i] != 0;
        if (mask_kind == 3) counted = counted && ((const float*)mask)[i] != 0.0f;
        int target = -1;
        if (counted) {
            if (label < 0 || label >= vocab) atomicMin(first_bad, (unsigned long long)i);
            else target = (int)label;
        }
        targets[i] = target;
    }
}

// per_token holds three rows-long arrays: log-prob, mean logit, entropy.
template <typename T>
__device__ void forward_rows(const T* logits, const int* targets, long long rows, int vocab, float* lse,
                             float* per_token) {
    __shared__ RowAcc scratch[MAX_WARPS];
    for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
        const int target = targets[row];
        if (target < 0) {  // uniform over the block: no barrier is skipped by some threads only
            if (threadIdx.x == 0) {
                lse[row] = 0.0f;
                per_token[row] = per_token[rows + row] = per_token[2 * rows + row] = 0.0f;
            }
            continue;
        }
        const T* x = logits + row * (long long)vocab;
        RowAcc acc = acc_empty();
        int done = 0;
        if (aligned16(x)) {
            constexpr int N = Vec16<T>::N;
            const int vectors = vocab / N;
            for (int i = threadIdx.x; i < vectors; i += blockDim.x) {
                Vec16<T> v;
                v.raw = ((const uint4*)x)[i];
                float f[N];
#pragma unroll
                for (int k = 0; k < N; ++k) f[k] = to_float(v.e[k]);
                acc_push(acc, f);
            }
            done = vectors * N;
        }
        for (int j = done + threadIdx.x; j < vocab; j += blockDim.x) {
            const float f[1] = {to_float(x[j])};
            acc_push(acc, f);
        }
        acc = acc_block_merge(acc, scratch);
        if (threadIdx.x == 0) {
            // row.rs: a NaN or +inf logit makes the row's lse, log-prob and entropy NaN (so its gradient too).
            const float ln_s = row_poisoned(acc.sx, acc.m) ? NAN_F : __logf(acc.s);
            lse[row] = acc.m + ln_s;
            // (x - max) is exact for nearby values: no rounding of a large lse for logits of magnitude 1e4.
            per_token[row] = (to_float(x[target]) - acc.m) - ln_s;
            per_token[rows + row] = acc.sx / (float)vocab;
            per_token[2 * rows + row] = ln_s - acc.sd / acc.s;
        }
    }
}

extern "C" __global__ void logprobs_sequences(const float* per_token, const int* targets, int n, int t, int mean,
                                              float* logps, float* counts, float* mean_logits, float* entropy) {
    __shared__ float scratch[MAX_WARPS];
    const long long rows = (long long)n * t;
    for (int seq = blockIdx.x; seq < n; seq += gridDim.x) {
        float sums[4] = {0.0f, 0.0f, 0.0f, 0.0f};  // log-prob, mean logit, entropy, count
        for (int j = threadIdx.x; j < t; j += blockDim.x) {
            const long long row = (long long)seq * t + j;
            if (targets[row] < 0) continue;
            sums[0] += per_token[row];
            sums[1] += per_token[rows + row];
            sums[2] += per_token[2 * rows + row];
            sums[3] += 1.0f;
        }
#pragma unroll
        for (int k = 0; k < 4; ++k) sums[k] = block_sum(sums[k], scratch);
        if (threadIdx.x == 0) {
            const float c = sums[3];
            const float per = c > 0.0f ? 1.0f / c : 0.0f;
            logps[seq] = mean ? sums[0] * per : sums[0];
            counts[seq] = c;
            mean_logits[seq] = sums[1] * per;
            entropy[seq] = sums[2] * per;
        }
        __syncthreads();
    }
}

// grad[row] = scale·(softmax - onehot(target)), scale = -g[n]·w, or 0 for rows that do not count. `grad` may alias
// `logits`: each element is read and then written by the same thread.
template <typename T>
__device__ void backward_rows(const T* logits, T* grad, const int* targets, const float* lse, const float* grad_logps,
                              const float* counts, long long rows, int t, int vocab, int mean) {
    for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
        const int target = targets[row];
        const long long seq = row / t;
        const float c = counts[seq];
        const float scale = (target < 0 || c == 0.0f) ? 0.0f : -grad_logps[seq] * (mean ? 1.0f / c : 1.0f);
        // A separate `grad` starts zeroed: rows that do not count (prompts, padding) need no writes.
        if (scale == 0.0f && grad != logits) continue;
        const float l = lse[row];
        const T* x = logits + row * (long long)vocab;
        T* g = grad + row * (long long)vocab;
        int done = 0;
        if (aligned16(x) && aligned16(g)) {
            constexpr int N = Vec16<T>::N;
            const int vectors = vocab / N;
            for (int i = threadIdx.x; i < vectors; i += blockDim.x) {
                Vec16<T> v;
                v.raw = ((const uint4*)x)[i];
#pragma unroll
                for (int k = 0; k < N; ++k) {
                    const float onehot = (i * N + k == target) ? 1.0f : 0.0f;
                    v.e[k] = from_float<T>(scale == 0.0f ? 0.0f : scale * (__expf(to_float(v.e[k]) - l) - onehot));
                }
                ((uint4*)g)[i] = v.raw;
            }
            done = vectors * N;
        }
        for (int j = done + threadIdx.x; j < vocab; j += blockDim.x) {
            const float onehot = j == target ? 1.0f : 0.0f;
            g[j] = from_float<T>(scale == 0.0f ? 0.0f : scale * (__expf(to_float(x[j]) - l) - onehot));
        }
    }
}

#define LOGPROBS_KERNELS(T, SUFFIX)                                                                                  \
    extern "C" __global__ void logprobs_forward_##SUFFIX(const T* logits, const int* targets, long long rows,       \
                                                         int vocab, float* lse, float* per_token) {                 \
        forward_rows<T>(logits, targets, rows, vocab, lse, per_token);                                               \
    }                                                                                                                \
    extern "C" __global__ void logprobs_backward_##SUFFIX(const T* logits, T* grad, const int* targets,             \
                                                          const float* lse, const float* grad_logps,                 \
                                                          const float* counts, long long rows, int t, int vocab,     \
                                                          int mean) {                                                \
        backward_rows<T>(logits, grad, targets, lse, grad_logps, counts, rows, t, vocab, mean);                      \
    }

LOGPROBS_KERNELS(float, f32)
LOGPROBS_KERNELS(bf16, bf16)
LOGPROBS_KERNELS(f16, f16)
