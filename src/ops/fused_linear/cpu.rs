//! The CPU fused path: chunks of logits through the CPU products (bf16 × bf16 without widening where the CPU has
//! AVX512-BF16, else f32 through `gemm`), per-row statistics through rayon.

use half::bf16;
use rayon::prelude::*;

use super::{FusedLinearConfig, FusedLinearGrads, LinearHead, Plan};
use crate::ops::logprobs::row::{row_grad_in_place, row_stats, RowStats};
use crate::ops::logprobs::{SequenceLogProbs, TokenReduction};
use crate::ops::tokens::CountedToken;
use crate::runtime::cpu::{matmul, matmul_bf16, matmul_tensor, MatRef};
use crate::runtime::{DType, Device, Tensor};
use crate::Result;

/// The hidden states as f32 (borrowed when already f32), or as bf16 when the weight is bf16 too (the logits are
/// then bf16 × bf16 products, through the AVX512-BF16 kernel where the CPU has it); the bias as f32; the weight in
/// its own dtype (a bf16/f16 LM head against f32 rows is widened panel by panel inside each product, never as a
/// whole [V, H] copy).
struct Head<'a> {
    hidden: Hidden<'a>,
    weight: &'a Tensor,
    bias: Option<std::borrow::Cow<'a, [f32]>>,
    h: usize,
    v: usize,
}

enum Hidden<'a> {
    F32(std::borrow::Cow<'a, [f32]>),
    Bf16(&'a [bf16]),
}

/// Scratch buffers for one chunk's rows, allocated once per call: the gathered hidden rows [c,H] as f32 (what the
/// weight gradient multiplies) and, for bf16 × bf16 logits, as bf16.
struct Rows {
    f32: Vec<f32>,
    bf16: Vec<bf16>,
}

impl<'a> Head<'a> {
    fn new(head: &LinearHead<'a>, plan: &Plan) -> Result<Self> {
        let hidden = if head.hidden.dtype() == DType::BF16 && head.weight.dtype() == DType::BF16 {
            Hidden::Bf16(head.hidden.as_slice::<bf16>()?)
        } else {
            Hidden::F32(head.hidden.to_f32_cow()?)
        };
        Ok(Head {
            hidden,
            weight: head.weight,
            bias: head.bias.map(Tensor::to_f32_cow).transpose()?,
            h: plan.h,
            v: plan.v,
        })
    }

    /// Gathers the chunk's hidden rows into `rows` and writes its logits into `logits` [c,V].
    fn chunk_logits(&self, chunk: &[CountedToken], rows: &mut Rows, logits: &mut [f32]) -> Result<()> {
        let (h, v, c) = (self.h, self.v, chunk.len());
        let logits = &mut logits[..c * v];
        match &self.hidden {
            Hidden::F32(hidden) => {
                for (dst, tok) in rows.f32.chunks_exact_mut(h).zip(chunk) {
                    dst.copy_from_slice(&hidden[tok.position * h..(tok.position + 1) * h]);
                }
                let x = MatRef::row_major(&rows.f32[..c * h], c, h);
                matmul_tensor(logits, x, self.weight, (v, h), true, 0.0)?;
            }
            Hidden::Bf16(hidden) => {
                for ((dst, wide), tok) in rows.bf16.chunks_exact_mut(h).zip(rows.f32.chunks_exact_mut(h)).zip(chunk) {
                    dst.copy_from_slice(&hidden[tok.position * h..(tok.position + 1) * h]);
                    wide.iter_mut().zip(dst.iter()).for_each(|(w, x)| *w = x.to_f32());
                }
                let x = MatRef::row_major(&rows.bf16[..c * h], c, h);
                matmul_bf16(logits, x, MatRef::row_major(self.weight.as_slice::<bf16>()?, v, h).t(), 0.0);
            }
        }
        if let Some(bias) = &self.bias {
            logits.par_chunks_mut(v).for_each(|row| row.iter_mut().zip(bias.iter()).for_each(|(x, b)| *x += b));
        }
        Ok(())
    }
}

/// Scratch buffers for one chunk (its rows and its logits), allocated once per call.
fn scratch(head: &Head<'_>, plan: &Plan, cfg: &FusedLinearConfig) -> (usize, Rows, Vec<f32>) {
    let chunk = cfg.chunk_tokens_for(plan.v).min(plan.tokens.len().max(1));
    let bf16_rows = if matches!(head.hidden, Hidden::Bf16(_)) { chunk * plan.h } else { 0 };
    let rows = Rows { f32: vec![0.0; chunk * plan.h], bf16: vec![bf16::ZERO; bf16_rows] };
    (chunk, rows, vec![0.0; chunk * plan.v])
}

pub(super) fn forward(head: &LinearHead<'_>, plan: &Plan, cfg: &FusedLinearConfig) -> Result<SequenceLogProbs> {
    let head_data = Head::new(head, plan)?;
    let (chunk_len, mut rows, mut logits) = scratch(&head_data, plan, cfg);
    let (n, v) = (plan.n, plan.v);
    let mut logps = vec![0.0f32; n];
    let mut sum_mean_logits = vec![0.0f32; n];
    let mut sum_entropy = vec![0.0f32; n];
    let mut counts = vec![0.0f32; n];
    let mut lse = vec![0.0f32; n * plan.t];
    for chunk in plan.tokens.chunks(chunk_len) {
        head_data.chunk_logits(chunk, &mut rows, &mut logits)?;
        let stats: Vec<RowStats> =
            logits.par_chunks(v).zip(chunk.par_iter()).map(|(row, tok)| row_stats(row, Some(tok.label))).collect();
        for (s, tok) in stats.iter().zip(chunk) {
            logps[tok.sequence] += s.target_logp;
            sum_mean_logits[tok.sequence] += s.sum_logits / v as f32;
            sum_entropy[tok.sequence] += s.entropy;
            counts[tok.sequence] += 1.0;
            lse[tok.position] = s.lse;
        }
    }
    let per_token = |sums: &[f32]| -> Vec<f32> {
        sums.iter().zip(&counts).map(|(s, &c)| if c > 0.0 { s / c } else { 0.0 }).collect()
    };
    if cfg.logprobs.reduction == TokenReduction::Mean {
        logps = per_token(&logps);
    }
    Ok(SequenceLogProbs {
        logps: Tensor::from_slice(&logps, &[n], Device::Cpu)?,
        token_counts: Tensor::from_slice(&counts, &[n], Device::Cpu)?,
        mean_logits: Tensor::from_slice(&per_token(&sum_mean_logits), &[n], Device::Cpu)?,
        entropy: Tensor::from_slice(&per_token(&sum_entropy), &[n], Device::Cpu)?,
        lse: Tensor::from_slice(&lse, &[n, plan.t], Device::Cpu)?,
    })
}

pub(super) fn backward(
    head: &LinearHead<'_>,
    plan: &Plan,
    saved: &SequenceLogProbs,
    grad_logps: &Tensor,
    cfg: &FusedLinearConfig,
) -> Result<FusedLinearGrads> {
    let head_data = Head::new(head, plan)?;
    let (chunk_len, mut rows, mut grads) = scratch(&head_data, plan, cfg);
    let (h, v) = (plan.h, plan.v);
    let lse = saved.lse.to_f32_cow()?;
    let upstream = grad_logps.to_f32_cow()?;
    let scale = plan.gradient_scales(cfg, &upstream);

    // f32 accumulators; for f32 inputs they are the outputs themselves (no copy of a [V,H] gradient).
    let mut grad_hidden = Tensor::zeros(head.hidden.shape(), DType::F32, Device::Cpu)?;
    let mut grad_weight = Tensor::zeros(head.weight.shape(), DType::F32, Device::Cpu)?;
    let mut grad_bias = head.bias.map(|b| Tensor::zeros(b.shape(), DType::F32, Device::Cpu)).transpose()?;
    let (grad_hidden_acc, grad_weight_acc) = (grad_hidden.as_mut_slice::<f32>()?, grad_weight.as_mut_slice::<f32>()?);
    let mut grad_rows = vec![0.0f32; chunk_len * h];
    for (index, chunk) in plan.tokens.chunks(chunk_len).enumerate() {
        let c = chunk.len();
        head_data.chunk_logits(chunk, &mut rows, &mut grads)?;
        grads[..c * v].par_chunks_mut(v).zip(chunk.par_iter()).for_each(|(row, tok)| {
            row_grad_in_place(row, lse[tok.position], tok.label, scale[tok.sequence]);
        });
        let g = MatRef::row_major(&grads[..c * v], c, v);
        // d_hidden rows = G·W, scattered back to their positions.
        matmul_tensor(&mut grad_rows[..c * h], g, head_data.weight, (v, h), false, 0.0)?;
        for (src, tok) in grad_rows.chunks_exact(h).zip(chunk) {
            grad_hidden_acc[tok.position * h..(tok.position + 1) * h].copy_from_slice(src);
        }
        // d_weight += Gᵀ·h_rows. The first chunk overwrites: reading the fresh zero pages before writing them would
        // fault each one twice (the shared zero page, then a copy with a TLB shootdown across threads).
        let beta = if index == 0 { 0.0 } else { 1.0 };
        matmul(grad_weight_acc, g.t(), MatRef::row_major(&rows.f32[..c * h], c, h), beta);
        if let Some(gb) = grad_bias.as_mut() {
            gb.as_mut_slice::<f32>()?.par_chunks_mut(4096).enumerate().for_each(|(block, gb)| {
                let columns = block * 4096..block * 4096 + gb.len();
                for row in grads[..c * v].chunks_exact(v) {
                    gb.iter_mut().zip(&row[columns.clone()]).for_each(|(acc, g)| *acc += g);
                }
            });
        }
    }
    let cast = |acc: Tensor, dtype: DType| if dtype == DType::F32 { Ok(acc) } else { acc.to_dtype(dtype) };
    Ok(FusedLinearGrads {
        grad_hidden: cast(grad_hidden, head.hidden.dtype())?,
        grad_weight: cast(grad_weight, head.weight.dtype())?,
        grad_bias: match (grad_bias, head.bias) {
            (Some(gb), Some(b)) => Some(cast(gb, b.dtype())?),
            _ => None,
        },
    })
}
