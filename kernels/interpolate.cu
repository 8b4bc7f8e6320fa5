#include "common.cuh"

// Bilinear resizing of channels-last images [N, H, W, C] to [N, H2, W2, C], as torch's interpolate(mode="bilinear",
// align_corners=False) on [N, C, H, W]. The taps are src/ops/interpolate/axis.rs's, bit for bit (__fmul_rn: no
// fused multiply-add in the source coordinate). f32 arithmetic; both taps are read even at a zero weight (NaN
// spreads as in PyTorch). The backward gathers per input element, in a fixed order: deterministic, no atomics.

struct BilinearTap {
    int i0, i1;
    float l0, l1;
};

// Output o of an axis of n_in inputs samples s = max(scale·(o + ½) − ½, 0) between i0 = ⌊s⌋ and min(i0 + 1, n_in − 1);
// an axis of unchanged size is left alone (PyTorch's CPU kernel: no zero-weight read of the next point).
__device__ __forceinline__ BilinearTap bilinear_tap(int o, int n_in, int n_out, float scale) {
    BilinearTap t;
    if (n_in == n_out) {
        t.i0 = t.i1 = o;
        t.l0 = 1.0f;
        t.l1 = 0.0f;
        return t;
    }
    const float s = fmaxf(__fmul_rn(scale, (float)o + 0.5f) - 0.5f, 0.0f);
    const int i0 = min((int)s, n_in - 1);
    const float l1 = fminf(fmaxf(s - (float)i0, 0.0f), 1.0f);
    t.i0 = i0;
    t.i1 = i0 + 1 < n_in ? i0 + 1 : i0;
    t.l0 = 1.0f - l1;
    t.l1 = l1;
    return t;
}

// The first output whose tap reads input k or later (by_i1: i1 >= k) or starts past k (else: i0 > k); n_out if
// none. A binary search: i0 and i1 grow with o. The outputs reading input i are [first(i, i1), first(i, i0)).
__device__ __forceinline__ int bilinear_first_output(int k, bool by_i1, int n_in, int n_out, float scale) {
    int lo = 0, hi = n_out;
    while (lo < hi) {
        const int mid = (lo + hi) / 2;
        const BilinearTap t = bilinear_tap(mid, n_in, n_out, scale);
        if (by_i1 ? t.i1 >= k : t.i0 > k) hi = mid;
        else lo = mid + 1;
    }
    return lo;
}

// l0·a + l1·b for the values at i0, i1; just a when both taps are one point at full weight (an unchanged axis, which
// PyTorch copies: an infinite a stays infinite instead of ∞·0 = NaN). As Tap::mix in axis.rs.
__device__ __forceinline__ float bilinear_mix(BilinearTap t, float a, float b) {
    return t.i0 == t.i1 && t.l1 == 0.0f ? a : t.l0 * a + t.l1 * b;
}

// The weight of input i in tap t (both weights when both taps are i, at the last input).
__device__ __forceinline__ float bilinear_weight(BilinearTap t, int i) {
    return (t.i0 == i ? t.l0 : 0.0f) + (t.i1 == i ? t.l1 : 0.0f);
}

template <typename T>
__device__ void bilinear_forward(const T* __restrict__ x, int n, int h, int w, int c, int h2, int w2, float scale_h,
                                 float scale_w, T* __restrict__ y) {
    const long long total = (long long)n * h2 * w2 * c;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const int ch = (int)(e % c), ow = (int)(e / c % w2), oh = (int)(e / c / w2 % h2);
        const long long b = e / c / w2 / h2;
        const BilinearTap th = bilinear_tap(oh, h, h2, scale_h), tw = bilinear_tap(ow, w, w2, scale_w);
        const T* img = x + b * h * w * c + ch;
        const float x00 = to_float(img[((long long)th.i0 * w + tw.i0) * c]);
        const float x01 = to_float(img[((long long)th.i0 * w + tw.i1) * c]);
        const float x10 = to_float(img[((long long)th.i1 * w + tw.i0) * c]);
        const float x11 = to_float(img[((long long)th.i1 * w + tw.i1) * c]);
        y[e] = from_float<T>(bilinear_mix(th, bilinear_mix(tw, x00, x01), bilinear_mix(tw, x10, x11)));
    }
}

// grad_x at (b, i, j, ch): Σ over the outputs (o, q) whose taps read (i, j) of weight · grad_y, rows then columns
// in ascending order (one contiguous range of outputs per axis).
template <typename T>
__device__ void bilinear_backward(const T* __restrict__ dy, int n, int h, int w, int c, int h2, int w2,
                                  float scale_h, float scale_w, T* __restrict__ dx) {
    const long long total = (long long)n * h * w * c;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const int ch = (int)(e % c), j = (int)(e / c % w), i = (int)(e / c / w % h);
        const long long b = e / c / w / h;
        const int o_begin = bilinear_first_output(i, true, h, h2, scale_h);
        const int o_end = bilinear_first_output(i, false, h, h2, scale_h);
        const int q_begin = bilinear_first_output(j, true, w, w2, scale_w);
        const int q_end = bilinear_first_output(j, false, w, w2, scale_w);
        const T* g = dy + b * h2 * w2 * c + ch;
        float acc = 0.0f;
        for (int o = o_begin; o < o_end; ++o) {
            const float wh = bilinear_weight(bilinear_tap(o, h, h2, scale_h), i);
            for (int q = q_begin; q < q_end; ++q) {
                const float ww = bilinear_weight(bilinear_tap(q, w, w2, scale_w), j);
                acc += wh * ww * to_float(g[((long long)o * w2 + q) * c]);
            }
        }
        dx[e] = from_float<T>(acc);
    }
}

#define INSTANTIATE(T, S)                                                                                        \
    extern "C" __global__ void bilinear_forward_##S(const T* x, int n, int h, int w, int c, int h2, int w2,      \
                                                    float scale_h, float scale_w, T* y) {                        \
        bilinear_forward<T>(x, n, h, w, c, h2, w2, scale_h, scale_w, y);                                         \
    }                                                                                                            \
    extern "C" __global__ void bilinear_backward_##S(const T* dy, int n, int h, int w, int c, int h2, int w2,    \
                                                     float scale_h, float scale_w, T* dx) {                      \
        bilinear_backward<T>(dy, n, h, w, c, h2, w2, scale_h, scale_w, dx);                                      \
    }

INSTANTIATE(float, f32)
INSTANTIATE(bf16, bf16)
INSTANTIATE(f16, f16)
