//! Reward-model losses on the CPU, per pair or per group in f64.

use super::host;
use super::math::sigmoid;
use super::reduce::sum_items;
use super::reward_model::{bt_stat, BradleyTerryPlan, KwiseMethod, KwisePlan};
use crate::{Result, Tensor};

/// Sums of the per-pair statistics (see [`bt_stat`]) and the gradients with respect to both rewards.
pub(crate) fn bradley_terry(
    chosen: &Tensor,
    rejected: &Tensor,
    margin: Option<&Tensor>,
    plan: &BradleyTerryPlan,
) -> Result<([f64; bt_stat::COUNT], Tensor, Tensor)> {
    let (rc, rr) = (host::floats(chosen)?, host::floats(rejected)?);
    let margin = margin.map(host::floats).transpose()?;
    let mut grads = vec![0.0f64; 2 * plan.pairs];
    let sums = sum_items(&mut grads, 2, |i, grad| {
        // TRL: -logσ(r_c - r_r - margin) + c·(r_c + r_r)², each averaged over pairs.
        let d = rc[i] - rr[i] - margin.as_ref().map_or(0.0, |m| m[i]);
        let center = rc[i] + rr[i];
        let s = sigmoid(d);
        let g = -s.neg;
        grad[0] = plan.mean_scale * (g + 2.0 * plan.coefficient * center);
        grad[1] = plan.mean_scale * (-g + 2.0 * plan.coefficient * center);
        let accurate = if rc[i] > rr[i] { 1.0 } else { 0.0 };
        [-s.log_pos, center * center, accurate, rc[i], rr[i]]
    });
    let (gc, gr): (Vec<f64>, Vec<f64>) = grads.chunks(2).map(|g| (g[0], g[1])).unzip();
    let dtype = chosen.dtype();
    Ok((sums, host::tensor_from(&gc, &[plan.pairs], dtype)?, host::tensor_from(&gr, &[plan.pairs], dtype)?))
}

/// The sums over groups of the loss and of the share of correctly ordered pairs, and the gradient.
pub(crate) fn kwise(rewards: &Tensor, plan: &KwisePlan) -> Result<([f64; 2], Tensor)> {
    let r = host::floats(rewards)?;
    let k = plan.k;
    let mut grad = vec![0.0f64; plan.groups * k];
    let sums = sum_items(&mut grad, k, |g, grad| {
        // Ranked view: position i holds candidate idx[i], the i-th best.
        let idx: Vec<usize> = match &plan.order {
            Some(o) => o[g * k..(g + 1) * k].iter().map(|&v| v as usize).collect(),
            None => (0..k).collect(),
        };
        let x: Vec<f64> = idx.iter().map(|&i| r[g * k + i]).collect();
        let mut d = vec![0.0f64; k];
        let loss = group_loss(plan.method, &x, &mut d);
        for (&i, di) in idx.iter().zip(&d) {
            grad[i] = plan.mean_scale * di;
        }
        let pairs = (k * (k - 1) / 2) as f64;
        let correct = (0..k).flat_map(|i| (i + 1..k).map(move |j| (i, j))).filter(|&(i, j)| x[i] > x[j]).count();
        [loss, correct as f64 / pairs]
    });
    Ok((sums, host::tensor_from(&grad, &[plan.groups, k], rewards.dtype())?))
}

/// The loss of one group of rewards `x` listed best first; writes its gradient into `d`.
fn group_loss(method: KwiseMethod, x: &[f64], d: &mut [f64]) -> f64 {
    let k = x.len();
    match method {
        KwiseMethod::AllPairs => {
            let pairs = (k * (k - 1) / 2) as f64;
            let mut loss = 0.0;
            for i in 0..k {
                for j in i + 1..k {
                    let s = sigmoid(x[i] - x[j]);
                    loss -= s.log_pos;
                    let g = s.neg / pairs;
                    d[i] -= g;
                    d[j] += g;
                }
            }
            loss / pairs
        }
        KwiseMethod::PlackettLuce => {
            // Suffix logsumexps, then dL/dx_j = -1 + Σ_{k ≤ j} exp(x_j - lse_k).
            let mut lse = vec![f64::NEG_INFINITY; k];
            let mut acc = f64::NEG_INFINITY;
            for i in (0..k).rev() {
                let m = acc.max(x[i]);
                acc = m + ((acc - m).exp() + (x[i] - m).exp()).ln();
                lse[i] = acc;
            }
            for j in 0..k {
                d[j] = -1.0 + (0..=j).map(|s| (x[j] - lse[s]).exp()).sum::<f64>();
            }
            (0..k).map(|i| lse[i] - x[i]).sum()
        }
    }
}
