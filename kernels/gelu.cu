#include "common.cuh"

// GELU element-wise, f32 arithmetic: the tanh form 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) when `tanh_form`,
// else the exact 0.5·x·(1 + erf(x/√2)). tanh and sech² come from e = exp(−2|u|), exact in the tails (as on the CPU).

#define GELU_SQRT_2_OVER_PI 0.7978845608f
#define GELU_KAPPA 0.044715f
#define GELU_FRAC_1_SQRT_2 0.7071067812f
#define GELU_FRAC_1_SQRT_2PI 0.3989422804f
// Past this |x| the tanh form's sech² is exactly 0; clamping x there keeps x³ finite in the derivative.
#define GELU_TANH_TAIL 100.0f

// tanh(u) and sech²(u).
__device__ __forceinline__ void gelu_tanh_sech2(float u, float& t, float& sech2) {
    const float e = expf(-2.0f * fabsf(u)), inv = 1.0f / (1.0f + e);
    t = copysignf((1.0f - e) * inv, u);
    sech2 = 4.0f * e * inv * inv;
}

__device__ __forceinline__ float gelu_value(float x, int tanh_form) {
    if (tanh_form) {
        float t, sech2;
        gelu_tanh_sech2(GELU_SQRT_2_OVER_PI * (x + GELU_KAPPA * x * x * x), t, sech2);
        return 0.5f * x * (1.0f + t);
    }
    return x * 0.5f * (1.0f + erff(x * GELU_FRAC_1_SQRT_2));
}

__device__ __forceinline__ float gelu_derivative(float x, int tanh_form) {
    if (tanh_form) {
        float t, sech2;
        gelu_tanh_sech2(GELU_SQRT_2_OVER_PI * (x + GELU_KAPPA * x * x * x), t, sech2);
        const float xc = fminf(fmaxf(x, -GELU_TANH_TAIL), GELU_TANH_TAIL);
        return 0.5f * (1.0f + t) + 0.5f * x * sech2 * GELU_SQRT_2_OVER_PI * (1.0f + 3.0f * GELU_KAPPA * xc * xc);
    }
    const float cdf = 0.5f * (1.0f + erff(x * GELU_FRAC_1_SQRT_2));
    return cdf + x * GELU_FRAC_1_SQRT_2PI * expf(-0.5f * x * x);
}

template <typename T>
__device__ void gelu_forward(const T* __restrict__ x, long long n, int tanh_form, T* __restrict__ y) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        y[i] = from_float<T>(gelu_value(to_float(x[i]), tanh_form));
}

template <typename T>
__device__ void gelu_backward(const T* __restrict__ dy, const T* __restrict__ x, long long n, int tanh_form,
                              T* __restrict__ dx) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        dx[i] = from_float<T>(to_float(dy[i]) * gelu_derivative(to_float(x[i]), tanh_form));
}

#define INSTANTIATE(T, S)                                                                                        \
    extern "C" __global__ void gelu_forward_##S(const T* x, long long n, int tanh_form, T* y) {                  \
        gelu_forward<T>(x, n, tanh_form, y);                                                                     \
    }                                                                                                            \
    extern "C" __global__ void gelu_backward_##S(const T* dy, const T* x, long long n, int tanh_form, T* dx) {   \
        gelu_backward<T>(dy, x, n, tanh_form, dx);                                                               \
    }

INSTANTIATE(float, f32)
INSTANTIATE(bf16, bf16)
INSTANTIATE(f16, f16)
