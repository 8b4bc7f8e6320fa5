#include "common.cuh"

// Row copies and row sums over [rows, c] tensors, by row lists the host validated (every index in range, the
// destination rows distinct), so each destination element is written by exactly one thread: no atomics.

// dst[dst_rows[k], :] = src[src_rows[k], :] for k < count.
template <typename T>
__device__ void copy_rows(const T* __restrict__ src, const int* __restrict__ src_rows, const int* __restrict__ dst_rows,
                          long long count, int c, T* __restrict__ dst) {
    const long long total = count * c;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long k = i / c, j = i % c;
        dst[(long long)dst_rows[k] * c + j] = src[(long long)src_rows[k] * c + j];
    }
}

// out[j] = Σ_k src[rows[k], j], summed in list order in f32 (deterministic); one thread per column.
template <typename T>
__device__ void sum_rows(const T* __restrict__ src, const int* __restrict__ rows, int count, int c,
                         T* __restrict__ out) {
    for (long long j = blockIdx.x * (long long)blockDim.x + threadIdx.x; j < c; j += (long long)gridDim.x * blockDim.x) {
        float acc = 0.0f;
        for (int k = 0; k < count; ++k) acc += to_float(src[(long long)rows[k] * c + j]);
        out[j] = from_float<T>(acc);
    }
}

#define INSTANTIATE(T, S)                                                                                        \
    extern "C" __global__ void copy_rows_##S(const T* src, const int* src_rows, const int* dst_rows,             \
                                             long long count, int c, T* dst) {                                   \
        copy_rows<T>(src, src_rows, dst_rows, count, c, dst);                                                    \
    }                                                                                                            \
    extern "C" __global__ void sum_rows_##S(const T* src, const int* rows, int count, int c, T* out) {           \
        sum_rows<T>(src, rows, count, c, out);                                                                   \
    }

INSTANTIATE(float, f32)
INSTANTIATE(bf16, bf16)
INSTANTIATE(f16, f16)
