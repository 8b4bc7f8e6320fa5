//! The hyper-parameters of the DPO family: loss types, mixtures of them, f-divergences, BCO's running mean.
//!
//! Every name and default is TRL's. The formulas are TRL's `DPOTrainer.dpo_loss` as released in v0.24.0 through
//! v0.27.2 (the same code in each; v0.28 renamed `aot_pair` to `aot_unpaired`, v0.29 replaced the method), SimPO
//! from `CPOTrainer.cpo_loss` and the odds-ratio term from `ORPOTrainer.odds_ratio_loss`.

use crate::runtime::DType;
use crate::{Error, Result};

/// The loss types, named as TRL names them (`DPOConfig.loss_type`; `simpo` is `CPOConfig.loss_type`; `orpo` is
/// the odds-ratio term of `ORPOTrainer`). `a` and `b` below are the chosen and rejected log-ratios (policy minus
/// reference log-prob), `z` TRL's `logits` (`a - b`, or its f-divergence form, see [`FDivergence`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DpoLossType {
    /// `-logσ(βz)(1-ε) - logσ(-βz)ε`; ε > 0 is conservative DPO (cDPO).
    Sigmoid,
    /// `relu(1 - βz)` (SLiC).
    Hinge,
    /// `(z - 1/(2β))²` on length-normalised log-probs (IPO).
    Ipo,
    /// `(-logσ(βz)(1-ε) + logσ(-βz)ε) / (1-2ε)` (robust DPO).
    Robust,
    /// `-logσ(βa - δ) - logσ(-(βb - δ))`, δ TRL's running mean of the rewards (BCO; see [`BcoDelta`]).
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
    /// AOT for paired data: the sigmoid loss (with label smoothing) of `sort(c - r)ᵢ - sort(c_ref - r_ref)ᵢ`, the
    /// batch's policy and reference log-ratio differences each sorted (ascending); loss `i` is at sorted position i.
    Aot,
    /// AOT for unpaired data (TRL's `aot_pair`, renamed `aot_unpaired` in TRL v0.28): the sigmoid loss of
    /// `sort(a)ᵢ - sort(b)ᵢ`.
    AotPair,
    /// DiscoPOP (log-ratio modulated loss): with `u = β((c - r) - (c_ref - r_ref))` and `m = σ(u/τ)`,
    /// `-logσ(u)(1 - m) + e^{-u} m`.
    Discopop,
}

impl DpoLossType {
    /// Every loss type, in the order of their kernel codes (and of the C ABI's `UR_DPO_*`).
    pub const ALL: [DpoLossType; 15] = [
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
        DpoLossType::Aot,
        DpoLossType::AotPair,
        DpoLossType::Discopop,
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
            DpoLossType::Aot => "aot",
            DpoLossType::AotPair => "aot_pair",
            DpoLossType::Discopop => "discopop",
        }
    }

    /// The loss type TRL calls `name` (`aot_unpaired`, TRL v0.28's name, is [`DpoLossType::AotPair`]).
    pub fn from_trl_name(name: &str) -> Result<Self> {
        if name == "aot_unpaired" {
            return Ok(DpoLossType::AotPair);
        }
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

    /// Whether the loss pairs the batch's sorted log-ratios (AOT) rather than each pair's own.
    pub fn sorts_the_batch(self) -> bool {
        matches!(self, DpoLossType::Aot | DpoLossType::AotPair)
    }

    /// The number the kernels switch on (the index in [`DpoLossType::ALL`]).
    pub(crate) fn code(self) -> i32 {
        Self::ALL.iter().position(|&t| t == self).unwrap_or(0) as i32
    }
}

/// A weighted sum of loss types: TRL's list-valued `loss_type` with `loss_weights` (MPO, e.g. sigmoid + bco_pair).
/// Per pair, TRL sums `weight · loss` over the types, and likewise the rewards it logs (so the logged rewards are
/// scaled by the sum of the weights). IPO among the types length-normalises the log-probs of every type, as TRL
/// does. SimPO and ORPO (other TRL trainers) cannot be mixed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossMixture {
    terms: [(DpoLossType, f32); DpoLossType::ALL.len()],
    len: usize,
}

impl LossMixture {
    /// One loss type with weight 1 (TRL's default `loss_weights`).
    pub fn single(loss_type: DpoLossType) -> Self {
        let mut terms = [(DpoLossType::Sigmoid, 0.0); DpoLossType::ALL.len()];
        terms[0] = (loss_type, 1.0);
        LossMixture { terms, len: 1 }
    }

    /// `terms` as (loss type, weight): each type at most once, finite weights, no SimPO or ORPO among several.
    pub fn new(terms: &[(DpoLossType, f32)]) -> Result<Self> {
        let Some(&(first, _)) = terms.first() else {
            return Err(Error::InvalidArgument("a loss mixture needs at least one loss type".into()));
        };
        let mut mixture = LossMixture::single(first);
        mixture.len = 0;
        for &(t, w) in terms {
            crate::ops::check::finite(&format!("the weight of the {} loss", t.trl_name()), w)?;
            if mixture.terms().iter().any(|&(seen, _)| seen == t) {
                return Err(Error::InvalidArgument(format!("the {} loss is listed twice", t.trl_name())));
            }
            if terms.len() > 1 && !t.uses_reference() {
                return Err(Error::InvalidArgument(format!(
                    "the {} loss cannot be mixed with others (TRL's DPOTrainer has no {0} loss)",
                    t.trl_name()
                )));
            }
            mixture.terms[mixture.len] = (t, w);
            mixture.len += 1;
        }
        Ok(mixture)
    }

    /// The (loss type, weight) terms, in the order given.
    pub fn terms(&self) -> &[(DpoLossType, f32)] {
        &self.terms[..self.len]
    }

    /// Whether `t` is one of the terms.
    pub fn contains(&self, t: DpoLossType) -> bool {
        self.terms().iter().any(|&(seen, _)| seen == t)
    }

    /// The sum of the weights: the factor of TRL's logged rewards.
    pub fn total_weight(&self) -> f64 {
        self.terms().iter().map(|&(_, w)| w as f64).sum()
    }

    /// Whether the log-probs are divided by the token counts (IPO, SimPO or ORPO among the terms).
    pub fn length_normalised(&self) -> bool {
        self.terms().iter().any(|&(t, _)| t.length_normalised())
    }

    /// Whether the terms compare against a reference model (false for SimPO and ORPO, which are never mixed).
    pub fn uses_reference(&self) -> bool {
        self.terms().iter().all(|&(t, _)| t.uses_reference())
    }
}

/// TRL's `f_divergence_type`: how the log-ratios `a`, `b` (reference-free aware) become the `logits` z of the
/// sigmoid, hinge, IPO, robust and EXO losses (the other loss types ignore it, as TRL v0.27 does).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum FDivergence {
    /// `z = a - b` (standard DPO).
    #[default]
    ReverseKl,
    /// Jensen–Shannon: `z = a - b - (softplus(a) - softplus(b))`.
    JsDivergence,
    /// α-divergence with `f_alpha_divergence_coef` α ≠ 0: `z = (e^{-αb} - e^{-αa}) / α`, each exponent capped at
    /// log of the dtype's largest value (TRL's `cap_exp`; the capped side then has no gradient).
    AlphaDivergence(f32),
    /// Forward KL: the α-divergence at α = 1, `z = e^{-b} - e^{-a}` (TRL v0.27's `alpha_divergence` with its default
    /// coefficient; newer TRL's `forward_kl` gives the same `z`).
    ForwardKl,
}

impl FDivergence {
    /// The kernels' code and α (0 where unused).
    pub(crate) fn code(self) -> (i32, f64) {
        match self {
            FDivergence::ReverseKl => (0, 0.0),
            FDivergence::JsDivergence => (1, 0.0),
            FDivergence::AlphaDivergence(alpha) => (2, alpha as f64),
            FDivergence::ForwardKl => (2, 1.0),
        }
    }

    /// TRL's `cap_exp` bound for log-probs of `dtype`: log of its largest value, floored to 4 decimals.
    pub(crate) fn exp_cap(dtype: DType) -> f64 {
        let max = match dtype {
            DType::BF16 => half::bf16::MAX.to_f64(),
            DType::F16 => half::f16::MAX.to_f64(),
            _ => f32::MAX as f64,
        };
        (max.ln() * 1e4).floor() / 1e4
    }
}

/// BCO's δ (the `bco_pair` loss).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BcoDelta {
    /// TRL's `RunningMoments` mean: the mean of the `count` batch means of the rewards seen so far (0 and 0 at the
    /// start). As TRL does, the op first adds this batch's mean reward `β·mean(a ∪ b)` and uses the updated mean as
    /// δ; [`DpoOutput::bco_delta`](super::DpoOutput::bco_delta) returns it for the next step.
    Running { mean: f32, count: f32 },
    /// δ as given, not updated (e.g. a mean a distributed trainer gathered over its ranks).
    Fixed(f32),
}

impl Default for BcoDelta {
    fn default() -> Self {
        BcoDelta::Running { mean: 0.0, count: 0.0 }
    }
}

impl BcoDelta {
    /// δ for a batch whose mean reward is `batch_mean`, and the state to carry to the next batch.
    pub(crate) fn update(self, batch_mean: f64) -> (f64, BcoDelta) {
        match self {
            BcoDelta::Fixed(delta) => (delta as f64, self),
            BcoDelta::Running { mean, count } => {
                let mean = mean as f64 + (batch_mean - mean as f64) / (count as f64 + 1.0);
                (mean, BcoDelta::Running { mean: mean as f32, count: count + 1.0 })
            }
        }
    }
}

/// Hyper-parameters of [`dpo_loss`](super::dpo_loss). `Default` is TRL's: sigmoid, β = 0.1, no smoothing, reverse
/// KL, SimPO γ = 0.5, DiscoPOP τ = 0.05.
#[derive(Clone, Copy, Debug)]
pub struct DpoConfig {
    /// Which loss (TRL's `loss_type`), unless `loss_mixture` is set.
    pub loss_type: DpoLossType,
    /// TRL's list-valued `loss_type` with `loss_weights`; when set, it replaces `loss_type`.
    pub loss_mixture: Option<LossMixture>,
    /// β > 0 (for IPO, TRL's τ; for ORPO, TRL's λ).
    pub beta: f32,
    /// ε in [0, 0.5): cDPO / robust / EXO / AOT / SimPO label smoothing.
    pub label_smoothing: f32,
    /// TRL's `reference_free`: the sigmoid, hinge, IPO, robust, EXO and APO losses drop the reference log-probs;
    /// `bco_pair`, `nca_pair`, `sppo_hard`, `aot`, `aot_pair`, `discopop` and the logged rewards still use them, as
    /// TRL does. Without reference log-probs they are taken as 0 everywhere (Liger's `use_ref_model=False`).
    pub reference_free: bool,
    /// TRL's `f_divergence_type` (with `f_alpha_divergence_coef`).
    pub f_divergence: FDivergence,
    /// Adds `α · NLL` of the chosen sequences (RPO; TRL's `rpo_alpha`, CPO's `cpo_alpha`, ORPO with α = 1):
    /// `NLL = -Σ chosen log-probs / Σ chosen token counts`, on the raw (summed) log-probs. Needs `chosen_lengths`.
    pub rpo_alpha: Option<f32>,
    /// LD-DPO's α (TRL's `ld_alpha`): the policy's log-prob of a completion becomes its public part (the first
    /// `min(chosen, rejected length)` tokens) plus α times the rest; needs the verbose parts
    /// ([`PreferenceLogps::with_verbose`](super::PreferenceLogps::with_verbose)). The op takes the reference
    /// log-probs as given (the DPO trainer splits them as the policy's, as the paper does; TRL leaves them whole)
    /// and, with IPO, the policy's are then not length-normalised.
    pub ld_alpha: Option<f32>,
    /// WPO (TRL's `use_weighting`, arXiv 2406.11827): each pair's loss weighted by the policy's own detached
    /// `min(exp(w_chosen + w_rejected), 1)`, `w` a completion's mean over its tokens of `log p(token) − log Σ_v p_v²`.
    /// The DPO trainer computes the weights in its forward; [`dpo_loss`](super::dpo_loss) takes them as
    /// `pair_weights`, which this flag then requires.
    pub use_weighting: bool,
    /// SimPO's target margin γ.
    pub simpo_gamma: f32,
    /// DiscoPOP's τ > 0 (TRL's `discopop_tau`).
    pub discopop_tau: f32,
    /// BCO's δ.
    pub bco_delta: BcoDelta,
    /// The upstream gradient of the loss (1 when the loss is the objective).
    pub grad_output: f32,
}

impl Default for DpoConfig {
    fn default() -> Self {
        DpoConfig {
            loss_type: DpoLossType::Sigmoid,
            loss_mixture: None,
            beta: 0.1,
            label_smoothing: 0.0,
            reference_free: false,
            f_divergence: FDivergence::ReverseKl,
            rpo_alpha: None,
            ld_alpha: None,
            use_weighting: false,
            simpo_gamma: 0.5,
            discopop_tau: 0.05,
            bco_delta: BcoDelta::default(),
            grad_output: 1.0,
        }
    }
}

impl DpoConfig {
    /// The configuration of a run given as TRL spells it (`unireward dpo`'s flags, the pipeline config's `[dpo]`),
    /// every value checked; an error names the option as `spell` writes TRL's field name (`--rpo-alpha`,
    /// `` `[dpo] rpo_alpha` ``). The rest (BCO's δ, the upstream gradient) defaults.
    pub fn from_trl(options: &TrlDpoOptions, spell: impl Fn(&str) -> String) -> Result<DpoConfig> {
        let o = options;
        // "`--beta` must be ...", "`[dpo] loss_type` is refused: unknown ..."
        let bad = |key: &str, what: String| Error::InvalidArgument(format!("{} {what}", spell(key)));
        let refused = |e: Error| match e {
            Error::InvalidArgument(m) => format!("is refused: {m}"),
            other => format!("is refused: {other}"),
        };
        let names: Vec<&str> = o.loss_type.split(',').map(str::trim).collect();
        let types = names
            .iter()
            .map(|n| DpoLossType::from_trl_name(n))
            .collect::<Result<Vec<_>>>()
            .map_err(|e| bad("loss_type", refused(e)))?;
        let weights = o.loss_weights.clone().unwrap_or_else(|| vec![1.0; types.len()]);
        if weights.len() != types.len() {
            let n = (weights.len(), types.len());
            return Err(bad("loss_weights", format!("has {} weights for {} loss types", n.0, n.1)));
        }
        if let Some(w) = weights.iter().find(|w| !w.is_finite()) {
            return Err(bad("loss_weights", format!("holds {w}: weights must be finite")));
        }
        let terms: Vec<_> = types.iter().copied().zip(weights).collect();
        let loss_mixture = match terms.len() {
            1 if o.loss_weights.is_none() => None,
            _ => Some(LossMixture::new(&terms).map_err(|e| bad("loss_type", refused(e)))?),
        };
        if !(o.beta.is_finite() && o.beta > 0.0) {
            return Err(bad("beta", format!("must be finite and > 0, got {}", o.beta)));
        }
        if !(0.0..0.5).contains(&o.label_smoothing) {
            return Err(bad("label_smoothing", format!("must be in [0, 0.5), got {}", o.label_smoothing)));
        }
        if let Some(a) = o.rpo_alpha.filter(|a| !(a.is_finite() && *a >= 0.0)) {
            return Err(bad("rpo_alpha", format!("must be finite and >= 0, got {a}")));
        }
        if !o.simpo_gamma.is_finite() {
            return Err(bad("simpo_gamma", format!("must be finite, got {}", o.simpo_gamma)));
        }
        if !(o.discopop_tau.is_finite() && o.discopop_tau > 0.0) {
            return Err(bad("discopop_tau", format!("must be finite and > 0, got {}", o.discopop_tau)));
        }
        let coef = o.f_alpha_divergence_coef;
        let f_divergence = match o.f_divergence.as_str() {
            "reverse_kl" => FDivergence::ReverseKl,
            "js_divergence" => FDivergence::JsDivergence,
            "forward_kl" => FDivergence::ForwardKl,
            "alpha_divergence" if coef.is_finite() && coef != 0.0 => FDivergence::AlphaDivergence(coef),
            "alpha_divergence" => {
                return Err(bad("f_alpha_divergence_coef", format!("must be finite and != 0, got {coef}")));
            }
            other => {
                let known = "reverse_kl, js_divergence, alpha_divergence, forward_kl";
                return Err(bad("f_divergence", format!("is refused: unknown f-divergence `{other}`; known: {known}")));
            }
        };
        let config = DpoConfig {
            loss_type: types[0],
            loss_mixture,
            beta: o.beta,
            label_smoothing: o.label_smoothing,
            reference_free: o.reference_free,
            f_divergence,
            rpo_alpha: o.rpo_alpha,
            ld_alpha: o.ld_alpha,
            use_weighting: o.use_weighting,
            simpo_gamma: o.simpo_gamma,
            discopop_tau: o.discopop_tau,
            ..DpoConfig::default()
        };
        match config.ld_alpha_problem() {
            Some(problem) => Err(bad("ld_alpha", problem)),
            None => Ok(config),
        }
    }

    /// What is wrong with `ld_alpha` for the DPO trainer, if anything: α must be in [0, 1], and the loss must
    /// compare against a reference (the trainer splits the reference's log-probs as the policy's) without
    /// averaging the log-probs over tokens.
    pub fn ld_alpha_problem(&self) -> Option<String> {
        let alpha = self.ld_alpha?;
        if !(0.0..=1.0).contains(&alpha) {
            return Some(format!("must be in [0, 1], got {alpha}"));
        }
        if self.reference_free {
            return Some("needs a reference (LD-DPO splits the reference's log-probs too): drop reference_free".into());
        }
        let losses = self.losses();
        if losses.length_normalised() || !losses.uses_reference() {
            return Some("does not go with ipo, simpo or orpo (they average the log-probs over tokens)".into());
        }
        None
    }

    /// The loss types and their weights: `loss_mixture`, or `loss_type` with weight 1.
    pub fn losses(&self) -> LossMixture {
        self.loss_mixture.unwrap_or_else(|| LossMixture::single(self.loss_type))
    }
}

/// A run's loss as TRL's `DPOConfig` spells it: what `unireward dpo`'s flags and the pipeline config's `[dpo]` keys
/// hold, turned into a [`DpoConfig`] by [`DpoConfig::from_trl`]. `Default` is TRL's.
#[derive(Clone, Debug, PartialEq)]
pub struct TrlDpoOptions {
    /// A TRL loss type, or several comma-separated (TRL's list-valued `loss_type`: a weighted sum).
    pub loss_type: String,
    /// One weight per loss type (TRL's `loss_weights`; default 1 each).
    pub loss_weights: Option<Vec<f32>>,
    pub beta: f32,
    pub label_smoothing: f32,
    pub reference_free: bool,
    /// RPO's weight of the chosen completions' NLL.
    pub rpo_alpha: Option<f32>,
    /// LD-DPO's α in [0, 1]: the weight of each completion's tokens past its pair's shared length (policy and
    /// reference alike; see [`DpoConfig::ld_alpha`]).
    pub ld_alpha: Option<f32>,
    /// WPO: weight each pair's loss by the policy's probability of both completions (see
    /// [`DpoConfig::use_weighting`]).
    pub use_weighting: bool,
    /// TRL's `f_divergence_type`: `reverse_kl`, `js_divergence`, `alpha_divergence` or `forward_kl`.
    pub f_divergence: String,
    /// α of `alpha_divergence` (TRL's `f_alpha_divergence_coef`).
    pub f_alpha_divergence_coef: f32,
    pub simpo_gamma: f32,
    pub discopop_tau: f32,
}

impl Default for TrlDpoOptions {
    fn default() -> Self {
        let d = DpoConfig::default();
        TrlDpoOptions {
            loss_type: d.loss_type.trl_name().into(),
            loss_weights: None,
            beta: d.beta,
            label_smoothing: d.label_smoothing,
            reference_free: d.reference_free,
            rpo_alpha: d.rpo_alpha,
            ld_alpha: d.ld_alpha,
            use_weighting: d.use_weighting,
            f_divergence: "reverse_kl".into(),
            f_alpha_divergence_coef: 1.0,
            simpo_gamma: d.simpo_gamma,
            discopop_tau: d.discopop_tau,
        }
    }
}
