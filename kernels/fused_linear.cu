#include "common.cuh"

// The fused linear log-prob path. Per chunk of counted tokens the host gathers hidden rows, computes the chunk's
// f32 logits with cuBLAS, and these kernels reduce each row (forward) or turn it into its gradient (backward).
// Token arrays are indexed by counted-token number k; `positions[k]` is the flat (n, t) position.

// rows[c, :] = hidden[positions[c], :]
template <typename T>
__device__ void gather_rows(const T* __restrict__ hidden, const int* __restrict__ positions, T* __restrict__ rows,
                            int chunk, int h) {
    const long long total = (long long)chunk * h;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long c = i / h, j = i % h;
        rows[i] = hidden[(long long)positions[c] * h + j];
    }
}

// Online softmax statistics of a row: max m, s = Σ exp(x − m), sx = Σ exp(x − m)·(x − m), and Σ x.
struct RowAcc {
    float m, s, sx, sum;
};

__device__ __forceinline__ RowAcc acc_push(RowAcc a, float x) {
    a.sum += x;
    if (x > a.m) {
        if (a.m != NEG_INF) {
            const float shift = a.m - x, scale = __expf(shift);
            a.sx = (a.sx + shift * a.s) * scale;
            a.s *= scale;
        }
        a.m = x;
    }
    const float d = x - a.m, e = __expf(d);
    a.s += e;
    a.sx += e * d;
    return a;
}

__device__ __forceinline__ RowAcc acc_merge(RowAcc a, RowAcc b) {
    if (a.m == NEG_INF) { b.sum += a.sum; return b; }
    if (b.m == NEG_INF) { a.sum += b.sum; return a; }
    const float m = fmaxf(a.m, b.m);
    const float da = a.m - m, db = b.m - m, ea = __expf(da), eb = __expf(db);
    return RowAcc{m, a.s * ea + b.s * eb, (a.sx + da * a.s) * ea + (b.sx + db * b.s) * eb, a.sum + b.sum};
}

__device__ __forceinline__ RowAcc acc_shfl(RowAcc a, int offset) {
    return RowAcc{__shfl_xor_sync(FULL_MASK, a.m, offset), __shfl_xor_sync(FULL_MASK, a.s, offset),
                  __shfl_xor_sync(FULL_MASK, a.sx, offset), __shfl_xor_sync(FULL_MASK, a.sum, offset)};
}

// Block-wide merge; thread 0 gets the result. Needs blockDim.x a multiple of 32, at most 1024.
__device__ RowAcc block_acc(RowAcc a) {
    __shared__ RowAcc warps[32];
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE, n_warps = blockDim.x / WARP_SIZE;
#pragma unroll
    for (int o = WARP_SIZE / 2; o > 0; o >>= 1) a = acc_merge(a, acc_shfl(a, o));
    if (lane == 0) warps[warp] = a;
    __syncthreads();
    if (warp == 0) {
        a = lane < n_warps ? warps[lane] : RowAcc{NEG_INF, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int o = WARP_SIZE / 2; o > 0; o >>= 1) a = acc_merge(a, acc_shfl(a, o));
    }
    return a;
}

// One block per chunk row: logsumexp, target log-prob, mean logit and entropy of logits[c] (+ bias), written to
// the token arrays at index `first + c`; with `log_collision` (null: not asked for), also log Σ_j softmax_j², a
// second pass over the row once its lse is known.
template <typename T>
__device__ void row_stats(const float* __restrict__ logits, const T* __restrict__ bias,
                          const int* __restrict__ labels, int v, int first, float* __restrict__ lse,
                          float* __restrict__ logp, float* __restrict__ mean_logit, float* __restrict__ entropy,
                          float* __restrict__ log_collision) {
    __shared__ float row_lse, scratch[32];
    const int c = blockIdx.x, k = first + c;
    const float* row = logits + (long long)c * v;
    RowAcc acc{NEG_INF, 0.0f, 0.0f, 0.0f};
    for (int j = threadIdx.x; j < v; j += blockDim.x) {
        acc = acc_push(acc, row[j] + (bias ? to_float(bias[j]) : 0.0f));
    }
    acc = block_acc(acc);
    if (threadIdx.x == 0) {
        const int label = labels[k];
        // logprobs/row.rs: a NaN or +inf logit makes the row's lse, log-prob and entropy NaN.
        const float l = row_poisoned(acc.sum, acc.m) ? NAN_F : acc.m + __logf(acc.s);
        const float target = row[label] + (bias ? to_float(bias[label]) : 0.0f);
        lse[k] = l;
        logp[k] = target - l;
        mean_logit[k] = acc.sum / (float)v;
        entropy[k] = l - (acc.m + acc.sx / acc.s);
        row_lse = l;
    }
    // Every thread of the block takes the same branch: the barrier and the block-wide sum stay collective.
    if (log_collision) {
        __syncthreads();
        const float l = row_lse;
        float sum = 0.0f;
        for (int j = threadIdx.x; j < v; j += blockDim.x) {
            sum += __expf(2.0f * (row[j] + (bias ? to_float(bias[j]) : 0.0f) - l));
        }
        sum = block_sum(sum, scratch);
        if (threadIdx.x == 0) log_collision[k] = __logf(sum);
    }
}

// One block per chunk row: grad[c, j] = scale[k] · (exp(x − lse) − [j = label]), x = logits[c, j] (+ bias), with
// the counted token's own scale (its sequence's upstream gradient, plus its weight times the weighted sum's).
// `grad` may alias `logits` when T is float: each element is read before it is written, by one thread.
template <typename T>
__device__ void row_grad(const float* logits, const T* __restrict__ bias, const int* __restrict__ labels,
                         const int* __restrict__ positions, const float* __restrict__ lse_full,
                         const float* __restrict__ token_scale, int v, int first, T* grad) {
    const int c = blockIdx.x, k = first + c, label = labels[k];
    const float l = lse_full[positions[k]], scale = token_scale[k];
    const long long base = (long long)c * v;
    for (int j = threadIdx.x; j < v; j += blockDim.x) {
        const float x = logits[base + j] + (bias ? to_float(bias[j]) : 0.0f);
        grad[base + j] = from_float<T>(scale * (__expf(x - l) - (j == label ? 1.0f : 0.0f)));
    }
}

// d_hidden[positions[first + c], :] = rows[c, :] (rounded to T).
template <typename T>
__device__ void scatter_rows(const float* __restrict__ rows, const int* __restrict__ positions, int first,
                             int chunk, int h, T* __restrict__ grad_hidden) {
    const long long total = (long long)chunk * h;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long c = i / h, j = i % h;
        grad_hidden[(long long)positions[first + c] * h + j] = from_float<T>(rows[i]);
    }
}

template <typename T>
__device__ void convert(const float* __restrict__ src, long long n, int accumulate, T* __restrict__ dst) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        dst[i] = from_float<T>(accumulate ? to_float(dst[i]) + src[i] : src[i]);
}

#define INSTANTIATE(T, S)                                                                                        \
    extern "C" __global__ void fl_gather_rows_##S(const T* hidden, const int* positions, T* rows, int chunk,     \
                                                  int h) {                                                       \
        gather_rows<T>(hidden, positions, rows, chunk, h);                                                       \
    }                                                                                                            \
    extern "C" __global__ void fl_row_stats_##S(const float* logits, const T* bias, const int* labels, int v,    \
                                                int first, float* lse, float* logp, float* mean_logit,           \
                                                float* entropy, float* log_collision) {                          \
        row_stats<T>(logits, bias, labels, v, first, lse, logp, mean_logit, entropy, log_collision);            \
    }                                                                                                            \
    extern "C" __global__ void fl_row_grad_##S(const float* logits, const T* bias, const int* labels,            \
                                               const int* positions, const float* lse_full,                      \
                                               const float* token_scale, int v, int first, T* grad) {            \
        row_grad<T>(logits, bias, labels, positions, lse_full, token_scale, v, first, grad);                     \
    }                                                                                                            \
    extern "C" __global__ void fl_scatter_rows_##S(const float* rows, const int* positions, int first,           \
                                                   int chunk, int h, T* grad_hidden) {                           \
        scatter_rows<T>(rows, positions, first, chunk, h, grad_hidden);                                          \
    }                                                                                                            \
    extern "C" __global__ void fl_convert_##S(const float* src, long long n, int accumulate, T* dst) {            \
        convert<T>(src, n, accumulate, dst);                                                                     \
    }

INSTANTIATE(float, f32)
INSTANTIATE(bf16, bf16)
INSTANTIATE(f16, f16)

// One block per sequence: reduce its counted tokens [starts[n], starts[n+1]) in a fixed order (deterministic) and
// scatter their logsumexp to the [N, T] layout the backward reads. With per-token `weights` (null: none), also the
// weighted sum Σ weights[k]·logp[k] into `out_weighted`; with per-token `collision` (null: none), its sum into
// `out_collision`.
extern "C" __global__ void fl_reduce_sequences(const int* __restrict__ starts, const int* __restrict__ positions,
                                               const float* __restrict__ lse, const float* __restrict__ logp,
                                               const float* __restrict__ mean_logit,
                                               const float* __restrict__ entropy, const float* __restrict__ weights,
                                               const float* __restrict__ collision, int mean_reduction,
                                               float* __restrict__ out_logps, float* __restrict__ out_counts,
                                               float* __restrict__ out_mean_logits, float* __restrict__ out_entropy,
                                               float* __restrict__ lse_full, float* __restrict__ out_weighted,
                                               float* __restrict__ out_collision) {
    __shared__ float scratch[32];
    const int n = blockIdx.x, begin = starts[n], end = starts[n + 1];
    float sum_logp = 0.0f, sum_mean_logit = 0.0f, sum_entropy = 0.0f, sum_weighted = 0.0f, sum_collision = 0.0f;
    for (int k = begin + threadIdx.x; k < end; k += blockDim.x) {
        sum_logp += logp[k];
        sum_mean_logit += mean_logit[k];
        sum_entropy += entropy[k];
        if (weights) sum_weighted += weights[k] * logp[k];
        if (collision) sum_collision += collision[k];
        lse_full[positions[k]] = lse[k];
    }
    sum_logp = block_sum(sum_logp, scratch);
    sum_mean_logit = block_sum(sum_mean_logit, scratch);
    sum_entropy = block_sum(sum_entropy, scratch);
    // Every thread of the block takes the same branches: the block-wide sums stay collective.
    if (weights) sum_weighted = block_sum(sum_weighted, scratch);
    if (collision) sum_collision = block_sum(sum_collision, scratch);
    if (threadIdx.x == 0) {
        const float count = (float)(end - begin), inv = count > 0.0f ? 1.0f / count : 0.0f;
        out_logps[n] = mean_reduction ? sum_logp * inv : sum_logp;
        out_counts[n] = count;
        out_mean_logits[n] = sum_mean_logit * inv;
        out_entropy[n] = sum_entropy * inv;
        if (weights) out_weighted[n] = mean_reduction ? sum_weighted * inv : sum_weighted;
        if (collision) out_collision[n] = mean_reduction ? sum_collision * inv : sum_collision;
    }
}
