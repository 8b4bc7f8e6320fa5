//! Per-sequence log-probabilities from logits `[N,T,V]` and labels `[N,T]`, never materialising the `[N,T,V]`
//! log-softmax: one pass over each counted row with an online logsumexp in f32 (forward), one more pass that writes
//! `g·w·(softmax − onehot)` (backward, optionally over the logits themselves). Also the mean logit and the token
//! entropy per sequence, as TRL logs them.
//!
//! A token counts when its label is not the ignore index and, if a mask is given, its mask is nonzero. Rows that
//! do not count are skipped by the forward (their saved `lse` is 0) and get a zero gradient.

mod compare;
mod cpu;
mod cuda;
mod naive;
pub mod row;

pub use compare::{compare_fused_vs_naive, ComparisonReport, PathReport};
pub use naive::{naive_sequence_logprobs, naive_sequence_logprobs_backward};

use crate::ops::check;
use crate::ops::tokens::CountedToken;
use crate::runtime::cuda::KernelModule;
use crate::runtime::{DType, Device, Tensor};
use crate::{Error, Result};
use row::RowStats;

pub const KERNELS: KernelModule = crate::kernel_module!("logprobs");

/// How a sequence's token log-probabilities are combined.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TokenReduction {
    /// The sum over counted tokens (DPO).
    #[default]
    Sum,
    /// The sum divided by the number of counted tokens, 0 when there are none (IPO, SimPO).
    Mean,
}

/// Which tokens count and how they are reduced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogProbsConfig {
    /// Labels equal to this do not count (default −100, as in PyTorch and TRL).
    pub ignore_index: i64,
    pub reduction: TokenReduction,
}

impl Default for LogProbsConfig {
    fn default() -> Self {
        LogProbsConfig { ignore_index: -100, reduction: TokenReduction::Sum }
    }
}

/// Forward outputs (all f32) plus what the backward needs.
#[derive(Debug)]
pub struct SequenceLogProbs {
    /// `[N]`: sum or mean over counted tokens of log `softmax(logits)[label]`.
    pub logps: Tensor,
    /// `[N]`: counted tokens (label ≠ ignore index and mask ≠ 0).
    pub token_counts: Tensor,
    /// `[N]`: mean over counted tokens of the mean over V of the logits (TRL's `logits/chosen`). A metric: the
    /// backward takes no gradient through it.
    pub mean_logits: Tensor,
    /// `[N]`: mean over counted tokens of the token entropy. A metric: the backward takes no gradient through it.
    pub entropy: Tensor,
    /// `[N,T]`: per-token logsumexp (0 for tokens that do not count), saved for the backward.
    pub lse: Tensor,
}

/// Log-probabilities of `labels` under `logits`, per sequence. `logits[n, t]` scores `labels[n, t]`: labels are
/// not shifted (as in Liger; transformers' causal-LM loss shifts them by one).
///
/// `logits` `[N,T,V]` f32, bf16 or f16; `labels` `[N,T]` i32 or i64; `mask` `[N,T]` i32, i64 or f32 (nonzero counts).
/// A counted label outside `[0, V)` is an [`Error::InvalidArgument`] naming its position.
pub fn sequence_logprobs(
    logits: &Tensor,
    labels: &Tensor,
    mask: Option<&Tensor>,
    cfg: &LogProbsConfig,
) -> Result<SequenceLogProbs> {
    let (device, dims) = check_inputs(logits, labels, mask)?;
    match device {
        Device::Cpu => cpu::forward(logits, labels, mask, cfg, dims),
        Device::Cuda(_) => cuda::forward(logits, labels, mask, cfg, dims),
    }
}

/// The gradient of a loss with respect to the logits, given its gradient `grad_logps` `[N]` f32 with respect to
/// `logps`: `−g[n]·w·(softmax − onehot(label))` for counted tokens (w = 1 for Sum, 1/count for Mean), 0 elsewhere; in
/// the dtype of `logits`. (With `g = −1`, the gradient of the summed NLL: `softmax − onehot`.)
pub fn sequence_logprobs_backward(
    logits: &Tensor,
    labels: &Tensor,
    mask: Option<&Tensor>,
    saved: &SequenceLogProbs,
    grad_logps: &Tensor,
    cfg: &LogProbsConfig,
) -> Result<Tensor> {
    let (device, dims) = check_backward(logits, labels, mask, saved, grad_logps)?;
    let mut grad = Tensor::zeros(logits.shape(), logits.dtype(), device)?;
    backward_into(logits, labels, mask, saved, grad_logps, cfg, dims, &mut grad, Zeroing::Done)?;
    Ok(grad)
}

/// [`sequence_logprobs_backward`] written into a buffer the caller owns (a C ABI or PyTorch output), which must
/// have the shape, dtype and device of `logits` and must not overlap it (for that, use
/// [`sequence_logprobs_backward_in_place`]). Every element is written.
pub fn sequence_logprobs_backward_into(
    logits: &Tensor,
    labels: &Tensor,
    mask: Option<&Tensor>,
    saved: &SequenceLogProbs,
    grad_logps: &Tensor,
    cfg: &LogProbsConfig,
    grad: &mut Tensor,
) -> Result<()> {
    let (_, dims) = check_backward(logits, labels, mask, saved, grad_logps)?;
    check::dtype("grad", grad, logits.dtype())?;
    check::shape("grad", grad, logits.shape())?;
    check::same_device(&[("logits", logits), ("grad", grad)])?;
    backward_into(logits, labels, mask, saved, grad_logps, cfg, dims, grad, Zeroing::AfterValidation)
}

/// Whether the backends must zero `grad` (the kernels skip rows that do not count: they must read as zero). They do
/// it once the labels are validated, so that a call refused for a bad label leaves a caller's buffer untouched.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Zeroing {
    Done,
    AfterValidation,
}

#[allow(clippy::too_many_arguments)]
fn backward_into(
    logits: &Tensor,
    labels: &Tensor,
    mask: Option<&Tensor>,
    saved: &SequenceLogProbs,
    grad_logps: &Tensor,
    cfg: &LogProbsConfig,
    dims: Dims,
    grad: &mut Tensor,
    zeroing: Zeroing,
) -> Result<()> {
    match grad.device() {
        Device::Cpu => cpu::backward(logits, labels, mask, saved, grad_logps, cfg, dims, grad, zeroing),
        Device::Cuda(_) => cuda::backward(logits, labels, mask, saved, grad_logps, cfg, dims, grad, zeroing),
    }
}

/// [`sequence_logprobs_backward`] written over `logits` (no extra memory): afterwards `logits` holds the gradient.
pub fn sequence_logprobs_backward_in_place(
    logits: &mut Tensor,
    labels: &Tensor,
    mask: Option<&Tensor>,
    saved: &SequenceLogProbs,
    grad_logps: &Tensor,
    cfg: &LogProbsConfig,
) -> Result<()> {
    let (device, dims) = check_backward(logits, labels, mask, saved, grad_logps)?;
    match device {
        Device::Cpu => cpu::backward_in_place(logits, labels, mask, saved, grad_logps, cfg, dims),
        Device::Cuda(_) => cuda::backward_in_place(logits, labels, mask, saved, grad_logps, cfg, dims),
    }
}

/// N, T and V.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dims {
    pub n: usize,
    pub t: usize,
    pub v: usize,
}

/// Shapes, dtypes and devices of the forward's arguments.
fn check_inputs(logits: &Tensor, labels: &Tensor, mask: Option<&Tensor>) -> Result<(Device, Dims)> {
    check::float("logits", logits)?;
    let shape = check::rank("logits", logits, 3)?;
    let dims = Dims { n: shape[0], t: shape[1], v: shape[2] };
    if shape.contains(&0) {
        return Err(Error::Shape(format!(
            "`logits` has shape {shape:?}: the batch is empty (N sequences, T tokens and V vocabulary entries must \
             all be at least 1)"
        )));
    }
    check::integer("labels", labels)?;
    check::shape("labels", labels, &[dims.n, dims.t])?;
    let mut tensors = vec![("logits", logits), ("labels", labels)];
    if let Some(m) = mask {
        if !matches!(m.dtype(), DType::I32 | DType::I64 | DType::F32) {
            return Err(Error::DType { arg: "mask", got: m.dtype(), expected: "i32, i64 or f32".into() });
        }
        check::shape("mask", m, &[dims.n, dims.t])?;
        tensors.push(("mask", m));
    }
    Ok((check::same_device(&tensors)?, dims))
}

/// [`check_inputs`] plus the saved forward outputs and the incoming gradient.
fn check_backward(
    logits: &Tensor,
    labels: &Tensor,
    mask: Option<&Tensor>,
    saved: &SequenceLogProbs,
    grad_logps: &Tensor,
) -> Result<(Device, Dims)> {
    let (device, dims) = check_inputs(logits, labels, mask)?;
    for (name, t, shape) in [
        ("saved.lse", &saved.lse, &[dims.n, dims.t][..]),
        ("saved.token_counts", &saved.token_counts, &[dims.n]),
        ("grad_logps", grad_logps, &[dims.n]),
    ] {
        check::dtype(name, t, DType::F32)?;
        check::shape(name, t, shape)?;
    }
    check::same_device(&[
        ("logits", logits),
        ("saved.lse", &saved.lse),
        ("saved.token_counts", &saved.token_counts),
        ("grad_logps", grad_logps),
    ])?;
    Ok((device, dims))
}

/// Reduces per-token statistics (`stats[i]` of `tokens[i]`, in order) to the per-sequence outputs, in f64 and in a
/// fixed order, so that the result does not depend on threading.
fn sequence_outputs(
    tokens: &[CountedToken],
    stats: &[RowStats],
    dims: Dims,
    reduction: TokenReduction,
) -> Result<SequenceLogProbs> {
    let Dims { n, t, v } = dims;
    let mut sums = vec![[0.0f64; 4]; n]; // logp, mean logit, entropy, count
    let mut lse = vec![0.0f32; n * t];
    for (tok, s) in tokens.iter().zip(stats) {
        let acc = &mut sums[tok.sequence];
        acc[0] += s.target_logp as f64;
        acc[1] += s.sum_logits as f64 / v as f64;
        acc[2] += s.entropy as f64;
        acc[3] += 1.0;
        lse[tok.position] = s.lse;
    }
    let per_token = |sum: f64, count: f64| if count > 0.0 { (sum / count) as f32 } else { 0.0 };
    let column =
        |f: &dyn Fn(&[f64; 4]) -> f32| Tensor::from_slice(&sums.iter().map(f).collect::<Vec<f32>>(), &[n], Device::Cpu);
    Ok(SequenceLogProbs {
        logps: column(&|a| match reduction {
            TokenReduction::Sum => a[0] as f32,
            TokenReduction::Mean => per_token(a[0], a[3]),
        })?,
        token_counts: column(&|a| a[3] as f32)?,
        mean_logits: column(&|a| per_token(a[1], a[3]))?,
        entropy: column(&|a| per_token(a[2], a[3]))?,
        lse: Tensor::from_slice(&lse, &[n, t], Device::Cpu)?,
    })
}

/// The factor of `softmax − onehot` in each sequence's logit gradients: d logp / d logits = onehot − softmax, so
/// `−g[n]` for Sum, `−g[n]/count[n]` for Mean (0 without counted tokens).
fn sequence_scales(grad_logps: &[f32], counts: &[f32], reduction: TokenReduction) -> Vec<f32> {
    grad_logps
        .iter()
        .zip(counts)
        .map(|(&g, &c)| match reduction {
            _ if c == 0.0 => 0.0,
            TokenReduction::Sum => -g,
            TokenReduction::Mean => -g / c,
        })
        .collect()
}

/// Runs `$body` with `$t` bound to the Rust type of a float dtype.
macro_rules! with_float_type {
    ($dtype:expr, $t:ident => $body:expr) => {
        match $dtype {
            $crate::runtime::DType::F32 => {
                type $t = f32;
                $body
            }
            $crate::runtime::DType::BF16 => {
                type $t = half::bf16;
                $body
            }
            $crate::runtime::DType::F16 => {
                type $t = half::f16;
                $body
            }
            other => {
                return Err($crate::Error::DType { arg: "logits", got: other, expected: "f32, bf16 or f16".into() })
            }
        }
    };
}
use with_float_type;
