//! Per-row math of log-softmax over a vocabulary row, shared by the log-prob ops and the fused linear path.
//! One pass with an online logsumexp in f32; the gradient pass re-reads the row (still in cache) once.

use crate::runtime::FloatElement;

/// What one pass over a row of logits yields.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowStats {
    /// log Σ exp(x).
    pub lse: f32,
    /// x[target] − lse: the target token's log-probability (0 when there is no target).
    pub target_logp: f32,
    /// Σ x, for the mean logit.
    pub sum_logits: f32,
    /// −Σ p·log p, the token entropy.
    pub entropy: f32,
}

/// One pass over `row`: logsumexp, target log-prob, logit sum and entropy.
///
/// The entropy uses H = lse − Σ p·x with Σ p·x accumulated online as Σ exp(x − m)·x rescaled with the running max.
#[inline]
pub fn row_stats<T: FloatElement>(row: &[T], target: Option<usize>) -> RowStats {
    let mut max = f32::NEG_INFINITY;
    let mut sum_exp = 0.0f32; // Σ exp(x − max)
    let mut sum_exp_x = 0.0f32; // Σ exp(x − max)·(x − max)
    let mut sum_logits = 0.0f32;
    for &v in row {
        let x = v.to_f32();
        sum_logits += x;
        if x > max {
            // Rescale the running sums to the new max; (x − old) terms shift by (old − new).
            if max == f32::NEG_INFINITY {
                sum_exp = 0.0;
                sum_exp_x = 0.0;
            } else {
                let shift = max - x;
                let scale = shift.exp();
                sum_exp_x = (sum_exp_x + shift * sum_exp) * scale;
                sum_exp *= scale;
            }
            max = x;
        }
        let d = x - max;
        let e = d.exp();
        sum_exp += e;
        sum_exp_x += e * d;
    }
    let lse = max + sum_exp.ln();
    // Σ p·x = max + Σ exp(x − max)(x − max) / Σ exp(x − max)
    let mean_x = max + sum_exp_x / sum_exp;
    let target_logp = target.map_or(0.0, |t| row[t].to_f32() - lse);
    RowStats { lse, target_logp, sum_logits, entropy: lse - mean_x }
}

/// Writes `scale · (softmax(row) − onehot(target))` into `out` (which may be `row` itself, through
/// [`row_grad_in_place`]).
#[inline]
pub fn row_grad<T: FloatElement>(row: &[T], lse: f32, target: usize, scale: f32, out: &mut [T]) {
    for (o, &v) in out.iter_mut().zip(row) {
        *o = T::from_f32(scale * (v.to_f32() - lse).exp());
    }
    out[target] = T::from_f32(scale * ((row[target].to_f32() - lse).exp() - 1.0));
}

/// [`row_grad`] over the row itself, replacing the logits by their gradient.
#[inline]
pub fn row_grad_in_place<T: FloatElement>(row: &mut [T], lse: f32, target: usize, scale: f32) {
    let target_value = row[target].to_f32();
    for v in row.iter_mut() {
        *v = T::from_f32(scale * (v.to_f32() - lse).exp());
    }
    row[target] = T::from_f32(scale * ((target_value - lse).exp() - 1.0));
}
