#include "common.cuh"

// Linear layers: cuBLAS writes f32 products; this kernel adds the bias (when not null) and rounds to T.
// out[i] = acc[i] + bias[i % cols]
template <typename T>
__device__ void linear_finish(const float* __restrict__ acc, const T* __restrict__ bias, long long n, int cols,
                              T* __restrict__ out) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        out[i] = from_float<T>(acc[i] + (bias ? to_float(bias[i % cols]) : 0.0f));
}

#define INSTANTIATE(T, S)                                                                                        \
    extern "C" __global__ void linear_finish_##S(const float* acc, const T* bias, long long n, int cols, T* out) { \
        linear_finish<T>(acc, bias, n, cols, out);                                                               \
    }

INSTANTIATE(float, f32)
INSTANTIATE(bf16, bf16)
INSTANTIATE(f16, f16)
