// Shared helpers for every kernel file: storage types, fp32 loads and stores, warp and block reductions,
// and the online logsumexp. Inlined by the runtime in place of `#include "common.cuh"`, so NVRTC needs no
// include path and no CUDA headers.
#pragma once

typedef unsigned long long u64;

// bf16 and f16 are storage types: kernels load them into float and round back on store.
struct __align__(2) bf16 { unsigned short bits; };
struct __align__(2) f16 { unsigned short bits; };

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(bf16 x) { return __uint_as_float(((unsigned int)x.bits) << 16); }
__device__ __forceinline__ float to_float(f16 x) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
    return f;
}

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_float<bf16>(float x) {
    bf16 r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r.bits) : "f"(x));
    return r;
}
template <> __device__ __forceinline__ f16 from_float<f16>(float x) {
    f16 r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r.bits) : "f"(x));
    return r;
}

#define WARP_SIZE 32
#define FULL_MASK 0xffffffffu
#define NEG_INF __int_as_float(0xff800000)
#define POS_INF __int_as_float(0x7f800000)
#define NAN_F __int_as_float(0x7fc00000)

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = WARP_SIZE / 2; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = WARP_SIZE / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// Block-wide sum; every thread gets the result. `scratch` holds one float per warp (at most 32).
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int warps = (blockDim.x + WARP_SIZE - 1) / WARP_SIZE;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0f;
    return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int warps = (blockDim.x + WARP_SIZE - 1) / WARP_SIZE;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : NEG_INF;
    return warp_max(v);
}

// Online logsumexp state: the running max `m` and the sum `s` of exp(x - m).
struct Lse {
    float m, s;
};

__device__ __forceinline__ Lse lse_empty() { return Lse{NEG_INF, 0.0f}; }

__device__ __forceinline__ Lse lse_push(Lse a, float x) {
    if (x > a.m) return Lse{x, a.s * __expf(a.m - x) + 1.0f};
    return Lse{a.m, a.s + __expf(x - a.m)};
}

__device__ __forceinline__ Lse lse_merge(Lse a, Lse b) {
    if (isnan(a.m) || isnan(b.m)) return Lse{NAN_F, NAN_F};  // a NaN state (lse_poisoned) stays NaN
    if (a.m == NEG_INF) return b;
    if (b.m == NEG_INF) return a;
    float m = fmaxf(a.m, b.m);
    return Lse{m, a.s * __expf(a.m - m) + b.s * __expf(b.m - m)};
}

__device__ __forceinline__ float lse_value(Lse a) { return a.m + __logf(a.s); }

// The state after a NaN or +inf logit: PyTorch's log_softmax is NaN over the whole row then (the max and the
// rescaling above would drop a NaN, and an empty state's sum too).
__device__ __forceinline__ Lse lse_poisoned() { return Lse{NAN_F, NAN_F}; }

// Whether a row's accumulated logits held a NaN or +inf, from their plain sum and their max (the sum is NaN
// exactly when a NaN, or both infinities, were added; the max is +inf with a +inf).
__device__ __forceinline__ bool row_poisoned(float sum_of_logits, float max_logit) {
    return isnan(sum_of_logits) || max_logit == POS_INF;
}

// Numerically safe log(sigmoid(x)) = -softplus(-x), exact for |x| in the thousands.
__device__ __forceinline__ float log_sigmoid(float x) {
    return fminf(x, 0.0f) - log1pf(__expf(-fabsf(x)));
}

__device__ __forceinline__ float sigmoid(float x) {
    return x >= 0.0f ? 1.0f / (1.0f + __expf(-x)) : __expf(x) / (1.0f + __expf(x));
}
