#include "common.cuh"

// The optimizer's kernels, each one launch over every trainable parameter (multi-tensor style): the host lists the
// parameters as `TensorSlot`s and cuts them into chunks of at most CHUNK elements; block b works on chunk b. The
// moments, the fp32 master weights of bf16/f16 parameters and the gradient accumulator are flat fp32 buffers, each
// parameter at its slot's `offset` (or `master_offset`), so one kernel argument reaches every tensor's state.

#define CHUNK 32768

// Storage dtypes, as the host numbers them.
#define DT_F32 0
#define DT_BF16 1
#define DT_F16 2

// One parameter (64 bytes; the host writes the same layout).
struct TensorSlot {
    u64 param;              // the parameter's storage (param_dtype)
    u64 grad;               // its gradient (grad_dtype): the model's buffer or a slice of the accumulator
    long long offset;       // first element in the moment (and accumulator) buffers
    long long numel;
    long long master_offset;  // first element in the master buffer; -1 for an f32 parameter (its own master)
    float lr;               // the group's learning rate times the schedule's factor
    float weight_decay;
    int param_dtype;
    int grad_dtype;
    long long pad;
};

// A chunk: elements [start, start + CHUNK) ∩ [0, numel) of slot `slot`.
struct Chunk {
    long long slot;
    long long start;
};

__device__ __forceinline__ long long chunk_end(Chunk c, const TensorSlot& s) {
    return c.start + CHUNK < s.numel ? c.start + CHUNK : s.numel;
}

__device__ __forceinline__ float load_any(u64 base, int dtype, long long i) {
    if (dtype == DT_BF16) return to_float(((const bf16*)base)[i]);
    if (dtype == DT_F16) return to_float(((const f16*)base)[i]);
    return ((const float*)base)[i];
}

__device__ __forceinline__ void store_any(u64 base, int dtype, long long i, float x) {
    if (dtype == DT_BF16) ((bf16*)base)[i] = from_float<bf16>(x);
    else if (dtype == DT_F16) ((f16*)base)[i] = from_float<f16>(x);
    else ((float*)base)[i] = x;
}

// torch.optim.AdamW (single-tensor formulas, fp32), with the gradient times `grad_weight` (rounded to f32: a
// micro-batch's weight, so that a step on its gradients equals one on the accumulator holding them; 1 otherwise)
// times `grad_scale` (clipping coefficient times the accumulation's normalisation; 1 − β1 and 1 − β2 come from the host, computed in double as PyTorch
// does): p ← p·(1 − lr·wd); m ← m + (1 − β1)(g − m); v ← β2·v + (1 − β2)·g²;
// p ← p − (lr / bc1) · m / (√v / √bc2 + ε). bf16/f16 parameters update their fp32 master and store it rounded.
extern "C" __global__ void adamw_step(const TensorSlot* __restrict__ slots, const Chunk* __restrict__ chunks,
                                      float* __restrict__ exp_avg, float* __restrict__ exp_avg_sq,
                                      float* __restrict__ master, float grad_weight, float grad_scale,
                                      float one_minus_beta1,
                                      float beta2, float one_minus_beta2, float eps, float bias_correction1,
                                      float bias_correction2_sqrt) {
    const Chunk chunk = chunks[blockIdx.x];
    const TensorSlot s = slots[chunk.slot];
    const long long end = chunk_end(chunk, s);
    const float step_size = s.lr / bias_correction1;
    const float decay = 1.0f - s.lr * s.weight_decay;
    float* m = exp_avg + s.offset;
    float* v = exp_avg_sq + s.offset;
    for (long long i = chunk.start + threadIdx.x; i < end; i += blockDim.x) {
        const float weighted = grad_weight * load_any(s.grad, s.grad_dtype, i);
        const float g = weighted * grad_scale;
        float p = s.master_offset >= 0 ? master[s.master_offset + i] : ((const float*)s.param)[i];
        p *= decay;
        const float mi = m[i] + one_minus_beta1 * (g - m[i]);
        const float vi = beta2 * v[i] + one_minus_beta2 * g * g;
        m[i] = mi;
        v[i] = vi;
        p -= step_size * mi / (sqrtf(vi) / bias_correction2_sqrt + eps);
        if (s.master_offset >= 0) master[s.master_offset + i] = p;
        store_any(s.param, s.param_dtype, i, p);
    }
}

// partial[b] = Σ (weight·g)² over chunk b (weight·g rounded to f32 first, as adamw_step weighs it; not scaled),
// summed in fp32 by the block; the host adds the partials in f64.
extern "C" __global__ void grad_sq_norm(const TensorSlot* __restrict__ slots, const Chunk* __restrict__ chunks,
                                        float weight, float* __restrict__ partial) {
    __shared__ float scratch[32];
    const Chunk chunk = chunks[blockIdx.x];
    const TensorSlot s = slots[chunk.slot];
    const long long end = chunk_end(chunk, s);
    float acc = 0.0f;
    for (long long i = chunk.start + threadIdx.x; i < end; i += blockDim.x) {
        const float g = weight * load_any(s.grad, s.grad_dtype, i);
        acc += g * g;
    }
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// acc[offset + i] += weight · g[i]: adds a micro-batch's gradients into the fp32 accumulator (and, with weight 1
// into a zeroed buffer, copies bf16/f16 parameters into their fp32 masters).
extern "C" __global__ void accumulate_grads(const TensorSlot* __restrict__ slots, const Chunk* __restrict__ chunks,
                                            float* __restrict__ acc, float weight) {
    const Chunk chunk = chunks[blockIdx.x];
    const TensorSlot s = slots[chunk.slot];
    const long long end = chunk_end(chunk, s);
    float* a = acc + s.offset;
    for (long long i = chunk.start + threadIdx.x; i < end; i += blockDim.x) {
        a[i] += weight * load_any(s.grad, s.grad_dtype, i);
    }
}
