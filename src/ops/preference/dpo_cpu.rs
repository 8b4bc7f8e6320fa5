//! The DPO family on the CPU: the per-pair math in f64 (the same formulas as `kernels/preference.cu`), and the
//! host pass over the whole batch that BCO's running mean and AOT's sort orders need on either device.

use super::dpo::{order, stat, Grads, PairParams, Plan, PreferenceLogps};
use super::dpo_config::DpoLossType;
use super::host;
use super::math::{log1mexp, sigmoid};
use super::reduce::sum_items;
use crate::{DType, Result, Tensor};

/// One loss term of one pair: its loss, its derivatives with respect to the pair's effective chosen and rejected
/// log-probs `c` and `r`, and ORPO's two logs.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PairTerms {
    pub loss: f64,
    pub d_chosen: f64,
    pub d_rejected: f64,
    pub log_odds_ratio: f64,
    pub log_odds: f64,
}

/// A pair's log-ratios as TRL's `dpo_loss` forms them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LogRatios {
    /// `c - c_ref`, `r - r_ref` (the reference always counted: BCO, NCA, SPPO, DiscoPOP, rewards).
    pub a: f64,
    pub b: f64,
    /// The same with the reference dropped under `reference_free` (TRL's `chosen_logratios`: APO, f-divergences).
    pub a_free: f64,
    pub b_free: f64,
}

impl LogRatios {
    pub(crate) fn new(p: &PairParams, c: f64, r: f64, c_ref: f64, r_ref: f64) -> Self {
        let (a, b) = (c - c_ref, r - r_ref);
        let (a_free, b_free) = if p.reference_free { (c, r) } else { (a, b) };
        LogRatios { a, b, a_free, b_free }
    }

    /// TRL's `logits` z under the f-divergence, with dz/dc and dz/dr.
    fn logits(&self, p: &PairParams) -> (f64, f64, f64) {
        let (a, b) = (self.a_free, self.b_free);
        match p.f_divergence {
            // JS: z = a - b - (softplus(a) - softplus(b)); softplus(x) = -logσ(-x), softplus' = σ.
            1 => {
                let (u, v) = (sigmoid(a), sigmoid(b));
                (a - b + u.log_neg - v.log_neg, u.neg, -v.neg)
            }
            // α-divergence: z = (cap_exp(-αb) - cap_exp(-αa)) / α, cap_exp(x) = exp(min(x, cap)).
            2 => {
                let alpha = p.f_alpha;
                let capped = |x: f64| if x <= p.exp_cap { (x.exp(), x.exp()) } else { (p.exp_cap.exp(), 0.0) };
                let ((ea, da), (eb, db)) = (capped(-alpha * a), capped(-alpha * b));
                ((eb - ea) / alpha, da, -db)
            }
            _ => (a - b, 1.0, -1.0),
        }
    }
}

/// TRL's sigmoid loss with label smoothing of `x`: `-logσ(βx)(1-ε) - logσ(-βx)ε`, and its derivative in x.
pub(crate) fn smoothed_sigmoid(p: &PairParams, x: f64) -> (f64, f64) {
    let (beta, eps) = (p.beta, p.label_smoothing);
    let s = sigmoid(beta * x);
    (-(1.0 - eps) * s.log_pos - eps * s.log_neg, beta * (-(1.0 - eps) * s.neg + eps * s.pos))
}

/// The term of one pair for a loss type that does not sort the batch.
pub(crate) fn pair_terms(p: &PairParams, kind: DpoLossType, l: &LogRatios) -> PairTerms {
    let (beta, eps) = (p.beta, p.label_smoothing);
    // Losses of TRL's logits z alone: (loss, d loss / d z).
    let (z, z_c, z_r) = l.logits(p);
    let of_z = |loss: f64, dz: f64| PairTerms { loss, d_chosen: dz * z_c, d_rejected: dz * z_r, ..Default::default() };
    let (a, b) = (l.a, l.b);
    match kind {
        // TRL sigmoid: -logσ(βz)(1-ε) - logσ(-βz)ε. SimPO (CPO): the same with z - γ/β.
        DpoLossType::Sigmoid => {
            let (loss, dz) = smoothed_sigmoid(p, z);
            of_z(loss, dz)
        }
        DpoLossType::Simpo => {
            let (loss, dz) = smoothed_sigmoid(p, z - p.gamma / beta);
            of_z(loss, dz)
        }
        // TRL robust: (-logσ(βz)(1-ε) + logσ(-βz)ε) / (1-2ε).
        DpoLossType::Robust => {
            let s = sigmoid(beta * z);
            let k = 1.0 / (1.0 - 2.0 * eps);
            of_z(k * (-(1.0 - eps) * s.log_pos + eps * s.log_neg), k * beta * (-(1.0 - eps) * s.neg - eps * s.pos))
        }
        // TRL exo_pair: σ(βz)(logσ(βz) - log(1-ε)) + σ(-βz)(logσ(-βz) - log ε), ε = 1e-3 when 0; the derivative
        // simplifies to β σ(u)σ(-u) (u - log((1-ε)/ε)).
        DpoLossType::ExoPair => {
            let eps = if eps == 0.0 { 1e-3 } else { eps };
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
        // TRL apo_zero: (1 - σ(βa)) + σ(βb), on the reference-free-aware log-ratios.
        DpoLossType::ApoZero => {
            let (u, v) = (sigmoid(beta * l.a_free), sigmoid(beta * l.b_free));
            PairTerms {
                loss: 1.0 - u.pos + v.pos,
                d_chosen: -beta * u.pos * u.neg,
                d_rejected: beta * v.pos * v.neg,
                ..Default::default()
            }
        }
        // TRL apo_down: σ(βa) + (1 - σ(β(a - b))), likewise.
        DpoLossType::ApoDown => {
            let (u, w) = (sigmoid(beta * l.a_free), sigmoid(beta * (l.a_free - l.b_free)));
            let dw = beta * w.pos * w.neg;
            PairTerms {
                loss: u.pos + 1.0 - w.pos,
                d_chosen: beta * u.pos * u.neg - dw,
                d_rejected: dw,
                ..Default::default()
            }
        }
        // TRL discopop: u = β(a - b), m = σ(u/τ); -logσ(u)(1 - m) + e^{-u} m;
        // d/du = -σ(-u)(1 - m) - e^{-u} m + (e^{-u} + logσ(u)) m(1 - m)/τ.
        DpoLossType::Discopop => {
            let u = beta * (a - b);
            let (s, m) = (sigmoid(u), sigmoid(u / p.tau));
            let e = (-u).exp();
            let du = -s.neg * m.neg - e * m.pos + (e + s.log_pos) * m.pos * m.neg / p.tau;
            PairTerms {
                loss: -s.log_pos * m.neg + e * m.pos,
                d_chosen: beta * du,
                d_rejected: -beta * du,
                ..Default::default()
            }
        }
        // TRL odds_ratio_loss: log_odds = (c - r) - (log1p(-exp(c)) - log1p(-exp(r))), loss = -β logσ(log_odds);
        // d log_odds / dc = 1/(1 - e^c), d log_odds / dr = -1/(1 - e^r). (No reference: a = c, b = r.)
        DpoLossType::Orpo => {
            let log_odds = (a - b) - (log1mexp(a) - log1mexp(b));
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
        // Sorting types are handled per position by `Batch::row`.
        DpoLossType::Aot | DpoLossType::AotPair => PairTerms::default(),
    }
}

/// The whole batch on the host in f64: the log-probs the losses see.
pub(crate) struct Batch {
    /// Effective policy log-probs (length-normalised, or LD-DPO-weighted) and reference log-probs (0 when unused).
    pub c: Vec<f64>,
    pub r: Vec<f64>,
    pub c_ref: Vec<f64>,
    pub r_ref: Vec<f64>,
    /// The raw chosen sums (RPO's NLL).
    pub raw_c: Vec<f64>,
    /// d c / d policy_chosen and d r / d policy_rejected (1/length when normalised, else 1).
    pub scale_c: Vec<f64>,
    pub scale_r: Vec<f64>,
    /// Pair weights, when given.
    pub weights: Option<Vec<f64>>,
}

/// Reads the inputs into a [`Batch`].
pub(crate) fn effective(inputs: &PreferenceLogps, plan: &Plan) -> Result<Batch> {
    let n = plan.pairs;
    let raw_c = host::floats(inputs.policy_chosen)?;
    let raw_r = host::floats(inputs.policy_rejected)?;
    let (ref_c, ref_r) = match (inputs.reference_chosen, inputs.reference_rejected) {
        (Some(c), Some(r)) if plan.use_reference => (host::floats(c)?, host::floats(r)?),
        _ => (vec![0.0; n], vec![0.0; n]),
    };
    let (scale_c, scale_r): (Vec<f64>, Vec<f64>) = match &plan.lengths {
        Some((lc, lr)) => lc.iter().zip(lr).map(|(&c, &r)| (1.0 / c as f64, 1.0 / r as f64)).unzip(),
        None => (vec![1.0; n], vec![1.0; n]),
    };
    let c_ref: Vec<f64> = ref_c.iter().zip(&scale_c).map(|(v, s)| v * s).collect();
    let r_ref: Vec<f64> = ref_r.iter().zip(&scale_r).map(|(v, s)| v * s).collect();
    // LD-DPO (TRL applies it to the policy only, after and instead of IPO's averaging): public + α·verbose.
    let (c, r, scale_c, scale_r) = match (plan.ld_alpha, inputs.policy_chosen_verbose, inputs.policy_rejected_verbose) {
        (Some(alpha), Some(cv), Some(rv)) => {
            let ld = |full: &[f64], verbose: Vec<f64>| -> Vec<f64> {
                full.iter().zip(verbose).map(|(f, v)| f - (1.0 - alpha) * v).collect()
            };
            (ld(&raw_c, host::floats(cv)?), ld(&raw_r, host::floats(rv)?), vec![1.0; n], vec![1.0; n])
        }
        _ => {
            let scaled = |v: &[f64], s: &[f64]| -> Vec<f64> { v.iter().zip(s).map(|(v, s)| v * s).collect() };
            (scaled(&raw_c, &scale_c), scaled(&raw_r, &scale_r), scale_c, scale_r)
        }
    };
    let weights = inputs.pair_weights.map(host::floats).transpose()?;
    Ok(Batch { c, r, c_ref, r_ref, raw_c, scale_c, scale_r, weights })
}

/// Stable ascending order of `values` (ties keep index order) and each element's position in it.
fn argsort(values: &[f64]) -> (Vec<i64>, Vec<i64>) {
    let mut perm: Vec<usize> = (0..values.len()).collect();
    perm.sort_by(|&i, &j| values[i].total_cmp(&values[j]));
    let mut rank = vec![0i64; values.len()];
    for (position, &i) in perm.iter().enumerate() {
        rank[i] = position as i64;
    }
    (perm.into_iter().map(|i| i as i64).collect(), rank)
}

impl Batch {
    fn log_ratios(&self, p: &PairParams, i: usize) -> LogRatios {
        LogRatios::new(p, self.c[i], self.r[i], self.c_ref[i], self.r_ref[i])
    }

    fn weight(&self, i: usize) -> f64 {
        self.weights.as_ref().map_or(1.0, |w| w[i])
    }

    /// The mean of the chosen and rejected log-ratios (TRL's BCO reward mean, before β).
    pub(crate) fn mean_log_ratio(&self) -> f64 {
        let n = self.c.len() as f64;
        let sum: f64 = (0..self.c.len()).map(|i| (self.c[i] - self.c_ref[i]) + (self.r[i] - self.r_ref[i])).sum();
        sum / (2.0 * n)
    }

    /// The AOT sort orders, laid out as [`order`] says.
    pub(crate) fn aot_orders(&self) -> Vec<i64> {
        let n = self.c.len();
        let diff = |x: &[f64], y: &[f64]| -> Vec<f64> { x.iter().zip(y).map(|(x, y)| x - y).collect() };
        let (aot_perm, aot_rank) = argsort(&diff(&self.c, &self.r));
        let (ref_perm, _) = argsort(&diff(&self.c_ref, &self.r_ref));
        let (chosen_perm, chosen_rank) = argsort(&diff(&self.c, &self.c_ref));
        let (rejected_perm, rejected_rank) = argsort(&diff(&self.r, &self.r_ref));
        let mut out = Vec::with_capacity(order::ROWS * n);
        for row in [aot_perm, aot_rank, ref_perm, chosen_perm, chosen_rank, rejected_perm, rejected_rank] {
            out.extend(row);
        }
        out
    }
}

/// One pair's share of the batch (pair `k`, which is also sorted position `k`).
#[derive(Clone, Copy, Debug, Default)]
struct Row {
    /// d loss / d c_k and d loss / d r_k, before the mean's scale.
    d_chosen: f64,
    d_rejected: f64,
    /// TRL's per-pair loss at position k (mixture-weighted) and the same times the pair weight.
    loss: f64,
    weighted_loss: f64,
    log_odds_ratio: f64,
    log_odds: f64,
}

impl Batch {
    fn row(&self, plan: &Plan, k: usize) -> Row {
        let p = &plan.params;
        let own = self.log_ratios(p, k);
        let mut row = Row::default();
        let n = self.c.len();
        let at =
            |row_index: usize, i: usize| -> usize { plan.order.as_ref().map_or(i, |o| o[row_index * n + i] as usize) };
        for &(kind, weight) in plan.mixture.terms() {
            let weight = weight as f64;
            match kind {
                // TRL aot: sort(c - r)_i - sort(c_ref - r_ref)_i; pair k's own log-ratios sit at position rank(k).
                DpoLossType::Aot => {
                    let ref_diff = |i: usize| self.c_ref[i] - self.r_ref[i];
                    let diff = |i: usize| self.c[i] - self.r[i];
                    let loss =
                        smoothed_sigmoid(p, diff(at(order::AOT_PERM, k)) - ref_diff(at(order::AOT_REF_PERM, k))).0;
                    row.loss += weight * loss;
                    row.weighted_loss += weight * self.weight(k) * loss;
                    let j = at(order::AOT_RANK, k);
                    let d = smoothed_sigmoid(p, diff(k) - ref_diff(at(order::AOT_REF_PERM, j))).1;
                    row.d_chosen += weight * self.weight(j) * d;
                    row.d_rejected -= weight * self.weight(j) * d;
                }
                // TRL aot_pair: sort(a)_i - sort(b)_i; a_k sits at position rank_a(k), b_k at rank_b(k).
                DpoLossType::AotPair => {
                    let a = |i: usize| self.c[i] - self.c_ref[i];
                    let b = |i: usize| self.r[i] - self.r_ref[i];
                    let (perm_a, perm_b) = (order::PAIR_CHOSEN_PERM, order::PAIR_REJECTED_PERM);
                    let loss = smoothed_sigmoid(p, a(at(perm_a, k)) - b(at(perm_b, k))).0;
                    row.loss += weight * loss;
                    row.weighted_loss += weight * self.weight(k) * loss;
                    let j = at(order::PAIR_CHOSEN_RANK, k);
                    row.d_chosen += weight * self.weight(j) * smoothed_sigmoid(p, a(k) - b(at(perm_b, j))).1;
                    let j = at(order::PAIR_REJECTED_RANK, k);
                    row.d_rejected -= weight * self.weight(j) * smoothed_sigmoid(p, a(at(perm_a, j)) - b(k)).1;
                }
                _ => {
                    let t = pair_terms(p, kind, &own);
                    let w = weight * self.weight(k);
                    row.loss += weight * t.loss;
                    row.weighted_loss += w * t.loss;
                    row.d_chosen += w * t.d_chosen;
                    row.d_rejected += w * t.d_rejected;
                    row.log_odds_ratio = t.log_odds_ratio;
                    row.log_odds = t.log_odds;
                }
            }
        }
        row
    }
}

/// Sums of the per-pair statistics (see [`stat`]), the per-pair losses and the gradients.
pub(crate) fn run(inputs: &PreferenceLogps, batch: &Batch, plan: &Plan) -> Result<([f64; stat::COUNT], Grads)> {
    let n = plan.pairs;
    let ld = plan.ld_alpha;
    // Per pair: the gradients with respect to the chosen and rejected log-probs, and the loss.
    let mut out = vec![0.0f64; 3 * n];
    let sums = sum_items(&mut out, 3, |k, out| {
        let row = batch.row(plan, k);
        let (dc, dr) = (plan.mean_scale * row.d_chosen, plan.mean_scale * row.d_rejected);
        out[0] = dc * batch.scale_c[k] + plan.nll_grad;
        out[1] = dr * batch.scale_r[k];
        out[2] = row.loss;
        let l = batch.log_ratios(&plan.params, k);
        let (reward_c, reward_r) =
            (plan.reward_scale * plan.params.beta * l.a, plan.reward_scale * plan.params.beta * l.b);
        let accurate = if reward_c > reward_r { 1.0 } else { 0.0 };
        let (c, r) = (batch.c[k], batch.r[k]);
        [row.weighted_loss, reward_c, reward_r, accurate, c, r, row.log_odds_ratio, row.log_odds, batch.raw_c[k]]
    });
    let column = |i: usize| -> Vec<f64> { out.chunks(3).map(|o| o[i]).collect() };
    let dtype = inputs.policy_chosen.dtype();
    let (grad_c, grad_r) = (column(0), column(1));
    // LD-DPO: c = full - (1 - α)·verbose, so d/d verbose = -(1 - α)·d/dc (the NLL term is on the full sums).
    let verbose = |grad: &[f64], nll: f64| -> Option<Result<Tensor>> {
        ld.map(|alpha| {
            let g: Vec<f64> = grad.iter().map(|g| -(1.0 - alpha) * (g - nll)).collect();
            host::tensor_from(&g, &[n], dtype)
        })
    };
    let grads = Grads {
        losses: host::tensor_from(&column(2), &[n], DType::F32)?,
        chosen_verbose: verbose(&grad_c, plan.nll_grad).transpose()?,
        rejected_verbose: verbose(&grad_r, 0.0).transpose()?,
        chosen: host::tensor_from(&grad_c, &[n], dtype)?,
        rejected: host::tensor_from(&grad_r, &[n], dtype)?,
    };
    Ok((sums, grads))
}
