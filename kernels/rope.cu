#include "common.cuh"

// Rotary embeddings, rotate-half convention, in place on rows of `heads` heads of d elements. The angle is formed
// in f32 as transformers forms it; its sine and cosine are taken in double (fast-math sinf loses accuracy at the
// large angles of late positions). `sign` is +1 for the embedding, −1 for its inverse (the backward).
template <typename T>
__device__ void rope(T* __restrict__ x, const int* __restrict__ positions, const float* __restrict__ inv_freq,
                     long long rows, int heads, int d, float sign) {
    const int half = d / 2;
    const long long total = rows * heads * half;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int k = (int)(i % half);
        const long long head = i / half, row = head / heads;
        const float angle = (float)positions[row] * inv_freq[k];
        double s, c;
        sincos((double)angle, &s, &c);
        const float sn = sign * (float)s, cs = (float)c;
        T* p = x + head * d;
        const float a = to_float(p[k]), b = to_float(p[k + half]);
        p[k] = from_float<T>(a * cs - b * sn);
        p[k + half] = from_float<T>(b * cs + a * sn);
    }
}

#define INSTANTIATE(T, S)                                                                                        \
    extern "C" __global__ void rope_##S(T* x, const int* positions, const float* inv_freq, long long rows,       \
                                        int heads, int d, float sign) {                                          \
        rope<T>(x, positions, inv_freq, rows, heads, d, sign);                                                   \
    }

INSTANTIATE(float, f32)
INSTANTIATE(bf16, bf16)
INSTANTIATE(f16, f16)
