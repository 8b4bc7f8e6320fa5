#include "common.cuh"

// LayerNorm over rows of h elements: y = (x − mean) · rstd · w + b with rstd = 1 / sqrt(var + eps), the biased
// variance taken about the mean (two passes over the row), f32 arithmetic.

// One block per row.
template <typename T>
__device__ void layernorm_forward(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                                  float eps, int h, T* __restrict__ y, float* __restrict__ mean,
                                  float* __restrict__ rstd) {
    __shared__ float scratch[32];
    const long long base = (long long)blockIdx.x * h;
    float s = 0.0f;
    for (int j = threadIdx.x; j < h; j += blockDim.x) s += to_float(x[base + j]);
    const float m = block_sum(s, scratch) / (float)h;
    float sq = 0.0f;
    for (int j = threadIdx.x; j < h; j += blockDim.x) {
        const float d = to_float(x[base + j]) - m;
        sq += d * d;
    }
    const float r = rsqrtf(block_sum(sq, scratch) / (float)h + eps);
    for (int j = threadIdx.x; j < h; j += blockDim.x)
        y[base + j] = from_float<T>((to_float(x[base + j]) - m) * r * to_float(w[j]) + to_float(b[j]));
    if (threadIdx.x == 0) {
        mean[blockIdx.x] = m;
        rstd[blockIdx.x] = r;
    }
}

// One block per row: with x̂ = (x − mean)·r and ĝ = g∘w, dx = r·(ĝ − mean(ĝ) − x̂·mean(ĝ∘x̂)).
template <typename T>
__device__ void layernorm_backward_dx(const T* __restrict__ g, const T* __restrict__ x, const T* __restrict__ w,
                                      const float* __restrict__ mean, const float* __restrict__ rstd, int h,
                                      T* __restrict__ dx) {
    __shared__ float scratch[32];
    const long long base = (long long)blockIdx.x * h;
    const float m = mean[blockIdx.x], r = rstd[blockIdx.x];
    float sum_g = 0.0f, sum_gx = 0.0f;
    for (int j = threadIdx.x; j < h; j += blockDim.x) {
        const float gw = to_float(g[base + j]) * to_float(w[j]);
        sum_g += gw;
        sum_gx += gw * (to_float(x[base + j]) - m) * r;
    }
    const float a = block_sum(sum_g, scratch) / (float)h;
    const float c = block_sum(sum_gx, scratch) / (float)h;
    for (int j = threadIdx.x; j < h; j += blockDim.x) {
        const float xhat = (to_float(x[base + j]) - m) * r;
        dx[base + j] = from_float<T>(r * (to_float(g[base + j]) * to_float(w[j]) - a - xhat * c));
    }
}

// First pass of d_w and d_b: block b covers column block (b % col_blocks) of row chunk (b / col_blocks) and writes
// partial_w[chunk, j] = Σ g·x̂ and partial_b[chunk, j] = Σ g over the chunk's rows, each column summed by one thread
// in row order.
template <typename T>
__device__ void layernorm_backward_dwb_partial(const T* __restrict__ g, const T* __restrict__ x,
                                               const float* __restrict__ mean, const float* __restrict__ rstd,
                                               int rows, int h, int chunk_rows, float* __restrict__ partial_w,
                                               float* __restrict__ partial_b) {
    const int col_blocks = (h + blockDim.x - 1) / blockDim.x;
    const int chunk = blockIdx.x / col_blocks, j = (blockIdx.x % col_blocks) * blockDim.x + threadIdx.x;
    if (j >= h) return;
    const int begin = chunk * chunk_rows, end = min(rows, begin + chunk_rows);
    float acc_w = 0.0f, acc_b = 0.0f;
    for (int row = begin; row < end; ++row) {
        const long long i = (long long)row * h + j;
        const float gv = to_float(g[i]);
        acc_w += gv * (to_float(x[i]) - mean[row]) * rstd[row];
        acc_b += gv;
    }
    partial_w[(long long)chunk * h + j] = acc_w;
    partial_b[(long long)chunk * h + j] = acc_b;
}

// Second pass: d_w[j] = Σ_chunks partial_w[chunk, j] and the same for d_b, in chunk order.
template <typename T>
__device__ void layernorm_backward_dwb_reduce(const float* __restrict__ partial_w, const float* __restrict__ partial_b,
                                              int chunks, int h, T* __restrict__ dw, T* __restrict__ db) {
    for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < h; j += gridDim.x * blockDim.x) {
        float acc_w = 0.0f, acc_b = 0.0f;
        for (int c = 0; c < chunks; ++c) {
            acc_w += partial_w[(long long)c * h + j];
            acc_b += partial_b[(long long)c * h + j];
        }
        dw[j] = from_float<T>(acc_w);
        db[j] = from_float<T>(acc_b);
    }
}

#define INSTANTIATE(T, S)                                                                                        \
    extern "C" __global__ void layernorm_forward_##S(const T* x, const T* w, const T* b, float eps, int h, T* y,  \
                                                     float* mean, float* rstd) {                                 \
        layernorm_forward<T>(x, w, b, eps, h, y, mean, rstd);                                                    \
    }                                                                                                            \
    extern "C" __global__ void layernorm_backward_dx_##S(const T* g, const T* x, const T* w, const float* mean,  \
                                                         const float* rstd, int h, T* dx) {                      \
        layernorm_backward_dx<T>(g, x, w, mean, rstd, h, dx);                                                    \
    }                                                                                                            \
    extern "C" __global__ void layernorm_backward_dwb_partial_##S(const T* g, const T* x, const float* mean,     \
                                                                  const float* rstd, int rows, int h,            \
                                                                  int chunk_rows, float* partial_w,              \
                                                                  float* partial_b) {                            \
        layernorm_backward_dwb_partial<T>(g, x, mean, rstd, rows, h, chunk_rows, partial_w, partial_b);          \
    }                                                                                                            \
    extern "C" __global__ void layernorm_backward_dwb_reduce_##S(const float* partial_w, const float* partial_b, \
                                                                 int chunks, int h, T* dw, T* db) {              \
        layernorm_backward_dwb_reduce<T>(partial_w, partial_b, chunks, h, dw, db);                               \
    }

INSTANTIATE(float, f32)
INSTANTIATE(bf16, bf16)
INSTANTIATE(f16, f16)
