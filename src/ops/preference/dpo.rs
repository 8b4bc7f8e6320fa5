//! The DPO family on per-sequence log-probabilities: inputs, outputs, argument checks and the device dispatch.
//!
//! Formulas follow TRL (see `dpo_config.rs` for the versions); each loss type's formula is written next to its
//! code in `dpo_cpu.rs` and in `kernels/preference.cu`.

use crate::ops::check;
use crate::runtime::{Device, Tensor};
use crate::{Error, Result};

use super::args::same_float_dtype;
use super::dpo_config::{BcoDelta, DpoConfig, DpoLossType, FDivergence, LossMixture};
use super::{cuda, dpo_cpu, host};

/// Per-sequence log-probabilities of P preference pairs: float tensors of shape `[P]`, all of one dtype and on one
/// device. Log-probs are sums over the completion tokens; the token counts (i32 or i64, each ≥ 1) let the op take
/// TRL's averages for IPO, SimPO and ORPO and the RPO NLL. Reference log-probs may be precomputed: they are inputs.
#[derive(Clone, Copy, Debug)]
pub struct PreferenceLogps<'a> {
    /// Log-probs of the chosen completions under the trained policy; the gradient is taken with respect to them.
    pub policy_chosen: &'a Tensor,
    /// Log-probs of the rejected completions under the trained policy.
    pub policy_rejected: &'a Tensor,
    /// Reference-model log-probs of the chosen completions: required unless reference-free, ignored (after the
    /// shape, dtype and device checks) by SimPO and ORPO.
    pub reference_chosen: Option<&'a Tensor>,
    /// Reference-model log-probs of the rejected completions.
    pub reference_rejected: Option<&'a Tensor>,
    /// Completion token counts of the chosen sequences (IPO, SimPO, ORPO, RPO).
    pub chosen_lengths: Option<&'a Tensor>,
    /// Completion token counts of the rejected sequences (IPO, SimPO, ORPO).
    pub rejected_lengths: Option<&'a Tensor>,
    /// LD-DPO: the policy log-probs of the chosen completions' verbose parts (the tokens past the public length
    /// `min(chosen, rejected length)`), part of `policy_chosen`; the gradient is taken with respect to them too.
    pub policy_chosen_verbose: Option<&'a Tensor>,
    /// LD-DPO: the verbose parts of the rejected completions.
    pub policy_rejected_verbose: Option<&'a Tensor>,
    /// Per-pair weights, constants (WPO: TRL's `policy_weights`, `min(exp(w_chosen + w_rejected), 1)`): the loss
    /// is `mean(wᵢ · (lossᵢ + α·NLL))` as TRL's `use_weighting` makes it (AOT's losses are at sorted positions:
    /// weight i multiplies position i, as in TRL).
    pub pair_weights: Option<&'a Tensor>,
}

impl<'a> PreferenceLogps<'a> {
    /// Policy log-probs only (add the rest with the builders below).
    pub fn new(policy_chosen: &'a Tensor, policy_rejected: &'a Tensor) -> Self {
        PreferenceLogps {
            policy_chosen,
            policy_rejected,
            reference_chosen: None,
            reference_rejected: None,
            chosen_lengths: None,
            rejected_lengths: None,
            policy_chosen_verbose: None,
            policy_rejected_verbose: None,
            pair_weights: None,
        }
    }

    /// With reference log-probs.
    pub fn with_reference(self, chosen: &'a Tensor, rejected: &'a Tensor) -> Self {
        PreferenceLogps { reference_chosen: Some(chosen), reference_rejected: Some(rejected), ..self }
    }

    /// With token counts.
    pub fn with_lengths(self, chosen: &'a Tensor, rejected: &'a Tensor) -> Self {
        PreferenceLogps { chosen_lengths: Some(chosen), rejected_lengths: Some(rejected), ..self }
    }

    /// With LD-DPO's verbose parts of the policy log-probs (for `ld_alpha`).
    pub fn with_verbose(self, chosen: &'a Tensor, rejected: &'a Tensor) -> Self {
        PreferenceLogps { policy_chosen_verbose: Some(chosen), policy_rejected_verbose: Some(rejected), ..self }
    }

    /// With per-pair weights (WPO).
    pub fn with_pair_weights(self, weights: &'a Tensor) -> Self {
        PreferenceLogps { pair_weights: Some(weights), ..self }
    }
}

/// TRL's logged metrics, means over the pairs. Rewards are `β·(logp - ref logp)` (`β·logp` for SimPO and ORPO, and
/// without reference log-probs), times the sum of the weights of a loss mixture; logps are the policy log-probs the
/// losses see (length-normalised where the loss is, LD-DPO-weighted with `ld_alpha`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DpoMetrics {
    /// `rewards/chosen`.
    pub rewards_chosen: f32,
    /// `rewards/rejected`.
    pub rewards_rejected: f32,
    /// Share of pairs whose chosen reward is strictly above the rejected one.
    pub rewards_accuracies: f32,
    /// `rewards/margins`: mean of chosen minus rejected reward.
    pub rewards_margins: f32,
    /// `logps/chosen`.
    pub logps_chosen: f32,
    /// `logps/rejected`.
    pub logps_rejected: f32,
    /// The RPO NLL term (before α), when `rpo_alpha` is set.
    pub nll_loss: Option<f32>,
    /// ORPO's `log_odds_ratio` (mean of logσ(log_odds)).
    pub log_odds_ratio: Option<f32>,
    /// ORPO's `log_odds_chosen` (mean of log_odds).
    pub log_odds_chosen: Option<f32>,
}

/// The loss, its gradient with respect to the policy log-probs (dtype of the inputs, scaled by `grad_output`)
/// and the metrics.
#[derive(Debug)]
pub struct DpoOutput {
    /// Mean over pairs (weighted by the pair weights), plus `α·NLL` with RPO.
    pub loss: f32,
    /// TRL's per-pair `losses` (f32 `[P]`, what `dpo_loss` returns: the weighted sum over a mixture, without the
    /// NLL term and the pair weights; for AOT, at the sorted positions).
    pub losses: Tensor,
    /// d loss / d `policy_chosen`, `[P]`.
    pub grad_policy_chosen: Tensor,
    /// d loss / d `policy_rejected`, `[P]`.
    pub grad_policy_rejected: Tensor,
    /// d loss / d `policy_chosen_verbose` (LD-DPO).
    pub grad_policy_chosen_verbose: Option<Tensor>,
    /// d loss / d `policy_rejected_verbose` (LD-DPO).
    pub grad_policy_rejected_verbose: Option<Tensor>,
    /// TRL's logged metrics.
    pub metrics: DpoMetrics,
    /// BCO's δ to pass to the next step: the running mean updated with this batch (the config's, when not
    /// running or when the loss has no `bco_pair` term).
    pub bco_delta: BcoDelta,
}

/// Per-pair statistics both backends sum over pairs, in this order (the kernels write the same rows).
pub(crate) mod stat {
    pub const LOSS: usize = 0;
    pub const REWARD_CHOSEN: usize = 1;
    pub const REWARD_REJECTED: usize = 2;
    pub const ACCURACY: usize = 3;
    pub const LOGP_CHOSEN: usize = 4;
    pub const LOGP_REJECTED: usize = 5;
    pub const LOG_ODDS_RATIO: usize = 6;
    pub const LOG_ODDS: usize = 7;
    /// The raw (summed) chosen log-probs, for the RPO NLL.
    pub const CHOSEN_SUM: usize = 8;
    pub const COUNT: usize = 9;
}

/// The rows of [`Plan::order`] (each `[P]`), the batch's sort orders for AOT: `PERM` rows list the pairs by
/// ascending value, `RANK` rows give each pair's position.
pub(crate) mod order {
    /// `aot`: the policy log-ratio differences `c - r`.
    pub const AOT_PERM: usize = 0;
    pub const AOT_RANK: usize = 1;
    /// `aot`: the reference log-ratio differences `c_ref - r_ref`.
    pub const AOT_REF_PERM: usize = 2;
    /// `aot_pair`: the chosen log-ratios `a`.
    pub const PAIR_CHOSEN_PERM: usize = 3;
    pub const PAIR_CHOSEN_RANK: usize = 4;
    /// `aot_pair`: the rejected log-ratios `b`.
    pub const PAIR_REJECTED_PERM: usize = 5;
    pub const PAIR_REJECTED_RANK: usize = 6;
    pub const ROWS: usize = 7;
}

/// The scalars of one call, checked, in the form both backends use.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PairParams {
    pub beta: f64,
    /// Label smoothing (EXO takes 1e-3 for 0, as TRL does).
    pub label_smoothing: f64,
    pub gamma: f64,
    pub delta: f64,
    pub tau: f64,
    /// The f-divergence code (`FDivergence::code`), its α, and the exponent cap of the inputs' dtype.
    pub f_divergence: i32,
    pub f_alpha: f64,
    pub exp_cap: f64,
    /// TRL's `reference_free`: the `logits` and APO losses leave the reference out.
    pub reference_free: bool,
}

/// What the backends need beyond the tensors.
pub(crate) struct Plan {
    pub pairs: usize,
    pub params: PairParams,
    pub mixture: LossMixture,
    /// Whether the reference tensors are read (else they are 0).
    pub use_reference: bool,
    /// Token counts when the loss normalises by them.
    pub lengths: Option<(Vec<i64>, Vec<i64>)>,
    /// LD-DPO's α.
    pub ld_alpha: Option<f64>,
    /// The AOT sort orders (`order::ROWS · P`, see [`order`]) when the mixture has an AOT term.
    pub order: Option<Vec<i64>>,
    /// `d loss / d chosen_sum[p]` of the RPO term (0 without RPO): `-grad_output·α·mean(w) / Σ chosen lengths`.
    pub nll_grad: f64,
    /// `grad_output / P`.
    pub mean_scale: f64,
    /// The factor of the logged rewards (the sum of the mixture's weights).
    pub reward_scale: f64,
}

/// DPO-family loss, gradient and metrics; CPU or CUDA by the device of the inputs.
pub fn dpo_loss(inputs: &PreferenceLogps, cfg: &DpoConfig) -> Result<DpoOutput> {
    let (device, mut plan, checked) = validate(inputs, cfg)?;
    let mixture = plan.mixture;
    // BCO's running mean and AOT's sort orders need the whole batch first.
    let bco = mixture.contains(DpoLossType::BcoPair);
    let sorts = mixture.terms().iter().any(|(t, _)| t.sorts_the_batch());
    let logps = if device == Device::Cpu || bco || sorts { Some(dpo_cpu::effective(inputs, &plan)?) } else { None };
    let mut bco_delta = cfg.bco_delta;
    if let (true, Some(l)) = (bco, &logps) {
        let (delta, next) = cfg.bco_delta.update(plan.params.beta * l.mean_log_ratio());
        plan.params.delta = delta;
        bco_delta = next;
    }
    if let (true, Some(l)) = (sorts, &logps) {
        plan.order = Some(l.aot_orders());
    }
    let sums_and_grads = match (device, &logps) {
        (Device::Cpu, Some(l)) => dpo_cpu::run(inputs, l, &plan)?,
        _ => cuda::dpo(inputs, &plan)?,
    };
    let (sums, grads) = sums_and_grads;
    let n = plan.pairs as f64;
    let mean = |i: usize| (sums[i] / n) as f32;
    let nll = cfg.rpo_alpha.map(|_| -sums[stat::CHOSEN_SUM] / checked.chosen_tokens);
    let rpo = cfg.rpo_alpha.map_or(0.0, |a| a as f64 * nll.unwrap_or(0.0) * checked.mean_weight);
    let loss = (sums[stat::LOSS] / n + rpo) as f32;
    let orpo = mixture.contains(DpoLossType::Orpo);
    // ORPO at an average log-prob of 0 has an infinite log-odds but a finite loss (and NaN gradients).
    let log_odds_sum = if orpo { sums[stat::LOG_ODDS] } else { 0.0 };
    if !loss.is_finite() || !log_odds_sum.is_finite() {
        let names: Vec<_> = mixture.terms().iter().map(|(t, _)| t.trl_name()).collect();
        let why = if orpo {
            "the log-probabilities contain NaN or infinity, or an average log-probability is not below 0 (ORPO \
             needs probabilities below 1)"
        } else {
            "the inputs contain NaN or infinity, or the loss overflows (DiscoPOP's e^(-βz) at very negative z)"
        };
        // Name what is not finite: with ORPO the loss itself can be finite while the log-odds (and the gradient) are not.
        let what = if loss.is_finite() {
            format!(
                "ORPO's log-odds ratio is {log_odds_sum} (the {} loss, {loss}, has no finite gradient)",
                names.join(" + ")
            )
        } else {
            format!("the {} loss is {loss}", names.join(" + "))
        };
        return Err(Error::InvalidArgument(format!("{what}: {why}")));
    }
    let metrics = DpoMetrics {
        rewards_chosen: mean(stat::REWARD_CHOSEN),
        rewards_rejected: mean(stat::REWARD_REJECTED),
        rewards_accuracies: mean(stat::ACCURACY),
        rewards_margins: ((sums[stat::REWARD_CHOSEN] - sums[stat::REWARD_REJECTED]) / n) as f32,
        logps_chosen: mean(stat::LOGP_CHOSEN),
        logps_rejected: mean(stat::LOGP_REJECTED),
        nll_loss: nll.map(|v| v as f32),
        log_odds_ratio: orpo.then(|| mean(stat::LOG_ODDS_RATIO)),
        log_odds_chosen: orpo.then(|| mean(stat::LOG_ODDS)),
    };
    Ok(DpoOutput {
        loss,
        losses: grads.losses,
        grad_policy_chosen: grads.chosen,
        grad_policy_rejected: grads.rejected,
        grad_policy_chosen_verbose: grads.chosen_verbose,
        grad_policy_rejected_verbose: grads.rejected_verbose,
        metrics,
        bco_delta,
    })
}

/// What a backend returns besides the sums: the per-pair losses and the gradients.
pub(crate) struct Grads {
    pub losses: Tensor,
    pub chosen: Tensor,
    pub rejected: Tensor,
    pub chosen_verbose: Option<Tensor>,
    pub rejected_verbose: Option<Tensor>,
}

/// Values read on the host while checking.
struct Checked {
    /// Σ chosen token counts (the RPO NLL's denominator).
    chosen_tokens: f64,
    /// The mean pair weight (1 without weights): the factor of the RPO term under WPO.
    mean_weight: f64,
}

/// Checks shapes, dtypes, devices and hyper-parameters; reads the token counts and pair weights.
fn validate(inputs: &PreferenceLogps, cfg: &DpoConfig) -> Result<(Device, Plan, Checked)> {
    let mixture = cfg.losses();
    let names: Vec<_> = mixture.terms().iter().map(|(t, _)| t.trl_name()).collect();
    let name = names.join(" + ");
    check::float("policy_chosen", inputs.policy_chosen)?;
    let dtype = inputs.policy_chosen.dtype();
    let pairs = check::rank("policy_chosen", inputs.policy_chosen, 1)?[0];
    check::non_empty("policy_chosen", pairs)?;

    let floats = [
        ("policy_rejected", Some(inputs.policy_rejected)),
        ("reference_chosen", inputs.reference_chosen),
        ("reference_rejected", inputs.reference_rejected),
        ("policy_chosen_verbose", inputs.policy_chosen_verbose),
        ("policy_rejected_verbose", inputs.policy_rejected_verbose),
        ("pair_weights", inputs.pair_weights),
    ];
    let mut tensors = vec![("policy_chosen", inputs.policy_chosen)];
    for (arg, t) in floats {
        if let Some(t) = t {
            same_float_dtype(arg, t, dtype, "policy_chosen")?;
            check::shape(arg, t, &[pairs])?;
            tensors.push((arg, t));
        }
    }
    for (arg, t) in [("chosen_lengths", inputs.chosen_lengths), ("rejected_lengths", inputs.rejected_lengths)] {
        if let Some(t) = t {
            check::integer(arg, t)?;
            check::shape(arg, t, &[pairs])?;
            tensors.push((arg, t));
        }
    }
    let device = check::same_device(&tensors)?;

    for (arg, value) in [
        ("beta", cfg.beta),
        ("label_smoothing", cfg.label_smoothing),
        ("simpo_gamma", cfg.simpo_gamma),
        ("discopop_tau", cfg.discopop_tau),
        ("grad_output", cfg.grad_output),
    ] {
        check::finite(arg, value)?;
    }
    if cfg.beta <= 0.0 {
        return Err(Error::InvalidArgument(format!("`beta` must be positive, got {}", cfg.beta)));
    }
    if cfg.discopop_tau <= 0.0 {
        return Err(Error::InvalidArgument(format!("`discopop_tau` must be positive, got {}", cfg.discopop_tau)));
    }
    if !(0.0..0.5).contains(&cfg.label_smoothing) {
        return Err(Error::InvalidArgument(format!(
            "`label_smoothing` must be in [0, 0.5), got {}",
            cfg.label_smoothing
        )));
    }
    if let Some(alpha) = cfg.rpo_alpha {
        check::finite("rpo_alpha", alpha)?;
        if alpha < 0.0 {
            return Err(Error::InvalidArgument(format!("`rpo_alpha` must not be negative, got {alpha}")));
        }
    }
    match cfg.bco_delta {
        BcoDelta::Fixed(delta) => check::finite("bco_delta", delta)?,
        BcoDelta::Running { mean, count } => {
            check::finite("bco_delta", mean)?;
            check::finite("bco_count", count)?;
            if count < 0.0 {
                return Err(Error::InvalidArgument(format!("`bco_count` must not be negative, got {count}")));
            }
        }
    }
    if let FDivergence::AlphaDivergence(alpha) = cfg.f_divergence {
        check::finite("f_alpha_divergence_coef", alpha)?;
        if alpha == 0.0 {
            return Err(Error::InvalidArgument(
                "`f_alpha_divergence_coef` must not be 0 (the α-divergence divides by it; α → 0 is reverse KL)".into(),
            ));
        }
    }
    let uses_reference = mixture.uses_reference();
    if !uses_reference && (cfg.f_divergence != FDivergence::ReverseKl || cfg.ld_alpha.is_some()) {
        return Err(Error::InvalidArgument(format!(
            "the {name} loss takes no f-divergence and no `ld_alpha` (they act on log-ratios to a reference)"
        )));
    }
    let verbose = [inputs.policy_chosen_verbose.is_some(), inputs.policy_rejected_verbose.is_some()];
    match (cfg.ld_alpha, verbose) {
        (Some(alpha), [true, true]) => check::finite("ld_alpha", alpha)?,
        (Some(_), _) => {
            return Err(Error::InvalidArgument(
                "`ld_alpha` needs `policy_chosen_verbose` and `policy_rejected_verbose` (the log-probs of the tokens \
                 past each pair's public length)"
                    .into(),
            ))
        }
        (None, [false, false]) => {}
        (None, _) => {
            return Err(Error::InvalidArgument(
                "`policy_chosen_verbose` / `policy_rejected_verbose` are LD-DPO's: set `ld_alpha` to use them".into(),
            ))
        }
    }

    let references = [inputs.reference_chosen.is_some(), inputs.reference_rejected.is_some()];
    if uses_reference && !cfg.reference_free && references != [true, true] {
        return Err(Error::InvalidArgument(format!(
            "the {name} loss needs `reference_chosen` and `reference_rejected` (precomputed reference log-probs) \
             unless `reference_free` is set"
        )));
    }
    if references == [true, false] || references == [false, true] {
        return Err(Error::InvalidArgument("give both `reference_chosen` and `reference_rejected`, or neither".into()));
    }
    let normalised = mixture.length_normalised();
    let needs_chosen = normalised || cfg.rpo_alpha.is_some();
    let chosen_lengths = match inputs.chosen_lengths {
        Some(t) => Some(token_counts("chosen_lengths", t)?),
        None if needs_chosen => {
            let why = if normalised {
                format!("the {name} loss averages over tokens")
            } else {
                "the RPO NLL term averages over the chosen tokens".into()
            };
            return Err(Error::InvalidArgument(format!("`chosen_lengths` is required: {why}")));
        }
        None => None,
    };
    let rejected_lengths = match inputs.rejected_lengths {
        Some(t) if normalised => Some(token_counts("rejected_lengths", t)?),
        None if normalised => {
            return Err(Error::InvalidArgument(format!(
                "`rejected_lengths` is required: the {name} loss averages over tokens"
            )));
        }
        _ => None,
    };
    if cfg.use_weighting && inputs.pair_weights.is_none() {
        return Err(Error::InvalidArgument("`use_weighting` needs `pair_weights` (WPO's per-pair weights)".into()));
    }
    let mean_weight = match inputs.pair_weights {
        Some(w) => {
            let w = host::floats(w)?;
            if let Some((i, v)) = w.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(Error::InvalidArgument(format!("`pair_weights`[{i}] is {v}: weights must be finite")));
            }
            w.iter().sum::<f64>() / pairs as f64
        }
        None => 1.0,
    };
    let chosen_tokens = chosen_lengths.as_ref().map_or(0.0, |l| l.iter().map(|&v| v as f64).sum());
    let nll_grad = cfg.rpo_alpha.map_or(0.0, |a| -(cfg.grad_output as f64) * a as f64 * mean_weight / chosen_tokens);
    let lengths = match (chosen_lengths, rejected_lengths) {
        (Some(c), Some(r)) if normalised => Some((c, r)),
        _ => None,
    };
    let (f_divergence, f_alpha) = cfg.f_divergence.code();
    let params = PairParams {
        beta: cfg.beta as f64,
        label_smoothing: cfg.label_smoothing as f64,
        gamma: cfg.simpo_gamma as f64,
        delta: 0.0,
        tau: cfg.discopop_tau as f64,
        f_divergence,
        f_alpha,
        exp_cap: FDivergence::exp_cap(dtype),
        reference_free: cfg.reference_free,
    };
    let plan = Plan {
        pairs,
        params,
        mixture,
        use_reference: uses_reference && references == [true, true],
        lengths,
        ld_alpha: cfg.ld_alpha.map(|a| a as f64),
        order: None,
        nll_grad,
        mean_scale: cfg.grad_output as f64 / pairs as f64,
        reward_scale: mixture.total_weight(),
    };
    Ok((device, plan, Checked { chosen_tokens, mean_weight }))
}

/// Token counts, each at least 1.
fn token_counts(arg: &'static str, t: &Tensor) -> Result<Vec<i64>> {
    let counts = host::integers(arg, t)?;
    if let Some((i, v)) = counts.iter().enumerate().find(|(_, &v)| v < 1) {
        return Err(Error::InvalidArgument(format!("`{arg}`[{i}] is {v}: token counts must be at least 1")));
    }
    Ok(counts)
}
