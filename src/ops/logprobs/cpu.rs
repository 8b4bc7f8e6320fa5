//! CPU path: rows in parallel over rayon's pool, each row through the vectorised math of [`super::row`].

use bytemuck::Zeroable;
use rayon::prelude::*;

use super::row::{row_grad, row_grad_in_place, row_stats, RowStats};
use super::{sequence_outputs, sequence_scales, with_float_type, Dims, LogProbsConfig, SequenceLogProbs, Zeroing};
use crate::ops::tokens::{self, CountedToken};
use crate::runtime::cpu::rows_per_task;
use crate::runtime::{FloatElement, Tensor};
use crate::Result;

pub(super) fn forward(
    logits: &Tensor,
    labels: &Tensor,
    mask: Option<&Tensor>,
    cfg: &LogProbsConfig,
    dims: Dims,
) -> Result<SequenceLogProbs> {
    let tokens = tokens::counted_tokens(labels, mask, cfg.ignore_index, (dims.n, dims.t, dims.v))?;
    let stats = with_float_type!(logits.dtype(), T => token_stats(logits.as_slice::<T>()?, &tokens, dims.v));
    sequence_outputs(&tokens, &stats, dims, cfg.reduction)
}

/// One [`RowStats`] per counted token, in order; rows that do not count are never read.
fn token_stats<T: FloatElement>(logits: &[T], tokens: &[CountedToken], v: usize) -> Vec<RowStats> {
    tokens
        .par_iter()
        .with_min_len(rows_per_task(tokens.len(), v))
        .map(|tok| row_stats(&logits[tok.position * v..][..v], Some(tok.label)))
        .collect()
}

/// Host bytes of per-token bookkeeping at the backward's peak (the counted tokens and one plan per row), for
/// [`super::compare_fused_vs_naive`].
pub(super) fn bookkeeping_bytes(dims: Dims) -> usize {
    dims.n * dims.t * (std::mem::size_of::<CountedToken>() + std::mem::size_of::<RowPlan>())
}

/// Per row of [N·T]: the label, the saved logsumexp and the gradient factor, or `None` for rows that do not count.
type RowPlan = Option<(usize, f32, f32)>;

fn row_plans(
    labels: &Tensor,
    mask: Option<&Tensor>,
    saved: &SequenceLogProbs,
    grad_logps: &Tensor,
    cfg: &LogProbsConfig,
    dims: Dims,
) -> Result<Vec<RowPlan>> {
    let tokens = tokens::counted_tokens(labels, mask, cfg.ignore_index, (dims.n, dims.t, dims.v))?;
    let counts = tokens::counts_per_sequence(&tokens, dims.n);
    let scales = sequence_scales(grad_logps.as_slice::<f32>()?, &counts, cfg.reduction);
    let lse = saved.lse.as_slice::<f32>()?;
    let mut plans = vec![None; dims.n * dims.t];
    for tok in &tokens {
        plans[tok.position] = Some((tok.label, lse[tok.position], scales[tok.sequence]));
    }
    Ok(plans)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
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
    let plans = row_plans(labels, mask, saved, grad_logps, cfg, dims)?;
    if zeroing == Zeroing::AfterValidation {
        grad.fill_zeros()?;
    }
    let v = dims.v;
    with_float_type!(logits.dtype(), T => {
        let src = logits.as_slice::<T>()?;
        // `grad` is freshly zeroed: rows that do not count are left untouched.
        grad.as_mut_slice::<T>()?
            .par_chunks_mut(v)
            .zip(src.par_chunks(v))
            .zip(plans.par_iter())
            .with_min_len(rows_per_task(plans.len(), v))
            .for_each(|((dst, row), plan)| {
                if let Some((label, lse, scale)) = *plan {
                    row_grad(row, lse, label, scale, dst);
                }
            });
    });
    Ok(())
}

pub(super) fn backward_in_place(
    logits: &mut Tensor,
    labels: &Tensor,
    mask: Option<&Tensor>,
    saved: &SequenceLogProbs,
    grad_logps: &Tensor,
    cfg: &LogProbsConfig,
    dims: Dims,
) -> Result<()> {
    let plans = row_plans(labels, mask, saved, grad_logps, cfg, dims)?;
    let v = dims.v;
    with_float_type!(logits.dtype(), T => {
        logits
            .as_mut_slice::<T>()?
            .par_chunks_mut(v)
            .zip(plans.par_iter())
            .with_min_len(rows_per_task(plans.len(), v))
            .for_each(|(row, plan)| match *plan {
                Some((label, lse, scale)) => row_grad_in_place(row, lse, label, scale),
                None => row.fill(T::zeroed()),
            });
    });
    Ok(())
}
