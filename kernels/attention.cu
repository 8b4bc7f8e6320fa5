#include "common.cuh"

// Grouped-query attention with a key padding mask, flash style: no [T,T] matrix ever reaches global memory.
// Layouts: q, out, grad_out [N,T,Hq,d]; k, v [N,T,Hkv,d]; mask [N,T] (int, 0 = padding); lse, delta [N,Hq,T] f32.
// `causal` (0 or 1, uniform over the grid): query i sees key j only when j ≤ i; else every real key.
//
// Every tiled kernel runs blocks of WARPS warps; each warp owns ROWS rows (query rows in the forward and the dq pass,
// key rows in the dk/dv pass) and each lane owns the columns c = lane + 32·u, u < COLS, of those rows, so d ≤ 128.
// Dot products are warp reductions (several at once, see warp_sums); the softmax is online (forward) or recomputed
// from the saved logsumexp (backward). Branches on row or key validity depend only on warp-uniform values, so
// shuffles are never divergent. Accumulation is f32 in a fixed order: results are deterministic, with no atomics.

#define WARPS 4
#define ROWS 4
#define COLS 4
#define TILE (WARPS * ROWS)

struct Sizes {
    int t, hq, hkv, d;
};

// Element offset of row i of head h in sequence n of a [N,T,heads,d] tensor.
__device__ __forceinline__ long long row_offset(int n, int i, int h, int t, int heads, int d) {
    return (((long long)n * t + i) * heads + h) * d;
}

// Loads the lane's columns of one row (zero past d), times `scale`.
template <typename T>
__device__ __forceinline__ void load_row(const T* __restrict__ src, long long offset, int d, float scale,
                                         float (&dst)[COLS]) {
    const int lane = threadIdx.x % WARP_SIZE;
#pragma unroll
    for (int u = 0; u < COLS; ++u) {
        const int c = lane + WARP_SIZE * u;
        dst[u] = c < d ? to_float(src[offset + c]) * scale : 0.0f;
    }
}

template <typename T>
__device__ __forceinline__ void store_row(T* __restrict__ dst, long long offset, int d, const float (&src)[COLS],
                                          float scale) {
    const int lane = threadIdx.x % WARP_SIZE;
#pragma unroll
    for (int u = 0; u < COLS; ++u) {
        const int c = lane + WARP_SIZE * u;
        if (c < d) dst[offset + c] = from_float<T>(src[u] * scale);
    }
}

// The lane's share of a row dot product (its columns only).
__device__ __forceinline__ float lane_dot(const float (&a)[COLS], const float (&b)[COLS]) {
    float s = 0.0f;
#pragma unroll
    for (int u = 0; u < COLS; ++u) s += a[u] * b[u];
    return s;
}

// Sums NV values over the warp; afterwards every lane holds the NV totals in `a`. A butterfly halves the values
// per step (lane bit `offset` picks which half a lane keeps), then the remaining offsets finish lane r·32/NV's
// total of value r, which is broadcast: NV − 1 + log2(32/NV) + NV shuffles instead of NV full reductions (5·NV).
template <int NV>
__device__ __forceinline__ void warp_sums(float (&a)[NV]) {
    const int lane = threadIdx.x % WARP_SIZE;
    int offset = WARP_SIZE / 2;
#pragma unroll
    for (int cur = NV; cur > 1; cur /= 2, offset /= 2) {
        const bool upper = (lane & offset) != 0;
#pragma unroll
        for (int k = 0; k < cur / 2; ++k) {
            const float send = upper ? a[k] : a[k + cur / 2];
            const float keep = upper ? a[k + cur / 2] : a[k];
            a[k] = keep + __shfl_xor_sync(FULL_MASK, send, offset);
        }
    }
    float s = a[0];
#pragma unroll
    for (; offset > 0; offset /= 2) s += __shfl_xor_sync(FULL_MASK, s, offset);
#pragma unroll
    for (int r = 0; r < NV; ++r) a[r] = __shfl_sync(FULL_MASK, s, r * (WARP_SIZE / NV));
}

// Block b → (n, head, tile) with tiles of TILE rows over T.
__device__ __forceinline__ void decode_block(int t, int heads, int& n, int& h, int& tile) {
    const int tiles = (t + TILE - 1) / TILE;
    tile = blockIdx.x % tiles;
    const int rest = blockIdx.x / tiles;
    h = rest % heads;
    n = rest / heads;
}

// Forward: one block per (n, query head, tile of TILE queries); keys stream through with an online softmax.
template <typename T>
__device__ void attention_forward(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                  const int* __restrict__ mask, Sizes z, int causal, float scale,
                                  T* __restrict__ out, float* __restrict__ lse) {
    int n, h, tile;
    decode_block(z.t, z.hq, n, h, tile);
    const int warp = threadIdx.x / WARP_SIZE, first = tile * TILE + warp * ROWS, g = h / (z.hq / z.hkv);
    if (first >= z.t) return;
    float qr[ROWS][COLS], o[ROWS][COLS], m[ROWS], l[ROWS];
    bool real[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        const int i = first + r;
        real[r] = i < z.t && mask[(long long)n * z.t + i] != 0;
        load_row(q, row_offset(n, min(i, z.t - 1), h, z.t, z.hq, z.d), z.d, scale, qr[r]);
        m[r] = NEG_INF;
        l[r] = 0.0f;
#pragma unroll
        for (int u = 0; u < COLS; ++u) o[r][u] = 0.0f;
    }
    const int last = causal ? min(z.t - 1, first + ROWS - 1) : z.t - 1;
    for (int j = 0; j <= last; ++j) {
        if (mask[(long long)n * z.t + j] == 0) continue;
        float kr[COLS], vr[COLS];
        load_row(k, row_offset(n, j, g, z.t, z.hkv, z.d), z.d, 1.0f, kr);
        load_row(v, row_offset(n, j, g, z.t, z.hkv, z.d), z.d, 1.0f, vr);
        float scores[ROWS];
#pragma unroll
        for (int r = 0; r < ROWS; ++r) scores[r] = lane_dot(qr[r], kr);
        warp_sums(scores);
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
            if (!real[r] || (causal && j > first + r)) continue;
            const float s = scores[r];
            const float m_new = fmaxf(m[r], s), correction = __expf(m[r] - m_new), p = __expf(s - m_new);
            l[r] = l[r] * correction + p;
#pragma unroll
            for (int u = 0; u < COLS; ++u) o[r][u] = o[r][u] * correction + p * vr[u];
            m[r] = m_new;
        }
    }
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        const int i = first + r;
        if (i >= z.t) continue;
        // A real query always sees itself, so l > 0; padding queries output zeros and a logsumexp of 0.
        store_row(out, row_offset(n, i, h, z.t, z.hq, z.d), z.d, o[r], real[r] ? 1.0f / l[r] : 0.0f);
        if (threadIdx.x % WARP_SIZE == 0)
            lse[((long long)n * z.hq + h) * z.t + i] = real[r] ? m[r] + __logf(l[r]) : 0.0f;
    }
}

// delta[n, h, i] = Σ_c grad_out·out over the row: one warp per (n, i, h) row, grid-stride over rows.
template <typename T>
__device__ void attention_backward_delta(const T* __restrict__ grad_out, const T* __restrict__ out, long long rows,
                                         Sizes z, float* __restrict__ delta) {
    const int lane = threadIdx.x % WARP_SIZE, warps_per_block = blockDim.x / WARP_SIZE;
    for (long long row = (long long)blockIdx.x * warps_per_block + threadIdx.x / WARP_SIZE; row < rows;
         row += (long long)gridDim.x * warps_per_block) {
        float s = 0.0f;
        for (int c = lane; c < z.d; c += WARP_SIZE)
            s += to_float(grad_out[row * z.d + c]) * to_float(out[row * z.d + c]);
        s = warp_sum(s);
        const long long h = row % z.hq, ni = row / z.hq, i = ni % z.t, n = ni / z.t;
        if (lane == 0) delta[(n * z.hq + h) * z.t + i] = s;
    }
}

// dq: one block per (n, query head, tile of TILE queries); keys stream through, probabilities recomputed from lse.
// dq_i = scale · Σ_j p_ij (dp_ij − delta_i) k_j with dp_ij = grad_out_i · v_j.
template <typename T>
__device__ void attention_backward_dq(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                      const T* __restrict__ grad_out, const int* __restrict__ mask,
                                      const float* __restrict__ lse, const float* __restrict__ delta, Sizes z,
                                      int causal, float scale, T* __restrict__ dq) {
    int n, h, tile;
    decode_block(z.t, z.hq, n, h, tile);
    const int warp = threadIdx.x / WARP_SIZE, first = tile * TILE + warp * ROWS, g = h / (z.hq / z.hkv);
    if (first >= z.t) return;
    float qr[ROWS][COLS], gr[ROWS][COLS], acc[ROWS][COLS], l[ROWS], dl[ROWS];
    bool real[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        const int i = min(first + r, z.t - 1);
        real[r] = first + r < z.t && mask[(long long)n * z.t + i] != 0;
        load_row(q, row_offset(n, i, h, z.t, z.hq, z.d), z.d, scale, qr[r]);
        load_row(grad_out, row_offset(n, i, h, z.t, z.hq, z.d), z.d, 1.0f, gr[r]);
        l[r] = lse[((long long)n * z.hq + h) * z.t + i];
        dl[r] = delta[((long long)n * z.hq + h) * z.t + i];
#pragma unroll
        for (int u = 0; u < COLS; ++u) acc[r][u] = 0.0f;
    }
    const int last = causal ? min(z.t - 1, first + ROWS - 1) : z.t - 1;
    for (int j = 0; j <= last; ++j) {
        if (mask[(long long)n * z.t + j] == 0) continue;
        float kr[COLS], vr[COLS];
        load_row(k, row_offset(n, j, g, z.t, z.hkv, z.d), z.d, 1.0f, kr);
        load_row(v, row_offset(n, j, g, z.t, z.hkv, z.d), z.d, 1.0f, vr);
        // Scores q·k in [0, ROWS), dp = grad_out·v in [ROWS, 2·ROWS).
        float dots[2 * ROWS];
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
            dots[r] = lane_dot(qr[r], kr);
            dots[ROWS + r] = lane_dot(gr[r], vr);
        }
        warp_sums(dots);
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
            if (!real[r] || (causal && j > first + r)) continue;
            const float p = __expf(dots[r] - l[r]);
            const float ds = p * (dots[ROWS + r] - dl[r]);
#pragma unroll
            for (int u = 0; u < COLS; ++u) acc[r][u] += ds * kr[u];
        }
    }
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        if (first + r < z.t) store_row(dq, row_offset(n, first + r, h, z.t, z.hq, z.d), z.d, acc[r], scale);
    }
}

// dk, dv partials: one block per (n, query head h, tile of TILE keys of h's KV head); the queries of head h stream
// through. dv_j += Σ_i p_ij grad_out_i, dk_j += scale · Σ_i p_ij (dp_ij − delta_i) q_i, written in f32 per query
// head ([N,T,Hq,d]) so that every head of a group runs in parallel; the reduce kernel sums the group in order.
template <typename T>
__device__ void attention_backward_dkv(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                       const T* __restrict__ grad_out, const int* __restrict__ mask,
                                       const float* __restrict__ lse, const float* __restrict__ delta, Sizes z,
                                       int causal, float scale, float* __restrict__ dk_part,
                                       float* __restrict__ dv_part) {
    int n, h, tile;
    decode_block(z.t, z.hq, n, h, tile);
    const int warp = threadIdx.x / WARP_SIZE, first = tile * TILE + warp * ROWS, g = h / (z.hq / z.hkv);
    if (first >= z.t) return;
    float kr[ROWS][COLS], vr[ROWS][COLS], dk_acc[ROWS][COLS], dv_acc[ROWS][COLS];
    bool real[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        const int j = min(first + r, z.t - 1);
        real[r] = first + r < z.t && mask[(long long)n * z.t + j] != 0;
        load_row(k, row_offset(n, j, g, z.t, z.hkv, z.d), z.d, 1.0f, kr[r]);
        load_row(v, row_offset(n, j, g, z.t, z.hkv, z.d), z.d, 1.0f, vr[r]);
#pragma unroll
        for (int u = 0; u < COLS; ++u) dk_acc[r][u] = dv_acc[r][u] = 0.0f;
    }
    for (int i = causal ? first : 0; i < z.t; ++i) {
        if (mask[(long long)n * z.t + i] == 0) continue;
        float qr[COLS], gr[COLS];
        load_row(q, row_offset(n, i, h, z.t, z.hq, z.d), z.d, scale, qr);
        load_row(grad_out, row_offset(n, i, h, z.t, z.hq, z.d), z.d, 1.0f, gr);
        const float l = lse[((long long)n * z.hq + h) * z.t + i], dl = delta[((long long)n * z.hq + h) * z.t + i];
        // Scores q·k in [0, ROWS), dp = grad_out·v in [ROWS, 2·ROWS), one per key of the warp.
        float dots[2 * ROWS];
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
            dots[r] = lane_dot(qr, kr[r]);
            dots[ROWS + r] = lane_dot(gr, vr[r]);
        }
        warp_sums(dots);
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
            if (!real[r] || (causal && first + r > i)) continue;
            const float p = __expf(dots[r] - l);
            const float ds = p * (dots[ROWS + r] - dl);
#pragma unroll
            for (int u = 0; u < COLS; ++u) {
                dv_acc[r][u] += p * gr[u];
                dk_acc[r][u] += ds * qr[u];
            }
        }
    }
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        if (first + r >= z.t) continue;
        const long long offset = row_offset(n, first + r, h, z.t, z.hq, z.d);
        store_row(dk_part, offset, z.d, dk_acc[r], 1.0f);
        store_row(dv_part, offset, z.d, dv_acc[r], 1.0f);
    }
}

// dk[n, j, g, c] = Σ_{h of group g, in order} dk_part[n, j, h, c], and the same for dv; grid-stride over N·T·Hkv·d.
template <typename T>
__device__ void attention_backward_dkv_reduce(const float* __restrict__ dk_part, const float* __restrict__ dv_part,
                                              long long total, Sizes z, T* __restrict__ dk, T* __restrict__ dv) {
    const int group = z.hq / z.hkv;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        const long long c = idx % z.d, rest = idx / z.d, g = rest % z.hkv, nj = rest / z.hkv;
        float sk = 0.0f, sv = 0.0f;
        for (long long h = g * group; h < (g + 1) * group; ++h) {
            const long long from = (nj * z.hq + h) * z.d + c;
            sk += dk_part[from];
            sv += dv_part[from];
        }
        dk[idx] = from_float<T>(sk);
        dv[idx] = from_float<T>(sv);
    }
}

#define TILED __launch_bounds__(WARPS * WARP_SIZE, 4)
#define SIZES int t, int hq, int hkv, int d
#define INSTANTIATE(T, S)                                                                                        \
    extern "C" __global__ void TILED attention_forward_##S(const T* q, const T* k, const T* v, const int* mask,  \
                                                           SIZES, int causal, float scale, T* out, float* lse) { \
        attention_forward<T>(q, k, v, mask, Sizes{t, hq, hkv, d}, causal, scale, out, lse);                      \
    }                                                                                                            \
    extern "C" __global__ void attention_backward_delta_##S(const T* grad_out, const T* out, long long rows,     \
                                                            SIZES, float* delta) {                               \
        attention_backward_delta<T>(grad_out, out, rows, Sizes{t, hq, hkv, d}, delta);                           \
    }                                                                                                            \
    extern "C" __global__ void TILED attention_backward_dq_##S(const T* q, const T* k, const T* v,               \
                                                               const T* grad_out, const int* mask,               \
                                                               const float* lse, const float* delta, SIZES,      \
                                                               int causal, float scale, T* dq) {                 \
        attention_backward_dq<T>(q, k, v, grad_out, mask, lse, delta, Sizes{t, hq, hkv, d}, causal, scale, dq);  \
    }                                                                                                            \
    extern "C" __global__ void TILED attention_backward_dkv_##S(const T* q, const T* k, const T* v,              \
                                                                const T* grad_out, const int* mask,              \
                                                                const float* lse, const float* delta, SIZES,     \
                                                                int causal, float scale, float* dk_part,         \
                                                                float* dv_part) {                                \
        attention_backward_dkv<T>(q, k, v, grad_out, mask, lse, delta, Sizes{t, hq, hkv, d}, causal, scale,      \
                                  dk_part, dv_part);                                                             \
    }                                                                                                            \
    extern "C" __global__ void attention_backward_dkv_reduce_##S(const float* dk_part, const float* dv_part,     \
                                                                 long long total, SIZES, T* dk, T* dv) {         \
        attention_backward_dkv_reduce<T>(dk_part, dv_part, total, Sizes{t, hq, hkv, d}, dk, dv);                 \
    }

INSTANTIATE(float, f32)
INSTANTIATE(bf16, bf16)
INSTANTIATE(f16, f16)

// ---- KV-cache attention for generation (forward only) ----
// q, out [N,Tq,Hq,d]; k, v caches [N,S,Hkv,d]; key mask [N,S] (int or long long per `mask_i64`, 0 = empty slot);
// start[n] = the cache slot of query 0 of sequence n (start[n] + Tq ≤ S, checked by the caller). Query i of
// sequence n sits at slot start[n] + i and sees key j iff j ≤ that slot and slot j is real.

struct CachedSizes {
    int tq, s, hq, hkv, d;
};

__device__ __forceinline__ bool slot_real(const void* mask, int mask_i64, long long idx) {
    return mask_i64 ? ((const long long*)mask)[idx] != 0 : ((const int*)mask)[idx] != 0;
}

// One block of WARPS warps per (n, query, query head). Warp w takes keys w·ROWS.. in chunks of ROWS, a stride of
// TILE, with its own online softmax (ROWS dot products reduced together); the warps' states (max, sum, weighted
// values) merge through shared memory. Whether a key is seen depends only on the warp's key index, so the shuffles
// never diverge. A query that sees no key outputs zeros.
template <typename T>
__device__ void attention_cached(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                 const void* __restrict__ mask, int mask_i64, const long long* __restrict__ start,
                                 CachedSizes z, float scale, T* __restrict__ out) {
    __shared__ float part_o[WARPS][WARP_SIZE * COLS];
    __shared__ float part_m[WARPS], part_l[WARPS];
    const int h = blockIdx.x % z.hq, i = blockIdx.x / z.hq % z.tq, n = blockIdx.x / z.hq / z.tq;
    const int warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE, g = h / (z.hq / z.hkv);
    const long long slot = start[n] + i;
    float qr[COLS], o[COLS], m = NEG_INF, l = 0.0f;
    load_row(q, row_offset(n, i, h, z.tq, z.hq, z.d), z.d, scale, qr);
#pragma unroll
    for (int u = 0; u < COLS; ++u) o[u] = 0.0f;
    for (long long first = warp * ROWS; first <= slot; first += TILE) {
        bool seen[ROWS];
        float scores[ROWS];
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
            const long long j = first + r;
            seen[r] = j <= slot && slot_real(mask, mask_i64, (long long)n * z.s + j);
            float kr[COLS];
            if (seen[r]) {
                load_row(k, row_offset(n, (int)j, g, z.s, z.hkv, z.d), z.d, 1.0f, kr);
            } else {
#pragma unroll
                for (int u = 0; u < COLS; ++u) kr[u] = 0.0f;
            }
            scores[r] = lane_dot(qr, kr);
        }
        warp_sums(scores);
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
            if (!seen[r]) continue;
            float vr[COLS];
            load_row(v, row_offset(n, (int)(first + r), g, z.s, z.hkv, z.d), z.d, 1.0f, vr);
            const float m_new = fmaxf(m, scores[r]), correction = __expf(m - m_new), p = __expf(scores[r] - m_new);
            l = l * correction + p;
#pragma unroll
            for (int u = 0; u < COLS; ++u) o[u] = o[u] * correction + p * vr[u];
            m = m_new;
        }
    }
#pragma unroll
    for (int u = 0; u < COLS; ++u) part_o[warp][lane + WARP_SIZE * u] = o[u];
    if (lane == 0) {
        part_m[warp] = m;
        part_l[warp] = l;
    }
    __syncthreads();
    if (warp != 0) return;
    float top = NEG_INF;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) top = fmaxf(top, part_m[w]);
    float total = 0.0f;
#pragma unroll
    for (int u = 0; u < COLS; ++u) o[u] = 0.0f;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) {
        // A warp that saw no key has m = −inf and contributes nothing (also when no warp saw one).
        const float f = part_m[w] == NEG_INF ? 0.0f : __expf(part_m[w] - top);
        total += part_l[w] * f;
#pragma unroll
        for (int u = 0; u < COLS; ++u) o[u] += part_o[w][lane + WARP_SIZE * u] * f;
    }
    store_row(out, row_offset(n, i, h, z.tq, z.hq, z.d), z.d, o, total > 0.0f ? 1.0f / total : 0.0f);
}

// cache[n, start[n] + i, :] = src[b, i, :] with b = n, or 0 when `broadcast`; rows of `row` = H·d elements;
// grid-stride over the N·Tq·row = `total` written elements.
template <typename T>
__device__ void kv_cache_write(T* __restrict__ cache, const T* __restrict__ src, const long long* __restrict__ start,
                               long long total, int tq, int s, int row, int broadcast) {
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        const long long c = idx % row, ni = idx / row, i = ni % tq, n = ni / tq;
        const long long from = ((broadcast ? 0 : n) * tq + i) * row + c;
        cache[((n * s + start[n] + i) * row) + c] = src[from];
    }
}

#define INSTANTIATE_CACHED(T, S)                                                                                 \
    extern "C" __global__ void TILED attention_cached_##S(const T* q, const T* k, const T* v, const void* mask,  \
                                                          int mask_i64, const long long* start, int tq, int s,   \
                                                          int hq, int hkv, int d, float scale, T* out) {         \
        attention_cached<T>(q, k, v, mask, mask_i64, start, CachedSizes{tq, s, hq, hkv, d}, scale, out);         \
    }                                                                                                            \
    extern "C" __global__ void kv_cache_write_##S(T* cache, const T* src, const long long* start,                \
                                                  long long total, int tq, int s, int row, int broadcast) {      \
        kv_cache_write<T>(cache, src, start, total, tq, s, row, broadcast);                                      \
    }

INSTANTIATE_CACHED(float, f32)
INSTANTIATE_CACHED(bf16, bf16)
INSTANTIATE_CACHED(f16, f16)
