#include "common.cuh"

// RMSNorm over rows of h elements: y = x · rstd · w with rstd = 1 / sqrt(mean(x²) + eps), f32 arithmetic.

// One block per row.
template <typename T>
__device__ void rmsnorm_forward(const T* __restrict__ x, const T* __restrict__ w, float eps, int h,
                                T* __restrict__ y, float* __restrict__ rstd) {
    __shared__ float scratch[32];
    const long long base = (long long)blockIdx.x * h;
    float sq = 0.0f;
    for (int j = threadIdx.x; j < h; j += blockDim.x) {
        const float v = to_float(x[base + j]);
        sq += v * v;
    }
    const float r = rsqrtf(block_sum(sq, scratch) / (float)h + eps);
    for (int j = threadIdx.x; j < h; j += blockDim.x)
        y[base + j] = from_float<T>(to_float(x[base + j]) * r * to_float(w[j]));
    if (threadIdx.x == 0) rstd[blockIdx.x] = r;
}

// One block per row: dx = r·(g∘w) − r³·x·Σ(g∘w∘x)/h.
template <typename T>
__device__ void rmsnorm_backward_dx(const T* __restrict__ g, const T* __restrict__ x, const T* __restrict__ w,
                                    const float* __restrict__ rstd, int h, T* __restrict__ dx) {
    __shared__ float scratch[32];
    const long long base = (long long)blockIdx.x * h;
    const float r = rstd[blockIdx.x];
    float dot = 0.0f;
    for (int j = threadIdx.x; j < h; j += blockDim.x)
        dot += to_float(g[base + j]) * to_float(w[j]) * to_float(x[base + j]);
    const float c = r * r * r * block_sum(dot, scratch) / (float)h;
    for (int j = threadIdx.x; j < h; j += blockDim.x)
        dx[base + j] = from_float<T>(r * to_float(g[base + j]) * to_float(w[j]) - c * to_float(x[base + j]));
}

// First pass of d_w: block b covers column block (b % col_blocks) of row chunk (b / col_blocks) and writes
// partial[chunk, j] = Σ_{rows of the chunk} g·x·r, each column summed by one thread in row order.
template <typename T>
__device__ void rmsnorm_backward_dw_partial(const T* __restrict__ g, const T* __restrict__ x,
                                            const float* __restrict__ rstd, int rows, int h, int chunk_rows,
                                            float* __restrict__ partial) {
    const int col_blocks = (h + blockDim.x - 1) / blockDim.x;
    const int chunk = blockIdx.x / col_blocks, j = (blockIdx.x % col_blocks) * blockDim.x + threadIdx.x;
    if (j >= h) return;
    const int begin = chunk * chunk_rows, end = min(rows, begin + chunk_rows);
    float acc = 0.0f;
    for (int row = begin; row < end; ++row) {
        const long long i = (long long)row * h + j;
        acc += to_float(g[i]) * to_float(x[i]) * rstd[row];
    }
    partial[(long long)chunk * h + j] = acc;
}

// Second pass: d_w[j] = Σ_chunks partial[chunk, j], in chunk order.
template <typename T>
__device__ void rmsnorm_backward_dw_reduce(const float* __restrict__ partial, int chunks, int h, T* __restrict__ dw) {
    for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < h; j += gridDim.x * blockDim.x) {
        float acc = 0.0f;
        for (int c = 0; c < chunks; ++c) acc += partial[(long long)c * h + j];
        dw[j] = from_float<T>(acc);
    }
}

#define INSTANTIATE(T, S)                                                                                        \
    extern "C" __global__ void rmsnorm_forward_##S(const T* x, const T* w, float eps, int h, T* y, float* rstd) { \
        rmsnorm_forward<T>(x, w, eps, h, y, rstd);                                                               \
    }                                                                                                            \
    extern "C" __global__ void rmsnorm_backward_dx_##S(const T* g, const T* x, const T* w, const float* rstd,    \
                                                       int h, T* dx) {                                           \
        rmsnorm_backward_dx<T>(g, x, w, rstd, h, dx);                                                            \
    }                                                                                                            \
    extern "C" __global__ void rmsnorm_backward_dw_partial_##S(const T* g, const T* x, const float* rstd,        \
                                                               int rows, int h, int chunk_rows, float* partial) { \
        rmsnorm_backward_dw_partial<T>(g, x, rstd, rows, h, chunk_rows, partial);                                \
    }                                                                                                            \
    extern "C" __global__ void rmsnorm_backward_dw_reduce_##S(const float* partial, int chunks, int h, T* dw) {  \
        rmsnorm_backward_dw_reduce<T>(partial, chunks, h, dw);                                                   \
    }

INSTANTIATE(float, f32)
INSTANTIATE(bf16, bf16)
INSTANTIATE(f16, f16)
