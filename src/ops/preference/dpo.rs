//! The DPO family on per-sequence log-probabilities: types, argument checks and the device dispatch.
//!
//! Formulas follow TRL (`DPOTrainer.dpo_loss`, `CPOTrainer.cpo_loss` for SimPO, `ORPOTrainer.odds_ratio_loss`);
//! each loss type's formula is written next to its code in `dpo_cpu.rs` and in `kernels/preference.cu`.

use crate::ops::check;
use crate::runtime::{Device, Tensor};
use crate::{Error, Result};

use super::args::same_float_dtype;
use super::{cuda, dpo_cpu, host};

/// The loss types, named as TRL names them (`DPOConfig.loss_type`; `simpo` is `CPOConfig.loss_type`; `orpo` is
/// the odds-ratio term of `ORPOTrainer`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DpoLossType {
    /// `-logσ(βz)(1-ε) - logσ(-βz)ε`, z the log-ratio difference; ε > 0 is conservative DPO (cDPO).
    Sigmoid,
    /// `relu(1 - βz)` (SLiC).
    Hinge,
    /// `(z - 1/(2β))²` on length-normalised log-probs (IPO).
    Ipo,
    /// `(-logσ(βz)(1-ε) + logσ(-βz)ε) / (1-2ε)` (robust DPO).
    Robust,
    /// `-logσ(βa - δ) - logσ(-(βb - δ))`, a and b the chosen and rejected log-ratios, δ the caller's running mean of
    /// rewards (BCO).
    BcoPair,
    /// EXO: `σ(βz)(logσ(βz) - log(1-ε)) + σ(-βz)(logσ(-βz) - log ε)`, with ε = 1e-3 when label smoothing is 0.
    ExoPair,
    /// NCA: `-logσ(βa) - ½logσ(-βa) - ½logσ(-βb)`.
    NcaPair,
    /// SPPO with hard probabilities: `(a - 1/(2β))² + (b + 1/(2β))²`.
    SppoHard,
    /// APO-zero: `1 - σ(βa) + σ(βb)`.
    ApoZero,
    /// APO-down: `σ(βa) + 1 - σ(β(a - b))`.
    ApoDown,
    /// SimPO (reference-free, length-normalised): the sigmoid loss on `z = c - r - γ/β`.
    Simpo,
    /// The ORPO odds-ratio term `-β·logσ(log_odds)` on length-normalised log-probs; TRL's ORPO loss adds the NLL of
    /// the chosen sequences with weight 1 (`rpo_alpha = Some(1.0)` here).
    Orpo,
}

impl DpoLossType {
    /// Every loss type, in the order of their kernel codes.
    pub const ALL: [DpoLossType; 12] = [
        DpoLossType::Sigmoid,
        DpoLossType::Hinge,
        DpoLossType::Ipo,
        DpoLossType::Robust,
        DpoLossType::BcoPair,
        DpoLossType::ExoPair,
        DpoLossType::NcaPair,
        DpoLossType::SppoHard,
        DpoLossType::ApoZero,
        DpoLossType::ApoDown,
        DpoLossType::Simpo,
        DpoLossType::Orpo,
    ];

    /// TRL's name for this loss type.
    pub fn trl_name(self) -> &'static str {
        match self {
            DpoLossType::Sigmoid => "sigmoid",
            DpoLossType::Hinge => "hinge",
            DpoLossType::Ipo => "ipo",
            DpoLossType::Robust => "robust",
            DpoLossType::BcoPair => "bco_pair",
            DpoLossType::ExoPair => "exo_pair",
            DpoLossType::NcaPair => "nca_pair",
            DpoLossType::SppoHard => "sppo_hard",
            DpoLossType::ApoZero => "apo_zero",
            DpoLossType::ApoDown => "apo_down",
            DpoLossType::Simpo => "simpo",
            DpoLossType::Orpo => "orpo",
        }
    }

    /// The loss type TRL calls `name`.
    pub fn from_trl_name(name: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|t| t.trl_name() == name).ok_or_else(|| {
            let known: Vec<_> = Self::ALL.iter().map(|t| t.trl_name()).collect();
            Error::InvalidArgument(format!("unknown DPO loss type `{name}`; known: {}", known.join(", ")))
        })
    }

    /// Whether TRL divides the log-probs by the token counts for this loss (`average_log_prob`).
    pub fn length_normalised(self) -> bool {
        matches!(self, DpoLossType::Ipo | DpoLossType::Simpo | DpoLossType::Orpo)
    }

    /// Whether the loss compares against a reference model (SimPO and ORPO never do).
    pub fn uses_reference(self) -> bool {
        !matches!(self, DpoLossType::Simpo | DpoLossType::Orpo)
    }

    /// The number the kernels switch on (the index in [`DpoLossType::ALL`]).
    pub(crate) fn code(self) -> i32 {
        Self::ALL.iter().position(|&t| t == self).unwrap_or(0) as i32
    }
}

/// Hyper-parameters of [`dpo_loss`]. `Default` is TRL's: sigmoid, β = 0.1, no smoothing, SimPO γ = 0.5.
#[derive(Clone, Copy, Debug)]
pub struct DpoConfig {
    /// Which loss (TRL's `loss_type`).
    pub loss_type: DpoLossType,
    /// β > 0 (for IPO, TRL's τ; for ORPO, TRL's λ).
    pub beta: f32,
    /// ε in [0, 0.5): cDPO / robust / EXO / SimPO label smoothing.
    pub label_smoothing: f32,
    /// Compare against a uniform reference: reference log-probs are taken as 0 (any given are checked, then
    /// ignored, as TRL does).
    pub reference_free: bool,
    /// Adds `α · NLL` of the chosen sequences (RPO; TRL's `rpo_alpha`, CPO's `cpo_alpha`, ORPO with α = 1):
    /// `NLL = -Σ chosen log-probs / Σ chosen token counts`, on the raw (summed) log-probs. Needs `chosen_lengths`.
    pub rpo_alpha: Option<f32>,
    /// SimPO's target margin γ.
    pub simpo_gamma: f32,
    /// BCO's δ: the caller's running mean of rewards (see [`DpoMetrics::mean_reward`]).
    pub bco_delta: f32,
    /// The upstream gradient of the loss (1 when the loss is the objective).
    pub grad_output: f32,
}

impl Default for DpoConfig {
    fn default() -> Self {
        DpoConfig {
            loss_type: DpoLossType::Sigmoid,
            beta: 0.1,
            label_smoothing: 0.0,
            reference_free: false,
            rpo_alpha: None,
            simpo_gamma: 0.5,
            bco_delta: 0.0,
            grad_output: 1.0,
        }
    }
}

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
    /// shape, dtype and device checks) by SimPO, ORPO and reference-free mode.
    pub reference_chosen: Option<&'a Tensor>,
    /// Reference-model log-probs of the rejected completions.
    pub reference_rejected: Option<&'a Tensor>,
    /// Completion token counts of the chosen sequences (IPO, SimPO, ORPO, RPO).
    pub chosen_lengths: Option<&'a Tensor>,
    /// Completion token counts of the rejected sequences (IPO, SimPO, ORPO).
    pub rejected_lengths: Option<&'a Tensor>,
}

impl<'a> PreferenceLogps<'a> {
    /// Policy log-probs only (add a reference and token counts with the builders below).
    pub fn new(policy_chosen: &'a Tensor, policy_rejected: &'a Tensor) -> Self {
        PreferenceLogps {
            policy_chosen,
            policy_rejected,
            reference_chosen: None,
            reference_rejected: None,
            chosen_lengths: None,
            rejected_lengths: None,
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
}

/// TRL's logged metrics, means over the pairs. Rewards are `β·(logp - ref logp)` (`β·logp` for SimPO, ORPO and
/// reference-free mode); logps are the (length-normalised where the loss is) policy log-probs.
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

impl DpoMetrics {
    /// The batch mean of the chosen and rejected rewards: what TRL feeds BCO's running mean (`RunningMoments`).
    pub fn mean_reward(&self) -> f32 {
        0.5 * (self.rewards_chosen + self.rewards_rejected)
    }
}

/// The loss, its gradient with respect to the policy log-probs (dtype of the inputs, scaled by `grad_output`)
/// and the metrics.
#[derive(Debug)]
pub struct DpoOutput {
    /// Mean over pairs, plus `α·NLL` with RPO.
    pub loss: f32,
    /// d loss / d `policy_chosen`, `[P]`.
    pub grad_policy_chosen: Tensor,
    /// d loss / d `policy_rejected`, `[P]`.
    pub grad_policy_rejected: Tensor,
    /// TRL's logged metrics.
    pub metrics: DpoMetrics,
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

/// The scalars of one call, checked, in the form both backends use.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PairParams {
    pub kind: DpoLossType,
    pub beta: f64,
    /// Label smoothing, already replaced by 1e-3 for EXO when 0 (as TRL does).
    pub label_smoothing: f64,
    pub gamma: f64,
    pub delta: f64,
}

/// What the backends need beyond the tensors.
pub(crate) struct Plan {
    pub pairs: usize,
    pub params: PairParams,
    pub use_reference: bool,
    /// Token counts when the loss normalises by them.
    pub lengths: Option<(Vec<i64>, Vec<i64>)>,
    /// `d loss / d chosen_sum[p]` of the RPO term (0 without RPO): `-grad_output·α / Σ chosen lengths`.
    pub nll_grad: f64,
    /// `grad_output / P`.
    pub mean_scale: f64,
}

/// DPO-family loss, gradient and metrics; CPU or CUDA by the device of the inputs.
pub fn dpo_loss(inputs: &PreferenceLogps, cfg: &DpoConfig) -> Result<DpoOutput> {
    let (device, plan, chosen_length_sum) = validate(inputs, cfg)?;
    let (sums, grad_chosen, grad_rejected) = match device {
        Device::Cpu => dpo_cpu::run(inputs, &plan)?,
        Device::Cuda(_) => cuda::dpo(inputs, &plan)?,
    };
    let n = plan.pairs as f64;
    let mean = |i: usize| (sums[i] / n) as f32;
    let nll = cfg.rpo_alpha.map(|_| -sums[stat::CHOSEN_SUM] / chosen_length_sum);
    let loss = (sums[stat::LOSS] / n + cfg.rpo_alpha.map_or(0.0, |a| a as f64) * nll.unwrap_or(0.0)) as f32;
    // ORPO at an average log-prob of 0 has an infinite log-odds but a finite loss (and NaN gradients).
    let log_odds_sum = if cfg.loss_type == DpoLossType::Orpo { sums[stat::LOG_ODDS] } else { 0.0 };
    if !loss.is_finite() || !log_odds_sum.is_finite() {
        let why = if cfg.loss_type == DpoLossType::Orpo {
            "the log-probabilities contain NaN or infinity, or an average log-probability is not below 0 (ORPO \
             needs probabilities below 1)"
        } else {
            "the log-probabilities contain NaN or infinity"
        };
        return Err(Error::InvalidArgument(format!("the {} loss is {loss}: {why}", cfg.loss_type.trl_name())));
    }
    let orpo = cfg.loss_type == DpoLossType::Orpo;
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
    Ok(DpoOutput { loss, grad_policy_chosen: grad_chosen, grad_policy_rejected: grad_rejected, metrics })
}

/// Checks shapes, dtypes, devices and hyper-parameters; reads the token counts. Returns the device, the plan and
/// the sum of the chosen token counts (for the RPO NLL).
fn validate(inputs: &PreferenceLogps, cfg: &DpoConfig) -> Result<(Device, Plan, f64)> {
    let kind = cfg.loss_type;
    let name = kind.trl_name();
    check::float("policy_chosen", inputs.policy_chosen)?;
    let dtype = inputs.policy_chosen.dtype();
    let pairs = check::rank("policy_chosen", inputs.policy_chosen, 1)?[0];
    check::non_empty("policy_chosen", pairs)?;

    let logps = [
        ("policy_rejected", Some(inputs.policy_rejected)),
        ("reference_chosen", inputs.reference_chosen),
        ("reference_rejected", inputs.reference_rejected),
    ];
    let mut tensors = vec![("policy_chosen", inputs.policy_chosen)];
    for (arg, t) in logps {
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
        ("bco_delta", cfg.bco_delta),
        ("grad_output", cfg.grad_output),
    ] {
        check::finite(arg, value)?;
    }
    if cfg.beta <= 0.0 {
        return Err(Error::InvalidArgument(format!("`beta` must be positive, got {}", cfg.beta)));
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

    let use_reference = kind.uses_reference() && !cfg.reference_free;
    let references = [inputs.reference_chosen.is_some(), inputs.reference_rejected.is_some()];
    if use_reference && references != [true, true] {
        return Err(Error::InvalidArgument(format!(
            "the {name} loss needs `reference_chosen` and `reference_rejected` (precomputed reference log-probs) \
             unless `reference_free` is set"
        )));
    }
    let needs_chosen = kind.length_normalised() || cfg.rpo_alpha.is_some();
    let chosen_lengths = match inputs.chosen_lengths {
        Some(t) => Some(token_counts("chosen_lengths", t)?),
        None if needs_chosen => {
            let why = if kind.length_normalised() {
                format!("the {name} loss averages over tokens")
            } else {
                "the RPO NLL term averages over the chosen tokens".into()
            };
            return Err(Error::InvalidArgument(format!("`chosen_lengths` is required: {why}")));
        }
        None => None,
    };
    let rejected_lengths = match inputs.rejected_lengths {
        Some(t) if kind.length_normalised() => Some(token_counts("rejected_lengths", t)?),
        None if kind.length_normalised() => {
            return Err(Error::InvalidArgument(format!(
                "`rejected_lengths` is required: the {name} loss averages over tokens"
            )));
        }
        _ => None,
    };
    let chosen_length_sum = chosen_lengths.as_ref().map_or(0.0, |l| l.iter().map(|&v| v as f64).sum());
    let nll_grad = cfg.rpo_alpha.map_or(0.0, |a| -(cfg.grad_output as f64) * a as f64 / chosen_length_sum);
    let lengths = match (chosen_lengths, rejected_lengths) {
        (Some(c), Some(r)) if kind.length_normalised() => Some((c, r)),
        _ => None,
    };
    let label_smoothing = match (kind, cfg.label_smoothing) {
        (DpoLossType::ExoPair, 0.0) => 1e-3,
        (_, ls) => ls as f64,
    };
    let params = PairParams {
        kind,
        beta: cfg.beta as f64,
        label_smoothing,
        gamma: cfg.simpo_gamma as f64,
        delta: cfg.bco_delta as f64,
    };
    let plan =
        Plan { pairs, params, use_reference, lengths, nll_grad, mean_scale: cfg.grad_output as f64 / pairs as f64 };
    Ok((device, plan, chosen_length_sum))
}

/// Token counts, each at least 1.
fn token_counts(arg: &'static str, t: &Tensor) -> Result<Vec<i64>> {
    let counts = host::integers(arg, t)?;
    if let Some((i, v)) = counts.iter().enumerate().find(|(_, &v)| v < 1) {
        return Err(Error::InvalidArgument(format!("`{arg}`[{i}] is {v}: token counts must be at least 1")));
    }
    Ok(counts)
}
