//! CUDA attention: `kernels/attention.cu`. Forward: one flash-style kernel (online softmax over streamed keys).
//! Backward: `delta = rowsum(grad_out ∘ out)`, then a dq pass over query tiles, a dk/dv pass over key tiles per
//! query head into f32 partials, and a pass that sums each KV group's partials in order (no atomics).

use super::{AttentionOutput, Outputs, Plan, KERNELS};
use crate::ops::launch::{self, backend_of, check_i32, elementwise, ptr};
use crate::runtime::cuda::{launch_config, PushKernelArg};
use crate::runtime::{DType, Tensor};
use crate::{Error, Result};

/// Rows per block of the tiled kernels (WARPS · ROWS in the kernel file) and threads per block.
const TILE: usize = 16;
const BLOCK_THREADS: u32 = 128;
/// The largest head dimension the kernels hold in registers (32 lanes × COLS).
const MAX_HEAD_DIM: usize = 128;

/// Kernel arguments shared by the tiled kernels.
struct Setup {
    /// t, hq, hkv, d.
    sizes: [i32; 4],
    /// 1 for causal masking, 0 for bidirectional.
    causal: i32,
    scale: f32,
    /// The padding mask on the device, as i32 0/1.
    mask: Tensor,
}

/// Checks the CUDA limits and dtypes; returns the kernel arguments.
fn setup(p: &Plan, q: &Tensor, others: &[(&'static str, &Tensor)]) -> Result<Setup> {
    if p.d > MAX_HEAD_DIM {
        return Err(Error::Shape(format!(
            "the CUDA attention kernels take head dims up to {MAX_HEAD_DIM}, got {}",
            p.d
        )));
    }
    for (name, t) in others {
        if t.dtype() != q.dtype() {
            return Err(Error::DType {
                arg: name,
                got: t.dtype(),
                expected: format!("the dtype of `q` ({}) on CUDA", q.dtype()),
            });
        }
    }
    let sizes = [check_i32("T", p.t)?, check_i32("Hq", p.hq)?, check_i32("Hkv", p.hkv)?, check_i32("d", p.d)?];
    check_i32("N·Hq·T", p.n * p.hq * p.t)?;
    let mask: Vec<i32> = p.valid.iter().map(|&v| i32::from(v)).collect();
    let mask = Tensor::from_slice(&mask, &[mask.len()], p.device)?;
    Ok(Setup { sizes, causal: i32::from(p.causal), scale: p.scale(), mask })
}

/// Blocks of the tiled kernels: one per (n, head, tile of TILE rows).
fn tiled_blocks(p: &Plan, heads: usize) -> usize {
    p.n * heads * p.t.div_ceil(TILE)
}

pub(super) fn forward(q: &Tensor, k: &Tensor, v: &Tensor, p: &Plan, out: &mut Tensor, lse: &mut Tensor) -> Result<()> {
    let Setup { sizes, causal, scale, mask } = setup(p, q, &[("k", k), ("v", v)])?;
    let (backend, dtype) = (backend_of(q)?, q.dtype());
    let f = launch::kernel(&backend, &KERNELS, "attention_forward", dtype)?;
    let ins = [ptr(q)?, ptr(k)?, ptr(v)?, ptr(&mask)?];
    let outs = [ptr(out)?, ptr(lse)?];
    let mut b = backend.stream().launch_builder(&f);
    ins.iter().for_each(|a| {
        b.arg(a);
    });
    sizes.iter().for_each(|s| {
        b.arg(s);
    });
    b.arg(&causal).arg(&scale);
    outs.iter().for_each(|a| {
        b.arg(a);
    });
    // SAFETY: attention_forward_<T>(const T* ×3, const int*, int ×5, float, T*, float*): one block of
    // BLOCK_THREADS per (n, head, tile); q and out hold N·T·Hq·d elements of T, k and v N·T·Hkv·d, the mask N·T
    // ints, lse N·Hq·T floats; d ≤ 128 = 32 lanes × COLS.
    unsafe { b.launch(launch_config(tiled_blocks(p, p.hq), BLOCK_THREADS, 0)?) }?;
    Ok(())
}

pub(super) fn backward(
    grad_out: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    saved: &AttentionOutput,
    p: &Plan,
    out: Outputs<'_>,
) -> Result<()> {
    let others = [("k", k), ("v", v), ("grad_out", grad_out), ("saved.out", &saved.out)];
    let Setup { sizes, causal, scale, mask } = setup(p, q, &others)?;
    let (backend, dtype) = (backend_of(q)?, q.dtype());

    let delta = Tensor::zeros(&[p.n, p.hq, p.t], DType::F32, p.device)?;
    let rows = (p.n * p.t * p.hq) as i64;
    let f = launch::kernel(&backend, &KERNELS, "attention_backward_delta", dtype)?;
    let (g_p, o_p, delta_p) = (ptr(grad_out)?, ptr(&saved.out)?, ptr(&delta)?);
    let mut b = backend.stream().launch_builder(&f);
    b.arg(&g_p).arg(&o_p).arg(&rows);
    sizes.iter().for_each(|s| {
        b.arg(s);
    });
    b.arg(&delta_p);
    // SAFETY: attention_backward_delta_<T>(const T* ×2, long long, int ×4, float*): one warp per row, grid-stride;
    // grad_out and out hold `rows`·d elements of T, delta N·Hq·T = `rows` floats.
    unsafe { b.launch(elementwise(p.n * p.t * p.hq * 32)?) }?;

    let ins = [ptr(q)?, ptr(k)?, ptr(v)?, g_p, ptr(&mask)?, ptr(&saved.lse)?, delta_p];
    let dq_p = ptr(out.grad_q)?;
    let f = launch::kernel(&backend, &KERNELS, "attention_backward_dq", dtype)?;
    let mut b = backend.stream().launch_builder(&f);
    ins.iter().for_each(|a| {
        b.arg(a);
    });
    sizes.iter().for_each(|s| {
        b.arg(s);
    });
    b.arg(&causal).arg(&scale).arg(&dq_p);
    // SAFETY: attention_backward_dq_<T>(const T* ×4, const int*, const float* ×2, int ×5, float, T*): one block per
    // (n, query head, tile); sizes as in the forward, lse and delta hold N·Hq·T floats, dq N·T·Hq·d elements of T.
    unsafe { b.launch(launch_config(tiled_blocks(p, p.hq), BLOCK_THREADS, 0)?) }?;

    // dk, dv per query head in f32 (every head of a group in parallel), then summed over each group in order.
    let dk_part = Tensor::zeros(q.shape(), DType::F32, p.device)?;
    let dv_part = Tensor::zeros(q.shape(), DType::F32, p.device)?;
    let (dk_part_p, dv_part_p) = (ptr(&dk_part)?, ptr(&dv_part)?);
    let f = launch::kernel(&backend, &KERNELS, "attention_backward_dkv", dtype)?;
    let mut b = backend.stream().launch_builder(&f);
    ins.iter().for_each(|a| {
        b.arg(a);
    });
    sizes.iter().for_each(|s| {
        b.arg(s);
    });
    b.arg(&causal).arg(&scale).arg(&dk_part_p).arg(&dv_part_p);
    // SAFETY: attention_backward_dkv_<T>(const T* ×4, const int*, const float* ×2, int ×5, float, float* ×2): one
    // block per (n, query head, tile of keys); the partials hold N·T·Hq·d floats, the rest as in the dq pass.
    unsafe { b.launch(launch_config(tiled_blocks(p, p.hq), BLOCK_THREADS, 0)?) }?;

    let (dk_p, dv_p, total) = (ptr(out.grad_k)?, ptr(out.grad_v)?, k.numel() as i64);
    let f = launch::kernel(&backend, &KERNELS, "attention_backward_dkv_reduce", dtype)?;
    let mut b = backend.stream().launch_builder(&f);
    b.arg(&dk_part_p).arg(&dv_part_p).arg(&total);
    sizes.iter().for_each(|s| {
        b.arg(s);
    });
    b.arg(&dk_p).arg(&dv_p);
    // SAFETY: attention_backward_dkv_reduce_<T>(const float* ×2, long long, int ×4, T* ×2): grid-stride over the
    // N·T·Hkv·d = `total` elements of dk and dv; each reads the group's Hq/Hkv partials, inside N·T·Hq·d.
    unsafe { b.launch(elementwise(k.numel())?) }?;
    Ok(())
}
