//! The verdict head of a generative judge: class probabilities read straight from the logits at the answer
//! position, by a logsumexp over each class's token ids renormalised over the classes, and for a score scale the
//! expected score. Types, checks and the device dispatch.

use super::classes::VerdictClasses;
use super::{verdict_cpu, verdict_cuda};
use crate::ops::check;
use crate::runtime::{DType, Device, Tensor};
use crate::{Error, Result};

/// The head's outputs, all f32 on the device of the logits.
#[derive(Debug)]
pub struct Verdict {
    /// `[B,K]`: `p_k = exp(log_probs)`, summing to 1 over the classes.
    pub probs: Tensor,
    /// `[B,K]`: `log p_k = lse_{i∈S_k} x_i − lse_{i∈S_1∪…∪S_K} x_i`.
    pub log_probs: Tensor,
    /// `[B]`: `Σ_k p_k · values[k]`, when the classes have values.
    pub expected_score: Option<Tensor>,
}

/// Upstream gradients for [`verdict_head_backward`]; give one or both (f32).
#[derive(Clone, Copy, Default)]
pub struct VerdictGrads<'a> {
    /// `[B,K]`, with respect to `log_probs`.
    pub log_probs: Option<&'a Tensor>,
    /// `[B]`, with respect to `expected_score` (needs class values).
    pub expected_score: Option<&'a Tensor>,
}

/// B and V.
#[derive(Clone, Copy)]
pub(super) struct Dims {
    pub b: usize,
    pub v: usize,
}

fn check_logits(logits: &Tensor, classes: &VerdictClasses) -> Result<(Device, Dims)> {
    check::float("logits", logits)?;
    let &[b, v] = check::rank("logits", logits, 2)? else { unreachable!() };
    check::non_empty("logits (B)", b)?;
    check::non_empty("logits (V)", v)?;
    classes.check_vocab(v)?;
    Ok((check::same_device(&[("logits", logits)])?, Dims { b, v }))
}

/// Class probabilities, log-probabilities and (with class values) expected scores of `logits` `[B,V]` (f32, bf16
/// or f16; the logits at each answer position), on their device.
///
/// Logits of −∞ (masked tokens) are allowed: a class whose tokens are all −∞ gets `p = 0`, `log p = −∞`; a row whose
/// listed tokens are all −∞, or that holds a NaN, gives NaN. On CUDA, at most 6,144 classes (their logsumexps live in
/// shared memory).
pub fn verdict_head(logits: &Tensor, classes: &VerdictClasses) -> Result<Verdict> {
    let (device, dims) = check_logits(logits, classes)?;
    match device {
        Device::Cpu => verdict_cpu::forward(logits, classes, dims),
        Device::Cuda(_) => verdict_cuda::forward(logits, classes, dims),
    }
}

/// The gradient of `Σ grads.log_probs · log_probs + Σ grads.expected_score · expected_score` with respect to the
/// logits: `[B,V]` in their dtype, zero outside the listed token ids. The forward is recomputed (it reads B·M
/// logits).
pub fn verdict_head_backward(logits: &Tensor, classes: &VerdictClasses, grads: VerdictGrads<'_>) -> Result<Tensor> {
    let (device, dims) = check_backward(logits, classes, grads)?;
    let mut grad = Tensor::zeros(logits.shape(), logits.dtype(), device)?;
    backward_into_zeroed(logits, classes, grads, dims, &mut grad)?;
    Ok(grad)
}

/// [`verdict_head_backward`] written into a buffer the caller owns (a C ABI or PyTorch output), with the shape,
/// dtype and device of `logits` and not overlapping it. Every element is written.
pub fn verdict_head_backward_into(
    logits: &Tensor,
    classes: &VerdictClasses,
    grads: VerdictGrads<'_>,
    grad: &mut Tensor,
) -> Result<()> {
    let (_, dims) = check_backward(logits, classes, grads)?;
    check::dtype("grad", grad, logits.dtype())?;
    check::shape("grad", grad, logits.shape())?;
    check::same_device(&[("logits", logits), ("grad", grad)])?;
    // The kernels write only the listed token ids: the rest must read as zero.
    grad.fill_zeros()?;
    backward_into_zeroed(logits, classes, grads, dims, grad)
}

fn backward_into_zeroed(
    logits: &Tensor,
    classes: &VerdictClasses,
    grads: VerdictGrads<'_>,
    dims: Dims,
    grad: &mut Tensor,
) -> Result<()> {
    match grad.device() {
        Device::Cpu => verdict_cpu::backward(logits, classes, grads, dims, grad),
        Device::Cuda(_) => verdict_cuda::backward(logits, classes, grads, dims, grad),
    }
}

/// Checks the backward's arguments; returns the device and sizes.
fn check_backward(logits: &Tensor, classes: &VerdictClasses, grads: VerdictGrads<'_>) -> Result<(Device, Dims)> {
    let (device, dims) = check_logits(logits, classes)?;
    let k = classes.num_classes();
    let mut named = vec![("logits", logits)];
    if let Some(g) = grads.log_probs {
        check::dtype("grads.log_probs", g, DType::F32)?;
        check::shape("grads.log_probs", g, &[dims.b, k])?;
        named.push(("grads.log_probs", g));
    }
    if let Some(g) = grads.expected_score {
        check::dtype("grads.expected_score", g, DType::F32)?;
        check::shape("grads.expected_score", g, &[dims.b])?;
        if classes.values().is_none() {
            return Err(Error::InvalidArgument(
                "the expected score's gradient is given but the classes have no values (`class_values` in C, `values` in \
                 Python, VerdictClasses::with_values in Rust)"
                    .into(),
            ));
        }
        named.push(("grads.expected_score", g));
    }
    if named.len() == 1 {
        return Err(Error::InvalidArgument(
            "verdict_head_backward needs `grads.log_probs`, `grads.expected_score` or both".into(),
        ));
    }
    check::same_device(&named)?;
    Ok((device, dims))
}
