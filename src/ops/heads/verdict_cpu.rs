//! The verdict head on the CPU: rows in parallel, each reading only its B·M listed logits.

use rayon::prelude::*;

use super::classes::VerdictClasses;
use super::host::{scatter, Floats};
use super::verdict::{Dims, Verdict, VerdictGrads};
use crate::runtime::cpu::rows_per_task;
use crate::runtime::{Device, Tensor};
use crate::Result;

/// A logsumexp kept as its max `m` and `s = Σ exp(x − m)`: differences of two such values are taken between the
/// maxima (exact for logits of magnitude 1e4, where `m + ln s` would round to 1e-3).
#[derive(Clone, Copy, Default)]
struct Lse {
    m: f32,
    s: f32,
}

impl Lse {
    /// Of no elements, or of all −∞: `m = −∞`, `s = 0`. With a NaN or +∞ among them: NaN (PyTorch's log_softmax
    /// gives NaN for the whole row; `f32::max` would drop a NaN).
    fn of(xs: impl Iterator<Item = f32> + Clone) -> Lse {
        if xs.clone().any(|x| x.is_nan() || x == f32::INFINITY) {
            return Lse { m: f32::NAN, s: f32::NAN };
        }
        let m = xs.clone().fold(f32::NEG_INFINITY, f32::max);
        if m == f32::NEG_INFINITY {
            return Lse { m, s: 0.0 };
        }
        Lse { m, s: xs.map(|x| (x - m).exp()).sum() }
    }

    /// `x − lse`, for `x` an element or the logsumexp of a subset.
    fn log_ratio(self, part: Lse) -> f32 {
        (part.m - self.m) + (part.s.ln() - self.s.ln())
    }
}

/// The logsumexp of each class's listed logits of one row (into `class_lse` [K]) and of their union (returned:
/// the classes are disjoint, so it merges the classes' values).
fn class_lses(logits: Floats<'_>, row: usize, v: usize, classes: &VerdictClasses, class_lse: &mut [Lse]) -> Lse {
    for (k, l) in class_lse.iter_mut().enumerate() {
        *l = Lse::of(classes.class(k).iter().map(|&id| logits.get(row * v + id as usize)));
    }
    if class_lse.iter().any(|l| l.m.is_nan()) {
        return Lse { m: f32::NAN, s: f32::NAN };
    }
    let m = class_lse.iter().fold(f32::NEG_INFINITY, |m, l| m.max(l.m));
    Lse { m, s: class_lse.iter().filter(|l| l.s > 0.0).map(|l| l.s * (l.m - m).exp()).sum() }
}

pub(super) fn forward(logits: &Tensor, classes: &VerdictClasses, dims: Dims) -> Result<Verdict> {
    let x = Floats::of("logits", logits)?;
    let (b, v, k) = (dims.b, dims.v, classes.num_classes());
    let (mut log_probs, mut probs, mut expected) = (vec![0.0f32; b * k], vec![0.0f32; b * k], vec![0.0f32; b]);
    log_probs
        .par_chunks_mut(k)
        .zip(probs.par_chunks_mut(k))
        .zip(expected.par_iter_mut())
        .enumerate()
        .with_min_len(rows_per_task(b, classes.token_ids().len()))
        .for_each_init(
            || vec![Lse::default(); k],
            |class_lse, (row, ((lp, p), e))| {
                let union = class_lses(x, row, v, classes, class_lse);
                for ((lp, p), &l) in lp.iter_mut().zip(p.iter_mut()).zip(class_lse.iter()) {
                    *lp = union.log_ratio(l);
                    *p = lp.exp();
                }
                if let Some(values) = classes.values() {
                    *e = p.iter().zip(values).map(|(p, v)| p * v).sum();
                }
            },
        );
    Ok(Verdict {
        probs: Tensor::from_slice(&probs, &[b, k], Device::Cpu)?,
        log_probs: Tensor::from_slice(&log_probs, &[b, k], Device::Cpu)?,
        expected_score: classes.values().map(|_| Tensor::from_slice(&expected, &[b], Device::Cpu)).transpose()?,
    })
}

/// With `q_i = exp(x_i − U)` (softmax over the union) and `w_i = exp(x_i − L_k)` (softmax within i's class k):
/// `d log p_j / d x_i = [j = k]·w_i − q_i`, and `dE / d x_i = q_i·(value_k − E)`. So for upstream `g` and `g_E`,
/// `d x_i = g_k·w_i − q_i·Σ_j g_j + g_E·q_i·(value_k − E)`.
pub(super) fn backward(
    logits: &Tensor,
    classes: &VerdictClasses,
    grads: VerdictGrads<'_>,
    dims: Dims,
    grad: &mut Tensor,
) -> Result<()> {
    let x = Floats::of("logits", logits)?;
    let (b, v, k, m) = (dims.b, dims.v, classes.num_classes(), classes.token_ids().len());
    let g_log_probs = grads.log_probs.map(|g| g.as_slice::<f32>()).transpose()?;
    let g_expected = grads.expected_score.map(|g| g.as_slice::<f32>()).transpose()?;
    let mut listed = vec![0.0f32; b * m];
    listed.par_chunks_mut(m).enumerate().with_min_len(rows_per_task(b, m)).for_each_init(
        || vec![Lse::default(); k],
        |class_lse, (row, out)| {
            let union = class_lses(x, row, v, classes, class_lse);
            let p = |j: usize| union.log_ratio(class_lse[j]).exp();
            let g = |j: usize| g_log_probs.map_or(0.0, |g| g[row * k + j]);
            let g_sum: f32 = (0..k).map(g).sum();
            let (g_e, values) = match (g_expected, classes.values()) {
                (Some(ge), Some(values)) => (ge[row], values),
                _ => (0.0, &[][..]),
            };
            let expected: f32 = values.iter().enumerate().map(|(j, val)| p(j) * val).sum();
            let mut out = out.iter_mut();
            for (j, &l) in class_lse.iter().enumerate() {
                let (g_j, value, p_j) = (g(j), values.get(j).copied().unwrap_or(0.0), p(j));
                for (&id, d) in classes.class(j).iter().zip(&mut out) {
                    let z = x.get(row * v + id as usize);
                    // A −∞ logit has no gradient (and its class may have L = −∞ too).
                    let w = if z == f32::NEG_INFINITY { 0.0 } else { (z - l.m).exp() / l.s };
                    let q = p_j * w;
                    *d = g_j * w - q * g_sum + g_e * q * (value - expected);
                }
            }
        },
    );
    let ids = classes.token_ids();
    scatter(grad, &listed, |i| (i / m) * v + ids[i % m] as usize)
}
