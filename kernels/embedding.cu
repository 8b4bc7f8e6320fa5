#include "common.cuh"

// Token embeddings. Ids were validated (< V) on the host and arrive as int.

// out[p, :] = table[ids[p], :]
template <typename T>
__device__ void embedding_forward(const T* __restrict__ table, const int* __restrict__ ids, long long tokens, int h,
                                  T* __restrict__ out) {
    const long long total = tokens * h;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long p = i / h, j = i % h;
        out[i] = table[(long long)ids[p] * h + j];
    }
}

// One block per vocabulary row v: d_table[v, :] = Σ_{k in [starts[v], starts[v+1])} grad[tokens[k], :], summed in
// token order in f32 (deterministic, no atomics). Overwriting (accumulate = 0), rows of ids that do not occur are
// written as zeros, so every element of d_table is written (it may hold garbage on entry); accumulating, the sums
// are added to what d_table holds and rows of ids that do not occur are left alone.
template <typename T>
__device__ void embedding_backward(const T* __restrict__ grad, const int* __restrict__ starts,
                                   const int* __restrict__ tokens, int h, int accumulate, T* __restrict__ d_table) {
    const int v = blockIdx.x, begin = starts[v], end = starts[v + 1];
    if (accumulate && begin == end) return;
    T* dst = d_table + (long long)v * h;
    for (int j = threadIdx.x; j < h; j += blockDim.x) {
        float acc = accumulate ? to_float(dst[j]) : 0.0f;
        for (int k = begin; k < end; ++k) acc += to_float(grad[(long long)tokens[k] * h + j]);
        dst[j] = from_float<T>(acc);
    }
}

#define INSTANTIATE(T, S)                                                                                        \
    extern "C" __global__ void embedding_forward_##S(const T* table, const int* ids, long long tokens, int h,     \
                                                     T* out) {                                                   \
        embedding_forward<T>(table, ids, tokens, h, out);                                                        \
    }                                                                                                            \
    extern "C" __global__ void embedding_backward_##S(const T* grad, const int* starts, const int* tokens, int h, \
                                                      int accumulate, T* d_table) {                              \
        embedding_backward<T>(grad, starts, tokens, h, accumulate, d_table);                                     \
    }

INSTANTIATE(float, f32)
INSTANTIATE(bf16, bf16)
INSTANTIATE(f16, f16)
