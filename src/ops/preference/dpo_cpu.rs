//! The DPO family on the CPU: the per-pair math in f64 (the same formulas as `kernels/preference.cu`).

use super::dpo::{stat, DpoLossType, PairParams, Plan, PreferenceLogps};
use super::host;
use super::math::{log1mexp, sigmoid};
use super::reduce::sum_items;
use crate::{Result, Tensor};

/// One pair's loss, its derivatives with respect to the chosen and rejected log-ratios, and ORPO's two logs.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PairTerms {
    pub loss: f64,
    pub d_chosen: f64,
    pub d_rejected: f64,
    pub log_odds_ratio: f64,
    pub log_odds: f64,
}

/// The loss of one pair from its chosen and rejected log-ratios `a` and `b` (policy minus reference log-probs,
/// length-normalised where the loss is; the reference is 0 when unused). TRL's `logits` is `z = a - b`.
pub(crate) fn pair_terms(p: &PairParams, a: f64, b: f64) -> PairTerms {
    let (beta, eps) = (p.beta, p.label_smoothing);
    let z = a - b;
    // Losses of z alone: (loss, d loss / d z).
    let of_z = |loss: f64, dz: f64| PairTerms { loss, d_chosen: dz, d_rejected: -dz, ..Default::default() };
    match p.kind {
        // TRL sigmoid: -logσ(βz)(1-ε) - logσ(-βz)ε. SimPO (CPO): the same with z - γ/β.
        DpoLossType::Sigmoid | DpoLossType::Simpo => {
            let z = if p.kind == DpoLossType::Simpo { z - p.gamma / beta } else { z };
            let s = sigmoid(beta * z);
            of_z(-(1.0 - eps) * s.log_pos - eps * s.log_neg, beta * (-(1.0 - eps) * s.neg + eps * s.pos))
        }
        // TRL robust: (-logσ(βz)(1-ε) + logσ(-βz)ε) / (1-2ε).
        DpoLossType::Robust => {
            let s = sigmoid(beta * z);
            let k = 1.0 / (1.0 - 2.0 * eps);
            of_z(k * (-(1.0 - eps) * s.log_pos + eps * s.log_neg), k * beta * (-(1.0 - eps) * s.neg - eps * s.pos))
        }
        // TRL exo_pair: σ(βz)(logσ(βz) - log(1-ε)) + σ(-βz)(logσ(-βz) - log ε); the derivative simplifies to
        // β σ(u)σ(-u) (u - log((1-ε)/ε)).
        DpoLossType::ExoPair => {
            let u = beta * z;
            let s = sigmoid(u);
            of_z(
                s.pos * (s.log_pos - (1.0 - eps).ln()) + s.neg * (s.log_neg - eps.ln()),
                beta * s.pos * s.neg * (u - ((1.0 - eps) / eps).ln()),
            )
        }
        // TRL hinge: relu(1 - βz) (torch's relu has derivative 0 at 0).
        DpoLossType::Hinge => {
            let h = 1.0 - beta * z;
            of_z(h.max(0.0), if h > 0.0 { -beta } else { 0.0 })
        }
        // TRL ipo: (z - 1/(2β))².
        DpoLossType::Ipo => {
            let d = z - 0.5 / beta;
            of_z(d * d, 2.0 * d)
        }
        // TRL bco_pair: -logσ(βa - δ) - logσ(-(βb - δ)).
        DpoLossType::BcoPair => {
            let (u, v) = (sigmoid(beta * a - p.delta), sigmoid(beta * b - p.delta));
            PairTerms {
                loss: -u.log_pos - v.log_neg,
                d_chosen: -beta * u.neg,
                d_rejected: beta * v.pos,
                ..Default::default()
            }
        }
        // TRL nca_pair: -logσ(βa) - ½logσ(-βa) - ½logσ(-βb).
        DpoLossType::NcaPair => {
            let (u, v) = (sigmoid(beta * a), sigmoid(beta * b));
            PairTerms {
                loss: -u.log_pos - 0.5 * u.log_neg - 0.5 * v.log_neg,
                d_chosen: beta * (-u.neg + 0.5 * u.pos),
                d_rejected: beta * 0.5 * v.pos,
                ..Default::default()
            }
        }
        // TRL sppo_hard: (a - 1/(2β))² + (b + 1/(2β))².
        DpoLossType::SppoHard => {
            let (da, db) = (a - 0.5 / beta, b + 0.5 / beta);
            PairTerms { loss: da * da + db * db, d_chosen: 2.0 * da, d_rejected: 2.0 * db, ..Default::default() }
        }
        // TRL apo_zero: (1 - σ(βa)) + σ(βb).
        DpoLossType::ApoZero => {
            let (u, v) = (sigmoid(beta * a), sigmoid(beta * b));
            PairTerms {
                loss: 1.0 - u.pos + v.pos,
                d_chosen: -beta * u.pos * u.neg,
                d_rejected: beta * v.pos * v.neg,
                ..Default::default()
            }
        }
        // TRL apo_down: σ(βa) + (1 - σ(β(a - b))).
        DpoLossType::ApoDown => {
            let (u, w) = (sigmoid(beta * a), sigmoid(beta * z));
            let dw = beta * w.pos * w.neg;
            PairTerms {
                loss: u.pos + 1.0 - w.pos,
                d_chosen: beta * u.pos * u.neg - dw,
                d_rejected: dw,
                ..Default::default()
            }
        }
        // TRL odds_ratio_loss: log_odds = (a - b) - (log1p(-exp(a)) - log1p(-exp(b))), loss = -β logσ(log_odds);
        // d log_odds / da = 1/(1 - e^a), d log_odds / db = -1/(1 - e^b).
        DpoLossType::Orpo => {
            let log_odds = z - (log1mexp(a) - log1mexp(b));
            let s = sigmoid(log_odds);
            let d = -beta * s.neg;
            PairTerms {
                loss: -beta * s.log_pos,
                d_chosen: d / -a.exp_m1(),
                d_rejected: d / b.exp_m1(),
                log_odds_ratio: s.log_pos,
                log_odds,
            }
        }
    }
}

/// Sums of the per-pair statistics (see [`stat`]) and the gradients with respect to the policy log-probs.
pub(crate) fn run(inputs: &PreferenceLogps, plan: &Plan) -> Result<([f64; stat::COUNT], Tensor, Tensor)> {
    let pc = host::floats(inputs.policy_chosen)?;
    let pr = host::floats(inputs.policy_rejected)?;
    let reference = match (inputs.reference_chosen, inputs.reference_rejected) {
        (Some(c), Some(r)) if plan.use_reference => Some((host::floats(c)?, host::floats(r)?)),
        _ => None,
    };
    let n = plan.pairs;
    // Per pair: the gradients with respect to the chosen and the rejected log-prob.
    let mut grads = vec![0.0f64; 2 * n];
    let sums = sum_items(&mut grads, 2, |i, grad| {
        let (nc, nr) = match &plan.lengths {
            Some((lc, lr)) => (1.0 / lc[i] as f64, 1.0 / lr[i] as f64),
            None => (1.0, 1.0),
        };
        let (c, r) = (pc[i] * nc, pr[i] * nr);
        let (a, b) = match &reference {
            Some((rc, rr)) => (c - rc[i] * nc, r - rr[i] * nr),
            None => (c, r),
        };
        let t = pair_terms(&plan.params, a, b);
        grad[0] = plan.mean_scale * t.d_chosen * nc + plan.nll_grad;
        grad[1] = plan.mean_scale * t.d_rejected * nr;
        let (reward_c, reward_r) = (plan.params.beta * a, plan.params.beta * b);
        let accurate = if reward_c > reward_r { 1.0 } else { 0.0 };
        [t.loss, reward_c, reward_r, accurate, c, r, t.log_odds_ratio, t.log_odds, pc[i]]
    });
    let (grad_c, grad_r): (Vec<f64>, Vec<f64>) = grads.chunks(2).map(|g| (g[0], g[1])).unzip();
    let dtype = inputs.policy_chosen.dtype();
    Ok((sums, host::tensor_from(&grad_c, &[n], dtype)?, host::tensor_from(&grad_r, &[n], dtype)?))
}
