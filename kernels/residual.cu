#include "common.cuh"

// Residual add: dst += src element-wise, f32 arithmetic.

template <typename T>
__device__ void residual_add(T* __restrict__ dst, const T* __restrict__ src, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        dst[i] = from_float<T>(to_float(dst[i]) + to_float(src[i]));
    }
}

#define INSTANTIATE(T, S)                                                                                        \
    extern "C" __global__ void residual_add_##S(T* dst, const T* src, long long n) { residual_add<T>(dst, src, n); }

INSTANTIATE(float, f32)
INSTANTIATE(bf16, bf16)
INSTANTIATE(f16, f16)
