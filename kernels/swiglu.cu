#include "common.cuh"

// SwiGLU: y = silu(gate)·up element-wise, f32 arithmetic.

template <typename T>
__device__ void swiglu_forward(const T* __restrict__ gate, const T* __restrict__ up, long long n, T* __restrict__ y) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float g = to_float(gate[i]);
        y[i] = from_float<T>(g * sigmoid(g) * to_float(up[i]));
    }
}

template <typename T>
__device__ void swiglu_backward(const T* __restrict__ dy, const T* __restrict__ gate, const T* __restrict__ up,
                                long long n, T* __restrict__ d_gate, T* __restrict__ d_up) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float g = to_float(gate[i]), u = to_float(up[i]), d = to_float(dy[i]), s = sigmoid(g);
        d_gate[i] = from_float<T>(d * u * s * (1.0f + g * (1.0f - s)));
        d_up[i] = from_float<T>(d * g * s);
    }
}

#define INSTANTIATE(T, S)                                                                                        \
    extern "C" __global__ void swiglu_forward_##S(const T* gate, const T* up, long long n, T* y) {               \
        swiglu_forward<T>(gate, up, n, y);                                                                       \
    }                                                                                                            \
    extern "C" __global__ void swiglu_backward_##S(const T* dy, const T* gate, const T* up, long long n,         \
                                                   T* d_gate, T* d_up) {                                         \
        swiglu_backward<T>(dy, gate, up, n, d_gate, d_up);                                                       \
    }

INSTANTIATE(float, f32)
INSTANTIATE(bf16, bf16)
INSTANTIATE(f16, f16)
