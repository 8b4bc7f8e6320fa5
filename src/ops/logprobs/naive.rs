//! The naive path, as eager PyTorch runs TRL's formulation: materialise the f32 log-softmax [N,T,V], gather the
//! labels, reduce; the backward materialises `softmax − onehot` in f32. CPU only. It is the baseline of
//! [`super::compare_fused_vs_naive`] and a second reference in the tests; plain `exp`/`ln`, no online tricks.

use rayon::prelude::*;

use super::row::RowStats;
use super::{
    check_backward, check_inputs, sequence_outputs, sequence_scales, with_float_type, Dims, LogProbsConfig,
    SequenceLogProbs,
};
use crate::ops::tokens;
use crate::runtime::{DType, Device, FloatElement, Tensor};
use crate::{Error, Result};

/// Sequence log-probabilities through a materialised f32 log-softmax (same outputs as
/// [`super::sequence_logprobs`]).
pub fn naive_sequence_logprobs(
    logits: &Tensor,
    labels: &Tensor,
    mask: Option<&Tensor>,
    cfg: &LogProbsConfig,
) -> Result<SequenceLogProbs> {
    let (device, dims) = check_inputs(logits, labels, mask)?;
    cpu_only(device)?;
    let tokens = tokens::counted_tokens(labels, mask, cfg.ignore_index, (dims.n, dims.t, dims.v))?;
    let v = dims.v;
    let log_softmax = with_float_type!(logits.dtype(), T => log_softmax(logits.as_slice::<T>()?, v));
    let stats: Vec<RowStats> = tokens
        .par_iter()
        .map(|tok| {
            let x = &log_softmax.rows[tok.position * v..][..v];
            let lse = log_softmax.lse[tok.position];
            RowStats {
                lse,
                target_logp: x[tok.label],
                // Σ logits = Σ (log_softmax + lse).
                sum_logits: x.iter().map(|&l| (l + lse) as f64).sum::<f64>() as f32,
                entropy: -x.iter().map(|&l| (l.exp() * l) as f64).sum::<f64>() as f32,
            }
        })
        .collect();
    sequence_outputs(&tokens, &stats, dims, cfg.reduction)
}

/// The logits' gradient through a materialised f32 `softmax − onehot` `[N,T,V]` (same result as
/// [`super::sequence_logprobs_backward`]; `saved` is checked but only its shape matters: the log-softmax is
/// recomputed).
pub fn naive_sequence_logprobs_backward(
    logits: &Tensor,
    labels: &Tensor,
    mask: Option<&Tensor>,
    saved: &SequenceLogProbs,
    grad_logps: &Tensor,
    cfg: &LogProbsConfig,
) -> Result<Tensor> {
    let (device, dims) = check_backward(logits, labels, mask, saved, grad_logps)?;
    cpu_only(device)?;
    let Dims { n, t, v } = dims;
    let tokens = tokens::counted_tokens(labels, mask, cfg.ignore_index, (n, t, v))?;
    let scales = sequence_scales(grad_logps.as_slice()?, &tokens::counts_per_sequence(&tokens, n), cfg.reduction);
    let mut grad = with_float_type!(logits.dtype(), T => log_softmax(logits.as_slice::<T>()?, v)).rows;
    let mut counted = vec![None; n * t];
    for tok in &tokens {
        counted[tok.position] = Some((tok.label, scales[tok.sequence]));
    }
    grad.par_chunks_mut(v).zip(&counted).for_each(|(row, c)| match *c {
        Some((label, scale)) => {
            for x in row.iter_mut() {
                *x = x.exp();
            }
            row[label] -= 1.0;
            for x in row.iter_mut() {
                *x *= scale;
            }
        }
        None => row.fill(0.0),
    });
    let mut out = Tensor::zeros(logits.shape(), logits.dtype(), Device::Cpu)?;
    with_float_type!(logits.dtype(), T => {
        out.as_mut_slice::<T>()?.par_iter_mut().zip(&grad).for_each(|(o, &g)| *o = T::from_f32(g));
    });
    Ok(out)
}

/// Bytes the naive path allocates beyond its inputs at its peak (the backward's f32 buffer plus its result), for
/// [`super::compare_fused_vs_naive`]; the forward's log-softmax is freed before the backward starts.
pub(super) fn peak_bytes(dims: Dims, dtype: DType) -> usize {
    let elements = dims.n * dims.t * dims.v;
    elements * (4 + dtype.size_in_bytes())
}

/// The materialised log-softmax of every row, and each row's logsumexp.
struct LogSoftmax {
    rows: Vec<f32>,
    lse: Vec<f32>,
}

fn log_softmax<T: FloatElement>(logits: &[T], v: usize) -> LogSoftmax {
    let mut rows: Vec<f32> = logits.par_iter().map(|x| x.to_f32()).collect();
    let lse = rows
        .par_chunks_mut(v)
        .map(|row| {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let lse = max + row.iter().map(|&x| ((x - max) as f64).exp()).sum::<f64>().ln() as f32;
            for x in row.iter_mut() {
                *x -= lse;
            }
            lse
        })
        .collect();
    LogSoftmax { rows, lse }
}

fn cpu_only(device: Device) -> Result<()> {
    if device != Device::Cpu {
        return Err(Error::Device(format!("the naive path runs on the CPU only, the tensors are on {device}")));
    }
    Ok(())
}
