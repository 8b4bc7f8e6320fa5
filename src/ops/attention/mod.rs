//! Grouped-query self-attention with a padding mask: `q` `[N,T,Hq,d]` attends `k`, `v` `[N,T,Hkv,d]` (query head h
//! reads KV head h / (Hq/Hkv)), softmax scale 1/sqrt(d). Query i sees key j when `attention_mask[n, j] ≠ 0` and,
//! under [`Masking::Causal`] (Qwen2's decoder), j ≤ i; under [`Masking::Bidirectional`] (SigLIP's encoder) every
//! real key. Queries at padding positions (mask 0) output zeros. The forward also returns the per-row logsumexp of
//! the scaled scores, from which the backward recomputes the probabilities.
//!
//! CPU: per (n, head) with `gemm` products, rayon over tasks. CUDA: flash-style kernels that tile over keys with an
//! online softmax and keep no `[T,T]` matrix in global memory (head dim up to 128).
//!
//! For generation, [`attention_cached`] attends new queries over a KV cache that [`kv_cache_write`] fills (see
//! `cached.rs`).

mod cached;
mod cached_cpu;
mod cached_cuda;
mod cpu;
mod cpu_rows;
mod cuda;

pub use cached::{attention_cached, kv_cache_write};

use crate::ops::{check, launch};
use crate::runtime::cuda::KernelModule;
use crate::runtime::{DType, Device, Tensor};
use crate::{Error, Result};

pub const KERNELS: KernelModule = crate::kernel_module!("attention");

/// Which real keys a query sees. The backward must be given the forward's masking.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Masking {
    /// Keys at or before the query (a decoder: Qwen2).
    #[default]
    Causal,
    /// Every key of the sequence (an encoder: SigLIP's vision tower).
    Bidirectional,
}

/// The forward's output and what the backward needs.
#[derive(Debug)]
pub struct AttentionOutput {
    /// `[N,T,Hq,d]` in `q`'s dtype; zero at padding queries.
    pub out: Tensor,
    /// f32 `[N,Hq,T]`: logsumexp over the visible keys of the scaled scores; 0 at padding queries.
    pub lse: Tensor,
}

/// Gradients, each in the dtype of the input it differentiates; `grad_k` and `grad_v` are summed over the query
/// heads of each KV group.
#[derive(Debug)]
pub struct AttentionGrads {
    pub grad_q: Tensor,
    pub grad_k: Tensor,
    pub grad_v: Tensor,
}

/// Validated sizes and the host copy of the mask.
struct Plan {
    n: usize,
    t: usize,
    hq: usize,
    hkv: usize,
    d: usize,
    /// [N·T]: whether each position is a real token.
    valid: Vec<bool>,
    causal: bool,
    device: Device,
}

impl Plan {
    fn scale(&self) -> f32 {
        1.0 / (self.d as f32).sqrt()
    }

    /// Query heads per KV head.
    fn group(&self) -> usize {
        self.hq / self.hkv
    }

    /// One past the last key that query `i` may see.
    fn key_end(&self, i: usize) -> usize {
        if self.causal {
            i + 1
        } else {
            self.t
        }
    }
}

fn plan(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    masking: Masking,
    others: &[(&str, &Tensor)],
) -> Result<Plan> {
    let &[n, t, hq, d] = check::rank("q", q, 4)? else { unreachable!() };
    let &[_, _, hkv, _] = check::rank("k", k, 4)? else { unreachable!() };
    for (name, x) in [("q", q), ("k", k), ("v", v)] {
        check::float(name, x)?;
    }
    check::shape("k", k, &[n, t, hkv, d])?;
    check::shape("v", v, &[n, t, hkv, d])?;
    check::non_empty("q (N·T)", n * t)?;
    check::non_empty("q (d)", d)?;
    if hkv == 0 || hq == 0 || hq % hkv != 0 {
        return Err(Error::Shape(format!("query heads ({hq}) must be a positive multiple of KV heads ({hkv})")));
    }
    check::integer("attention_mask", mask)?;
    check::shape("attention_mask", mask, &[n, t])?;
    let mut named = vec![("q", q), ("k", k), ("v", v), ("attention_mask", mask)];
    named.extend_from_slice(others);
    let device = check::same_device(&named)?;
    let valid = launch::host_ids(mask)?.into_iter().map(|m| m != 0).collect();
    Ok(Plan { n, t, hq, hkv, d, valid, causal: masking == Masking::Causal, device })
}

/// Grouped-query attention of `q` `[N,T,Hq,d]` over `k`, `v` `[N,T,Hkv,d]` under `attention_mask` `[N,T]` (i32 or
/// i64, nonzero = real token) and `masking`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    attention_mask: &Tensor,
    masking: Masking,
) -> Result<AttentionOutput> {
    let p = plan(q, k, v, attention_mask, masking, &[])?;
    let mut out = Tensor::zeros(q.shape(), q.dtype(), p.device)?;
    let mut lse = Tensor::zeros(&[p.n, p.hq, p.t], DType::F32, p.device)?;
    forward(q, k, v, &p, &mut out, &mut lse)?;
    Ok(AttentionOutput { out, lse })
}

/// [`attention`] into `out` (`q`'s shape, dtype and device) and `lse` (f32 `[N,Hq,T]`), overwritten whole (zeros at
/// padding queries); neither may alias an input or the other.
pub fn attention_into(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    attention_mask: &Tensor,
    masking: Masking,
    out: &mut Tensor,
    lse: &mut Tensor,
) -> Result<()> {
    let p = plan(q, k, v, attention_mask, masking, &[])?;
    check::output("out", out, q.shape(), q.dtype(), p.device)?;
    check::output("lse", lse, &[p.n, p.hq, p.t], DType::F32, p.device)?;
    forward(q, k, v, &p, out, lse)
}

fn forward(q: &Tensor, k: &Tensor, v: &Tensor, p: &Plan, out: &mut Tensor, lse: &mut Tensor) -> Result<()> {
    match p.device {
        Device::Cpu => cpu::forward(q, k, v, p, out, lse),
        Device::Cuda(_) => cuda::forward(q, k, v, p, out, lse),
    }
}

/// The backward's outputs, validated.
struct Outputs<'a> {
    grad_q: &'a mut Tensor,
    grad_k: &'a mut Tensor,
    grad_v: &'a mut Tensor,
}

/// The plan of a backward, with `grad_out` and the forward's saved tensors checked.
fn backward_plan(
    grad_out: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    attention_mask: &Tensor,
    masking: Masking,
    saved: &AttentionOutput,
) -> Result<Plan> {
    let saved_tensors = [("grad_out", grad_out), ("saved.out", &saved.out), ("saved.lse", &saved.lse)];
    let p = plan(q, k, v, attention_mask, masking, &saved_tensors)?;
    check::float("grad_out", grad_out)?;
    check::shape("grad_out", grad_out, q.shape())?;
    check::shape("saved.out", &saved.out, q.shape())?;
    check::dtype("saved.lse", &saved.lse, DType::F32)?;
    check::shape("saved.lse", &saved.lse, &[p.n, p.hq, p.t])?;
    Ok(p)
}

fn backward(
    grad_out: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    saved: &AttentionOutput,
    p: &Plan,
    out: Outputs<'_>,
) -> Result<()> {
    match p.device {
        Device::Cpu => cpu::backward(grad_out, q, k, v, &saved.lse, p, out),
        Device::Cuda(_) => cuda::backward(grad_out, q, k, v, saved, p, out),
    }
}

/// Gradients of `Σ grad_out · attention(q, k, v, mask, masking).out`, from the forward's saved output and
/// logsumexp.
pub fn attention_backward(
    grad_out: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    attention_mask: &Tensor,
    masking: Masking,
    saved: &AttentionOutput,
) -> Result<AttentionGrads> {
    let p = backward_plan(grad_out, q, k, v, attention_mask, masking, saved)?;
    let zeros = |like: &Tensor| Tensor::zeros(like.shape(), like.dtype(), p.device);
    let mut grads = AttentionGrads { grad_q: zeros(q)?, grad_k: zeros(k)?, grad_v: zeros(v)? };
    let out = Outputs { grad_q: &mut grads.grad_q, grad_k: &mut grads.grad_k, grad_v: &mut grads.grad_v };
    backward(grad_out, q, k, v, saved, &p, out)?;
    Ok(grads)
}

/// [`attention_backward`] into `grad_q`, `grad_k` and `grad_v` (each with the shape, dtype and device of what it
/// differentiates), overwritten whole; none may alias an input or another output.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_into(
    grad_out: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    attention_mask: &Tensor,
    masking: Masking,
    saved: &AttentionOutput,
    grad_q: &mut Tensor,
    grad_k: &mut Tensor,
    grad_v: &mut Tensor,
) -> Result<()> {
    let p = backward_plan(grad_out, q, k, v, attention_mask, masking, saved)?;
    check::output("grad_q", grad_q, q.shape(), q.dtype(), p.device)?;
    check::output("grad_k", grad_k, k.shape(), k.dtype(), p.device)?;
    check::output("grad_v", grad_v, v.shape(), v.dtype(), p.device)?;
    backward(grad_out, q, k, v, saved, &p, Outputs { grad_q, grad_k, grad_v })
}
