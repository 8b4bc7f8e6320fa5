//! The CPU fused path: chunks of logits through the CPU products (bf16 × bf16 without widening where the CPU has
//! AVX512-BF16, else f32 through `gemm`), per-row statistics through rayon.

use half::{bf16, f16};
use rayon::prelude::*;

use super::{ExtendedLogProbs, FusedLinearConfig, FusedLinearGradsMut, LinearHead, Plan};
use crate::ops::logprobs::row::{row_grad_in_place, row_stats, RowStats};
use crate::ops::logprobs::{SequenceLogProbs, TokenReduction};
use crate::ops::tokens::CountedToken;
use crate::runtime::cpu::{matmul, matmul_bf16, matmul_tensor, MatRef};
use crate::runtime::host_cache::F32Scratch;
use crate::runtime::{DType, Device, FloatElement, Tensor};
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
    f32: F32Scratch,
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

/// Scratch buffers for one chunk (its rows and its logits), allocated once per call from the host cache.
fn scratch(head: &Head<'_>, plan: &Plan, cfg: &FusedLinearConfig) -> (usize, Rows, F32Scratch) {
    let chunk = cfg.chunk_tokens_for(plan.v).min(plan.tokens.len().max(1));
    let bf16_rows = if matches!(head.hidden, Hidden::Bf16(_)) { chunk * plan.h } else { 0 };
    let rows = Rows { f32: F32Scratch::zeroed(chunk * plan.h), bf16: vec![bf16::ZERO; bf16_rows] };
    (chunk, rows, F32Scratch::zeroed(chunk * plan.v))
}

pub(super) fn forward(head: &LinearHead<'_>, plan: &Plan, cfg: &FusedLinearConfig) -> Result<ExtendedLogProbs> {
    let head_data = Head::new(head, plan)?;
    let (chunk_len, mut rows, mut logits) = scratch(&head_data, plan, cfg);
    let (n, v) = (plan.n, plan.v);
    let mut logps = vec![0.0f32; n];
    let mut sum_mean_logits = vec![0.0f32; n];
    let mut sum_entropy = vec![0.0f32; n];
    let mut counts = vec![0.0f32; n];
    let mut lse = vec![0.0f32; n * plan.t];
    let mut weighted = plan.weights.as_ref().map(|_| vec![0.0f32; n]);
    let mut collision = plan.log_collision.then(|| vec![0.0f32; n]);
    for (index, chunk) in plan.tokens.chunks(chunk_len).enumerate() {
        head_data.chunk_logits(chunk, &mut rows, &mut logits)?;
        let stats: Vec<(RowStats, f32)> = logits
            .par_chunks(v)
            .zip(chunk.par_iter())
            .map(|(row, tok)| {
                let s = row_stats(row, Some(tok.label));
                (s, if plan.log_collision { log_collision(row, s.lse) } else { 0.0 })
            })
            .collect();
        for (i, ((s, c), tok)) in stats.iter().zip(chunk).enumerate() {
            if let (Some(sums), Some(weights)) = (weighted.as_mut(), plan.weights.as_ref()) {
                sums[tok.sequence] += weights[index * chunk_len + i] * s.target_logp;
            }
            if let Some(sums) = collision.as_mut() {
                sums[tok.sequence] += c;
            }
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
    let reduce = |sums: Vec<f32>| match cfg.logprobs.reduction {
        TokenReduction::Sum => sums,
        TokenReduction::Mean => per_token(&sums),
    };
    let out = SequenceLogProbs {
        logps: Tensor::from_slice(&reduce(logps), &[n], Device::Cpu)?,
        token_counts: Tensor::from_slice(&counts, &[n], Device::Cpu)?,
        mean_logits: Tensor::from_slice(&per_token(&sum_mean_logits), &[n], Device::Cpu)?,
        entropy: Tensor::from_slice(&per_token(&sum_entropy), &[n], Device::Cpu)?,
        lse: Tensor::from_slice(&lse, &[n, plan.t], Device::Cpu)?,
    };
    let sequences =
        |sums: Option<Vec<f32>>| sums.map(|s| Tensor::from_slice(&reduce(s), &[n], Device::Cpu)).transpose();
    Ok(ExtendedLogProbs { logprobs: out, weighted_logps: sequences(weighted)?, log_collision: sequences(collision)? })
}

/// `log Σ_v softmax(row)_v² = log Σ_v exp(2·(x_v − lse))`, summed in f64 (NaN with a NaN lse, as the row's other
/// statistics).
fn log_collision(row: &[f32], lse: f32) -> f32 {
    row.iter().map(|&x| f64::from((2.0 * (x - lse)).exp())).sum::<f64>().ln() as f32
}

pub(super) fn backward(
    head: &LinearHead<'_>,
    plan: &Plan,
    saved: &SequenceLogProbs,
    scales: &[f32],
    cfg: &FusedLinearConfig,
    out: FusedLinearGradsMut<'_>,
) -> Result<()> {
    let head_data = Head::new(head, plan)?;
    let (chunk_len, mut rows, mut grads) = scratch(&head_data, plan, cfg);
    let (h, v) = (plan.h, plan.v);
    let lse = saved.lse.to_f32_cow()?;

    let mut grad_hidden = Sums::new(out.grad_hidden, false)?;
    let mut grad_weight = Sums::new(out.grad_weight, out.accumulate)?;
    let mut grad_bias = out.grad_bias.map(|gb| Sums::new(gb, out.accumulate)).transpose()?;
    // Rows of uncounted tokens get a zero gradient, and the bias sums start from zero unless they accumulate.
    grad_hidden.clear_unless_kept();
    if let Some(gb) = grad_bias.as_mut() {
        gb.clear_unless_kept();
    }
    if plan.tokens.is_empty() {
        grad_weight.clear_unless_kept();
    }
    let mut grad_rows = F32Scratch::zeroed(chunk_len * h);
    for (index, (chunk, scales)) in plan.tokens.chunks(chunk_len).zip(scales.chunks(chunk_len)).enumerate() {
        let c = chunk.len();
        head_data.chunk_logits(chunk, &mut rows, &mut grads)?;
        grads[..c * v].par_chunks_mut(v).zip(chunk.par_iter().zip(scales)).for_each(|(row, (tok, &scale))| {
            row_grad_in_place(row, lse[tok.position], tok.label, scale);
        });
        let g = MatRef::row_major(&grads[..c * v], c, v);
        // d_hidden rows = G·W, scattered back to their positions.
        matmul_tensor(&mut grad_rows[..c * h], g, head_data.weight, (v, h), false, 0.0)?;
        for (src, tok) in grad_rows.chunks_exact(h).zip(chunk) {
            grad_hidden.values()[tok.position * h..(tok.position + 1) * h].copy_from_slice(src);
        }
        // d_weight += Gᵀ·h_rows. The first chunk overwrites unless it adds to kept values: reading fresh zero pages
        // before writing them would fault each one twice (the shared zero page, then a copy with a TLB shootdown).
        let beta = if index == 0 && !grad_weight.keeps_values() { 0.0 } else { 1.0 };
        matmul(grad_weight.values(), g.t(), MatRef::row_major(&rows.f32[..c * h], c, h), beta);
        if let Some(gb) = grad_bias.as_mut() {
            gb.values().par_chunks_mut(4096).enumerate().for_each(|(block, gb)| {
                let columns = block * 4096..block * 4096 + gb.len();
                for row in grads[..c * v].chunks_exact(v) {
                    gb.iter_mut().zip(&row[columns.clone()]).for_each(|(acc, g)| *acc += g);
                }
            });
        }
    }
    grad_hidden.finish()?;
    grad_weight.finish()?;
    grad_bias.map(Sums::finish).transpose()?;
    Ok(())
}

/// An output's f32 sums: an f32 output's own elements, or a fresh f32 buffer written (or added) into a bf16/f16
/// output at the end.
enum Sums<'a> {
    InPlace { out: &'a mut [f32], accumulate: bool },
    Widened { sums: F32Scratch, out: &'a mut Tensor, accumulate: bool },
}

impl<'a> Sums<'a> {
    fn new(out: &'a mut Tensor, accumulate: bool) -> Result<Self> {
        Ok(if out.dtype() == DType::F32 {
            Sums::InPlace { out: out.as_mut_slice::<f32>()?, accumulate }
        } else {
            Sums::Widened { sums: F32Scratch::zeroed(out.numel()), out, accumulate }
        })
    }

    fn values(&mut self) -> &mut [f32] {
        match self {
            Sums::InPlace { out, .. } => out,
            Sums::Widened { sums, .. } => &mut sums[..],
        }
    }

    /// Whether the sums start from values to keep (an f32 output accumulated into).
    fn keeps_values(&self) -> bool {
        matches!(self, Sums::InPlace { accumulate: true, .. })
    }

    fn clear_unless_kept(&mut self) {
        if !self.keeps_values() {
            self.values().fill(0.0);
        }
    }

    fn finish(self) -> Result<()> {
        let Sums::Widened { sums, out, accumulate } = self else { return Ok(()) };
        match out.dtype() {
            DType::BF16 => narrow_into::<bf16>(out.as_mut_slice()?, &sums, accumulate),
            _ => narrow_into::<f16>(out.as_mut_slice()?, &sums, accumulate),
        }
        Ok(())
    }
}

/// `out = sums` (or `out += sums`, added in f32) rounded to `T`.
fn narrow_into<T: FloatElement>(out: &mut [T], sums: &[f32], accumulate: bool) {
    out.par_chunks_mut(1 << 14).zip(sums.par_chunks(1 << 14)).for_each(|(out, sums)| {
        for (o, &s) in out.iter_mut().zip(sums) {
            *o = T::from_f32(if accumulate { o.to_f32() + s } else { s });
        }
    });
}
