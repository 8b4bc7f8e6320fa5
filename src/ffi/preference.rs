//! Preference losses: `ur_dpo_loss`, `ur_bradley_terry_loss`, `ur_kwise_loss`, `ur_diffusion_dpo_loss`. Each is a
//! forward and a backward in one call: the loss and metrics to host memory (so on CUDA the call waits for its own
//! work), the gradients into caller-allocated tensors.

use std::ffi::c_void;

use bytemuck::NoUninit;

use super::context::{self, code, read_config, size_of_u32, ur_context, Config, Versioned};
use super::dlpack::{on_device, write_outputs, DLTensor, Desc};
use super::host_out::{check_host_outputs, HostOut};
use super::status::{call, ur_status, Failure, FfiResult};
use crate::ops::preference::{
    bradley_terry_loss, diffusion_dpo_loss, dpo_loss, kwise_loss, BcoDelta, BradleyTerryConfig, DiffusionDpoConfig,
    DiffusionDpoInputs, DpoConfig, DpoLossType, FDivergence, KwiseConfig, KwiseMethod, LossMixture, PreferenceLogps,
};

/// `ur_dpo_config.loss_type` codes, TRL's `loss_type` names (the order of `DpoLossType::ALL`).
pub const UR_DPO_SIGMOID: i32 = 0;
pub const UR_DPO_HINGE: i32 = 1;
pub const UR_DPO_IPO: i32 = 2;
pub const UR_DPO_ROBUST: i32 = 3;
pub const UR_DPO_BCO_PAIR: i32 = 4;
pub const UR_DPO_EXO_PAIR: i32 = 5;
pub const UR_DPO_NCA_PAIR: i32 = 6;
pub const UR_DPO_SPPO_HARD: i32 = 7;
pub const UR_DPO_APO_ZERO: i32 = 8;
pub const UR_DPO_APO_DOWN: i32 = 9;
pub const UR_DPO_SIMPO: i32 = 10;
pub const UR_DPO_ORPO: i32 = 11;
pub const UR_DPO_AOT: i32 = 12;
/// TRL's `aot_pair` (AOT for unpaired data; `aot_unpaired` from TRL v0.28).
pub const UR_DPO_AOT_PAIR: i32 = 13;
pub const UR_DPO_DISCOPOP: i32 = 14;

/// `ur_dpo_config.f_divergence_type` codes, TRL's `f_divergence_type`.
pub const UR_F_DIVERGENCE_REVERSE_KL: i32 = 0;
pub const UR_F_DIVERGENCE_JS: i32 = 1;
/// The alpha-divergence with `f_alpha_divergence_coef` (forward KL at 1).
pub const UR_F_DIVERGENCE_ALPHA: i32 = 2;

/// `ur_kwise_config.method`: mean of -log sigmoid(r_i - r_j) over the pairs, i ranked above j.
pub const UR_KWISE_ALL_PAIRS: i32 = 0;
/// `ur_kwise_config.method`: the Plackett-Luce negative log-likelihood of the ranking.
pub const UR_KWISE_PLACKETT_LUCE: i32 = 1;

/// Hyper-parameters of `ur_dpo_loss`. Initialise with `ur_dpo_config_default()` (TRL's defaults). The fields
/// from `f_divergence_type` on were added after ABI version 2; the tensors among them are optional extra inputs and
/// outputs of `ur_dpo_loss` (NULL: not given), on the device of the call's other tensors.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ur_dpo_config {
    /// `sizeof(ur_dpo_config)`.
    pub struct_size: u32,
    /// A `UR_DPO_*` code (default `UR_DPO_SIGMOID`); ignored when `num_loss_types` > 0.
    pub loss_type: i32,
    /// beta > 0 (default 0.1; IPO's tau, ORPO's lambda).
    pub beta: f32,
    /// epsilon in [0, 0.5): cDPO / robust / EXO / AOT / SimPO label smoothing (default 0).
    pub label_smoothing: f32,
    /// Nonzero: TRL's `reference_free` (default 0): the sigmoid, hinge, IPO, robust, EXO and APO losses drop the
    /// reference log-probs; bco_pair, nca_pair, sppo_hard, AOT, DiscoPOP and the rewards still use them. NULL
    /// reference tensors are taken as 0.
    pub reference_free: i32,
    /// Nonzero: add `rpo_alpha * NLL` of the chosen sequences (RPO; needs `chosen_lengths`). Default 0.
    pub use_rpo_alpha: i32,
    /// The RPO weight, read when `use_rpo_alpha` is nonzero.
    pub rpo_alpha: f32,
    /// SimPO's target margin gamma (default 0.5).
    pub simpo_gamma: f32,
    /// BCO's running mean of the rewards before this batch (TRL's `running.mean`, default 0); with a negative
    /// `bco_count`, the delta used as given.
    pub bco_delta: f32,
    /// The upstream gradient of the loss (default 1).
    pub grad_output: f32,
    /// A `UR_F_DIVERGENCE_*` code (default `UR_F_DIVERGENCE_REVERSE_KL`).
    pub f_divergence_type: i32,
    /// The alpha of `UR_F_DIVERGENCE_ALPHA`, nonzero (default 1: forward KL).
    pub f_alpha_divergence_coef: f32,
    /// DiscoPOP's tau > 0 (default 0.05).
    pub discopop_tau: f32,
    /// BCO: how many batch means `bco_delta` averages (TRL's `running.count`, default 0). The call adds this
    /// batch's mean reward first, uses the updated mean, and reports it in `ur_dpo_metrics.bco_delta` /
    /// `bco_count` for the next call. Negative: `bco_delta` is used as delta, not updated.
    pub bco_count: f32,
    /// Nonzero: LD-DPO with `ld_alpha` (default 0); needs `policy_chosen_verbose` and `policy_rejected_verbose`.
    pub use_ld_alpha: i32,
    /// LD-DPO's alpha: the policy log-prob is its public part plus alpha times the verbose part.
    pub ld_alpha: f32,
    /// A weighted sum of loss types (TRL's list-valued `loss_type` with `loss_weights`): `num_loss_types` codes
    /// in `loss_types` and weights in `loss_weights`; 0 (default) uses `loss_type` with weight 1.
    pub num_loss_types: u32,
    /// Nonzero: WPO (TRL's `use_weighting`; default 0): `ur_dpo_trainer_*` weight each pair's loss by the policy's
    /// own length-normalised probability of both completions; `ur_dpo_loss` then needs `pair_weights`. (A reserved
    /// field that had to be 0 before: a library older than this field refuses it nonzero.)
    pub use_weighting: i32,
    pub loss_types: *const i32,
    pub loss_weights: *const f32,
    /// Per-pair weights `[P]` (WPO's `policy_weights`), constants, in the log-probs' dtype; NULL: all 1.
    pub pair_weights: *const DLTensor,
    /// LD-DPO: the log-probs of the verbose parts (the tokens past `min(chosen, rejected length)`) `[P]`.
    pub policy_chosen_verbose: *const DLTensor,
    pub policy_rejected_verbose: *const DLTensor,
    /// LD-DPO: outputs, the gradients with respect to the verbose parts `[P]` (required with `use_ld_alpha`).
    pub grad_policy_chosen_verbose_out: *const DLTensor,
    pub grad_policy_rejected_verbose_out: *const DLTensor,
    /// Output, optional: TRL's per-pair losses `[P]` float32 (without the NLL term and the pair weights; AOT's at
    /// sorted positions).
    pub losses_out: *const DLTensor,
}

impl Versioned for ur_dpo_config {
    const NAME: &'static str = "ur_dpo_config";
    /// ABI 2's struct ended at `grad_output`; the fields after it were appended in ABI 3.
    const FIRST_SIZE: usize = std::mem::offset_of!(ur_dpo_config, f_divergence_type);
}

impl Config for ur_dpo_config {
    fn default_value() -> Self {
        let d = DpoConfig::default();
        ur_dpo_config {
            struct_size: size_of_u32::<Self>(),
            loss_type: UR_DPO_SIGMOID,
            beta: d.beta,
            label_smoothing: d.label_smoothing,
            reference_free: d.reference_free as i32,
            use_rpo_alpha: d.rpo_alpha.is_some() as i32,
            rpo_alpha: d.rpo_alpha.unwrap_or(0.0),
            simpo_gamma: d.simpo_gamma,
            bco_delta: 0.0,
            grad_output: d.grad_output,
            f_divergence_type: UR_F_DIVERGENCE_REVERSE_KL,
            f_alpha_divergence_coef: 1.0,
            discopop_tau: d.discopop_tau,
            bco_count: 0.0,
            use_ld_alpha: 0,
            ld_alpha: 1.0,
            num_loss_types: 0,
            use_weighting: 0,
            loss_types: std::ptr::null(),
            loss_weights: std::ptr::null(),
            pair_weights: std::ptr::null(),
            policy_chosen_verbose: std::ptr::null(),
            policy_rejected_verbose: std::ptr::null(),
            grad_policy_chosen_verbose_out: std::ptr::null(),
            grad_policy_rejected_verbose_out: std::ptr::null(),
            losses_out: std::ptr::null(),
        }
    }
}

impl ur_dpo_config {
    /// The Rust config this C config says.
    ///
    /// # Safety
    /// `loss_types` and `loss_weights` hold `num_loss_types` values each when it is nonzero.
    pub(super) unsafe fn to_config(self) -> FfiResult<DpoConfig> {
        let loss_type = code("loss_type", self.loss_type, &DpoLossType::ALL)?;
        let loss_mixture = match self.num_loss_types {
            0 => None,
            n if n as usize > DpoLossType::ALL.len() => {
                return Err(Failure::invalid(format!(
                    "`num_loss_types` is {n}: at most {} loss types can be mixed",
                    DpoLossType::ALL.len()
                )))
            }
            n => {
                if self.loss_types.is_null() || self.loss_weights.is_null() {
                    return Err(Failure::null(if self.loss_types.is_null() { "loss_types" } else { "loss_weights" }));
                }
                // SAFETY: this function's contract.
                let (types, weights) = unsafe {
                    (
                        std::slice::from_raw_parts(self.loss_types, n as usize),
                        std::slice::from_raw_parts(self.loss_weights, n as usize),
                    )
                };
                let terms = types
                    .iter()
                    .zip(weights)
                    .map(|(&t, &w)| Ok((code("loss_types[i]", t, &DpoLossType::ALL)?, w)))
                    .collect::<FfiResult<Vec<_>>>()?;
                Some(LossMixture::new(&terms)?)
            }
        };
        let f_divergence = match self.f_divergence_type {
            UR_F_DIVERGENCE_REVERSE_KL => FDivergence::ReverseKl,
            UR_F_DIVERGENCE_JS => FDivergence::JsDivergence,
            UR_F_DIVERGENCE_ALPHA => FDivergence::AlphaDivergence(self.f_alpha_divergence_coef),
            other => {
                return Err(Failure::invalid(format!(
                    "`f_divergence_type` is {other}, expected a code from 0 to {UR_F_DIVERGENCE_ALPHA}"
                )))
            }
        };
        let bco_delta = if self.bco_count < 0.0 {
            BcoDelta::Fixed(self.bco_delta)
        } else {
            BcoDelta::Running { mean: self.bco_delta, count: self.bco_count }
        };
        Ok(DpoConfig {
            loss_type,
            loss_mixture,
            beta: self.beta,
            label_smoothing: self.label_smoothing,
            reference_free: self.reference_free != 0,
            f_divergence,
            rpo_alpha: (self.use_rpo_alpha != 0).then_some(self.rpo_alpha),
            ld_alpha: (self.use_ld_alpha != 0).then_some(self.ld_alpha),
            use_weighting: self.use_weighting != 0,
            simpo_gamma: self.simpo_gamma,
            discopop_tau: self.discopop_tau,
            bco_delta,
            grad_output: self.grad_output,
        })
    }
}

/// TRL's defaults: sigmoid, beta 0.1, no smoothing, reverse KL, no RPO, no LD-DPO, SimPO gamma 0.5, DiscoPOP
/// tau 0.05, a fresh BCO running mean, grad_output 1, no extra tensors.
#[no_mangle]
pub extern "C" fn ur_dpo_config_default() -> ur_dpo_config {
    ur_dpo_config::default_value()
}

/// TRL's logged DPO metrics, means over the pairs. Values a loss type does not have are NaN.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, NoUninit)]
pub struct ur_dpo_metrics {
    /// `sizeof(ur_dpo_metrics)`, set by the caller before the call: this library writes the fields both know.
    pub struct_size: u32,
    pub rewards_chosen: f32,
    pub rewards_rejected: f32,
    pub rewards_accuracies: f32,
    pub rewards_margins: f32,
    pub logps_chosen: f32,
    pub logps_rejected: f32,
    /// The RPO NLL term (before alpha); NaN without RPO.
    pub nll_loss: f32,
    /// ORPO's mean log sigmoid(log odds); NaN for other loss types.
    pub log_odds_ratio: f32,
    /// ORPO's mean log odds; NaN for other loss types.
    pub log_odds_chosen: f32,
    /// BCO's running mean after this batch, for the next call's `bco_delta`; NaN without a bco_pair term.
    pub bco_delta: f32,
    /// BCO's running count after this batch, for the next call's `bco_count`; NaN without a bco_pair term.
    pub bco_count: f32,
}

impl Versioned for ur_dpo_metrics {
    const NAME: &'static str = "ur_dpo_metrics";
}

/// The DPO family (TRL's loss types and mixtures, SimPO, ORPO, RPO, WPO, LD-DPO) on per-sequence log-probs of P
/// pairs: the loss, its gradient with respect to the policy log-probs, and TRL's metrics.
///
/// Inputs: float `[P]` tensors of one dtype: `policy_chosen`, `policy_rejected`, `reference_chosen`,
/// `reference_rejected` (NULL only when reference-free or for SimPO/ORPO); `chosen_lengths`, `rejected_lengths`
/// int32/int64 `[P]` completion token counts (needed by IPO, SimPO, ORPO, RPO; else may be NULL); more optional
/// tensors in `cfg` (pair weights, LD-DPO's verbose parts). Outputs: `*loss_out` (host float, required);
/// `grad_policy_chosen_out`, `grad_policy_rejected_out` `[P]` in the inputs' dtype (required); `*metrics_out`
/// (host, may be NULL); the output tensors named in `cfg`. Waits for its CUDA work (the loss goes to host memory).
///
/// # Safety
/// As for `ur_logprobs_forward`; `loss_out` and a non-NULL `metrics_out` are writable host memory; the tensors
/// and arrays `cfg` points to are as its fields describe.
#[no_mangle]
pub unsafe extern "C" fn ur_dpo_loss(
    ctx: *mut ur_context,
    policy_chosen: *const DLTensor,
    policy_rejected: *const DLTensor,
    reference_chosen: *const DLTensor,
    reference_rejected: *const DLTensor,
    chosen_lengths: *const DLTensor,
    rejected_lengths: *const DLTensor,
    cfg: *const ur_dpo_config,
    loss_out: *mut f32,
    grad_policy_chosen_out: *const DLTensor,
    grad_policy_rejected_out: *const DLTensor,
    metrics_out: *mut ur_dpo_metrics,
    stream: *mut c_void,
) -> ur_status {
    // SAFETY (whole body): this function's contract, passed on to the helpers that read the pointers.
    call(|| unsafe {
        context::check(ctx)?;
        let c = read_config(cfg)?;
        let cfg = c.to_config()?;
        let loss = HostOut::scalar("loss_out", loss_out)?;
        let pc = Desc::required("policy_chosen", policy_chosen)?;
        let pr = Desc::required("policy_rejected", policy_rejected)?;
        let rc = Desc::optional("reference_chosen", reference_chosen)?;
        let rr = Desc::optional("reference_rejected", reference_rejected)?;
        let cl = Desc::optional("chosen_lengths", chosen_lengths)?;
        let rl = Desc::optional("rejected_lengths", rejected_lengths)?;
        let pw = Desc::optional("pair_weights", c.pair_weights)?;
        let cv = Desc::optional("policy_chosen_verbose", c.policy_chosen_verbose)?;
        let rv = Desc::optional("policy_rejected_verbose", c.policy_rejected_verbose)?;
        let gc = Desc::required("grad_policy_chosen_out", grad_policy_chosen_out)?;
        let gr = Desc::required("grad_policy_rejected_out", grad_policy_rejected_out)?;
        let (gcv, grv) = if cfg.ld_alpha.is_some() {
            (
                Some(Desc::required("grad_policy_chosen_verbose_out", c.grad_policy_chosen_verbose_out)?),
                Some(Desc::required("grad_policy_rejected_verbose_out", c.grad_policy_rejected_verbose_out)?),
            )
        } else {
            (None, None)
        };
        let losses = Desc::optional("losses_out", c.losses_out)?;
        let descs = [
            Some(&pc),
            Some(&pr),
            rc.as_ref(),
            rr.as_ref(),
            cl.as_ref(),
            rl.as_ref(),
            pw.as_ref(),
            cv.as_ref(),
            rv.as_ref(),
            Some(&gc),
            Some(&gr),
            gcv.as_ref(),
            grv.as_ref(),
            losses.as_ref(),
        ];
        let metrics = HostOut::versioned("metrics_out", metrics_out)?;
        check_host_outputs(&[Some(loss.span()), metrics.as_ref().map(HostOut::span)], &descs)?;
        on_device(&descs, stream, || {
            let opt = |d: &Option<Desc>| d.as_ref().map(|d| d.tensor()).transpose();
            let (pc, pr, rc, rr, cl, rl) = (pc.tensor()?, pr.tensor()?, opt(&rc)?, opt(&rr)?, opt(&cl)?, opt(&rl)?);
            let (pw, cv, rv) = (opt(&pw)?, opt(&cv)?, opt(&rv)?);
            let logps = PreferenceLogps {
                policy_chosen: &pc,
                policy_rejected: &pr,
                reference_chosen: rc.as_ref(),
                reference_rejected: rr.as_ref(),
                chosen_lengths: cl.as_ref(),
                rejected_lengths: rl.as_ref(),
                policy_chosen_verbose: cv.as_ref(),
                policy_rejected_verbose: rv.as_ref(),
                pair_weights: pw.as_ref(),
            };
            let r = dpo_loss(&logps, &cfg)?;
            let mut outputs = vec![(Some(&gc), &r.grad_policy_chosen), (Some(&gr), &r.grad_policy_rejected)];
            outputs.push((losses.as_ref(), &r.losses));
            if let (Some(g), Some(t)) = (gcv.as_ref(), r.grad_policy_chosen_verbose.as_ref()) {
                outputs.push((Some(g), t));
            }
            if let (Some(g), Some(t)) = (grv.as_ref(), r.grad_policy_rejected_verbose.as_ref()) {
                outputs.push((Some(g), t));
            }
            write_outputs(&outputs)?;
            loss.write(r.loss);
            let m = r.metrics;
            let bco = cfg.losses().contains(DpoLossType::BcoPair);
            let (bco_delta, bco_count) = match r.bco_delta {
                BcoDelta::Running { mean, count } if bco => (mean, count),
                BcoDelta::Fixed(delta) if bco => (delta, -1.0),
                _ => (f32::NAN, f32::NAN),
            };
            if let Some(out) = metrics {
                out.write(ur_dpo_metrics {
                    struct_size: size_of_u32::<ur_dpo_metrics>(),
                    rewards_chosen: m.rewards_chosen,
                    rewards_rejected: m.rewards_rejected,
                    rewards_accuracies: m.rewards_accuracies,
                    rewards_margins: m.rewards_margins,
                    logps_chosen: m.logps_chosen,
                    logps_rejected: m.logps_rejected,
                    nll_loss: m.nll_loss.unwrap_or(f32::NAN),
                    log_odds_ratio: m.log_odds_ratio.unwrap_or(f32::NAN),
                    log_odds_chosen: m.log_odds_chosen.unwrap_or(f32::NAN),
                    bco_delta,
                    bco_count,
                });
            }
            Ok(())
        })
    })
}

/// Hyper-parameters of `ur_bradley_terry_loss`. Initialise with `ur_bradley_terry_config_default()`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ur_bradley_terry_config {
    /// `sizeof(ur_bradley_terry_config)`.
    pub struct_size: u32,
    /// TRL's `center_rewards_coefficient` (>= 0; default 0, no centring term).
    pub center_rewards_coefficient: f32,
    /// The upstream gradient of the loss (default 1).
    pub grad_output: f32,
}

impl Versioned for ur_bradley_terry_config {
    const NAME: &'static str = "ur_bradley_terry_config";
}

impl Config for ur_bradley_terry_config {
    fn default_value() -> Self {
        let d = BradleyTerryConfig::default();
        ur_bradley_terry_config {
            struct_size: size_of_u32::<Self>(),
            center_rewards_coefficient: d.center_rewards_coefficient.unwrap_or(0.0),
            grad_output: d.grad_output,
        }
    }
}

/// No centring, grad_output 1.
#[no_mangle]
pub extern "C" fn ur_bradley_terry_config_default() -> ur_bradley_terry_config {
    ur_bradley_terry_config::default_value()
}

/// Means over the pairs.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, NoUninit)]
pub struct ur_bradley_terry_metrics {
    /// `sizeof(ur_bradley_terry_metrics)`, set by the caller before the call: this library writes the fields both know.
    pub struct_size: u32,
    /// Share of pairs with r_chosen > r_rejected strictly.
    pub accuracy: f32,
    pub rewards_chosen: f32,
    pub rewards_rejected: f32,
    pub margins: f32,
    /// Mean of (r_chosen + r_rejected)^2, before its coefficient.
    pub center_term: f32,
}

impl Versioned for ur_bradley_terry_metrics {
    const NAME: &'static str = "ur_bradley_terry_metrics";
}

/// The Bradley-Terry reward-model loss `mean(-log sigmoid(r_c - r_r - margin)) + c * mean((r_c + r_r)^2)` on float
/// `[P]` rewards of one dtype (`margin` `[P]` or NULL). Outputs: `*loss_out` (required), `grad_chosen_out`,
/// `grad_rejected_out` `[P]` in the rewards' dtype (required), `*metrics_out` (may be NULL). Waits for its CUDA work.
///
/// # Safety
/// As for `ur_dpo_loss`.
#[no_mangle]
pub unsafe extern "C" fn ur_bradley_terry_loss(
    ctx: *mut ur_context,
    rewards_chosen: *const DLTensor,
    rewards_rejected: *const DLTensor,
    margin: *const DLTensor,
    cfg: *const ur_bradley_terry_config,
    loss_out: *mut f32,
    grad_chosen_out: *const DLTensor,
    grad_rejected_out: *const DLTensor,
    metrics_out: *mut ur_bradley_terry_metrics,
    stream: *mut c_void,
) -> ur_status {
    // SAFETY (whole body): this function's contract, passed on to the helpers that read the pointers.
    call(|| unsafe {
        context::check(ctx)?;
        let c = read_config(cfg)?;
        let cfg = BradleyTerryConfig {
            center_rewards_coefficient: Some(c.center_rewards_coefficient),
            grad_output: c.grad_output,
        };
        let loss = HostOut::scalar("loss_out", loss_out)?;
        let chosen = Desc::required("rewards_chosen", rewards_chosen)?;
        let rejected = Desc::required("rewards_rejected", rewards_rejected)?;
        let margin = Desc::optional("margin", margin)?;
        let gc = Desc::required("grad_chosen_out", grad_chosen_out)?;
        let gr = Desc::required("grad_rejected_out", grad_rejected_out)?;
        let metrics = HostOut::versioned("metrics_out", metrics_out)?;
        let descs = [Some(&chosen), Some(&rejected), margin.as_ref(), Some(&gc), Some(&gr)];
        check_host_outputs(&[Some(loss.span()), metrics.as_ref().map(HostOut::span)], &descs)?;
        on_device(&descs, stream, || {
            let margin = margin.as_ref().map(|m| m.tensor()).transpose()?;
            let r = bradley_terry_loss(&chosen.tensor()?, &rejected.tensor()?, margin.as_ref(), &cfg)?;
            write_outputs(&[(Some(&gc), &r.grad_chosen), (Some(&gr), &r.grad_rejected)])?;
            loss.write(r.loss);
            let m = r.metrics;
            if let Some(out) = metrics {
                out.write(ur_bradley_terry_metrics {
                    struct_size: size_of_u32::<ur_bradley_terry_metrics>(),
                    accuracy: m.accuracy,
                    rewards_chosen: m.rewards_chosen,
                    rewards_rejected: m.rewards_rejected,
                    margins: m.margins,
                    center_term: m.center_term,
                });
            }
            Ok(())
        })
    })
}

/// Hyper-parameters of `ur_kwise_loss`. Initialise with `ur_kwise_config_default()`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ur_kwise_config {
    /// `sizeof(ur_kwise_config)`.
    pub struct_size: u32,
    /// `UR_KWISE_ALL_PAIRS` (default) or `UR_KWISE_PLACKETT_LUCE`.
    pub method: i32,
    /// The upstream gradient of the loss (default 1).
    pub grad_output: f32,
}

impl Versioned for ur_kwise_config {
    const NAME: &'static str = "ur_kwise_config";
}

impl Config for ur_kwise_config {
    fn default_value() -> Self {
        ur_kwise_config { struct_size: size_of_u32::<Self>(), method: UR_KWISE_ALL_PAIRS, grad_output: 1.0 }
    }
}

/// All pairs, grad_output 1.
#[no_mangle]
pub extern "C" fn ur_kwise_config_default() -> ur_kwise_config {
    ur_kwise_config::default_value()
}

/// A K-wise ranking loss on float `rewards` `[G,K]` (K >= 2), candidates listed best first unless `order` (int32/
/// int64 `[G,K]`, or NULL) gives each group's candidate indices from best to worst. Outputs: `*loss_out` (mean over
/// groups, required), `grad_out` `[G,K]` in the rewards' dtype (required), `*accuracy_out` (share of correctly
/// ordered pairs; may be NULL). Waits for its CUDA work.
///
/// # Safety
/// As for `ur_dpo_loss`.
#[no_mangle]
pub unsafe extern "C" fn ur_kwise_loss(
    ctx: *mut ur_context,
    rewards: *const DLTensor,
    order: *const DLTensor,
    cfg: *const ur_kwise_config,
    loss_out: *mut f32,
    grad_out: *const DLTensor,
    accuracy_out: *mut f32,
    stream: *mut c_void,
) -> ur_status {
    // SAFETY (whole body): this function's contract, passed on to the helpers that read the pointers.
    call(|| unsafe {
        context::check(ctx)?;
        let c = read_config(cfg)?;
        let method = code("method", c.method, &[KwiseMethod::AllPairs, KwiseMethod::PlackettLuce])?;
        let cfg = KwiseConfig { method, grad_output: c.grad_output };
        let loss = HostOut::scalar("loss_out", loss_out)?;
        let rewards = Desc::required("rewards", rewards)?;
        let order = Desc::optional("order", order)?;
        let grad = Desc::required("grad_out", grad_out)?;
        let accuracy = HostOut::optional_scalar("accuracy_out", accuracy_out);
        let descs = [Some(&rewards), order.as_ref(), Some(&grad)];
        check_host_outputs(&[Some(loss.span()), accuracy.as_ref().map(HostOut::span)], &descs)?;
        on_device(&descs, stream, || {
            let order = order.as_ref().map(|o| o.tensor()).transpose()?;
            let r = kwise_loss(&rewards.tensor()?, order.as_ref(), &cfg)?;
            write_outputs(&[(Some(&grad), &r.grad)])?;
            loss.write(r.loss);
            if let Some(out) = accuracy {
                out.write(r.accuracy);
            }
            Ok(())
        })
    })
}

/// Hyper-parameters of `ur_diffusion_dpo_loss`. Initialise with `ur_diffusion_dpo_config_default()`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ur_diffusion_dpo_config {
    /// `sizeof(ur_diffusion_dpo_config)`.
    pub struct_size: u32,
    /// beta > 0, the paper's (default 2500); diffusers' `beta_dpo` is beta / 2.
    pub beta: f32,
    /// The upstream gradient of the loss (default 1).
    pub grad_output: f32,
}

impl Versioned for ur_diffusion_dpo_config {
    const NAME: &'static str = "ur_diffusion_dpo_config";
}

impl Config for ur_diffusion_dpo_config {
    fn default_value() -> Self {
        let d = DiffusionDpoConfig::default();
        ur_diffusion_dpo_config { struct_size: size_of_u32::<Self>(), beta: d.beta, grad_output: d.grad_output }
    }
}

/// beta 2500, grad_output 1.
#[no_mangle]
pub extern "C" fn ur_diffusion_dpo_config_default() -> ur_diffusion_dpo_config {
    ur_diffusion_dpo_config::default_value()
}

/// diffusers' logged values, means over the batch.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, NoUninit)]
pub struct ur_diffusion_dpo_metrics {
    /// `sizeof(ur_diffusion_dpo_metrics)`, set by the caller before the call: this library writes the fields both know.
    pub struct_size: u32,
    pub implicit_accuracy: f32,
    pub model_mse_winner: f32,
    pub model_mse_loser: f32,
    pub ref_mse_winner: f32,
    pub ref_mse_loser: f32,
}

impl Versioned for ur_diffusion_dpo_metrics {
    const NAME: &'static str = "ur_diffusion_dpo_metrics";
}

/// Diffusion-DPO (Wallace et al.'s loss, -logsigmoid(-beta/2 (model_diff - ref_diff))) on noise predictions: six
/// float tensors of one shape [B, D...] and dtype. Outputs: `*loss_out` (required), `grad_model_winner_out`,
/// `grad_model_loser_out` (shape and dtype of the predictions; required), `*metrics_out` (may be NULL). Waits for
/// its CUDA work.
///
/// # Safety
/// As for `ur_dpo_loss`.
#[no_mangle]
pub unsafe extern "C" fn ur_diffusion_dpo_loss(
    ctx: *mut ur_context,
    model_winner: *const DLTensor,
    model_loser: *const DLTensor,
    ref_winner: *const DLTensor,
    ref_loser: *const DLTensor,
    target_winner: *const DLTensor,
    target_loser: *const DLTensor,
    cfg: *const ur_diffusion_dpo_config,
    loss_out: *mut f32,
    grad_model_winner_out: *const DLTensor,
    grad_model_loser_out: *const DLTensor,
    metrics_out: *mut ur_diffusion_dpo_metrics,
    stream: *mut c_void,
) -> ur_status {
    // SAFETY (whole body): this function's contract, passed on to the helpers that read the pointers.
    call(|| unsafe {
        context::check(ctx)?;
        let c = read_config(cfg)?;
        let cfg = DiffusionDpoConfig { beta: c.beta, grad_output: c.grad_output };
        let loss = HostOut::scalar("loss_out", loss_out)?;
        let ins = [
            Desc::required("model_winner", model_winner)?,
            Desc::required("model_loser", model_loser)?,
            Desc::required("ref_winner", ref_winner)?,
            Desc::required("ref_loser", ref_loser)?,
            Desc::required("target_winner", target_winner)?,
            Desc::required("target_loser", target_loser)?,
        ];
        let gw = Desc::required("grad_model_winner_out", grad_model_winner_out)?;
        let gl = Desc::required("grad_model_loser_out", grad_model_loser_out)?;
        let mut descs: Vec<Option<&Desc>> = ins.iter().map(Some).collect();
        descs.extend([Some(&gw), Some(&gl)]);
        let metrics = HostOut::versioned("metrics_out", metrics_out)?;
        check_host_outputs(&[Some(loss.span()), metrics.as_ref().map(HostOut::span)], &descs)?;
        on_device(&descs, stream, || {
            let [mw, ml, rw, rl, tw, tl] = [0, 1, 2, 3, 4, 5].map(|i| ins[i].tensor());
            let (mw, ml, rw, rl, tw, tl) = (mw?, ml?, rw?, rl?, tw?, tl?);
            let inputs = DiffusionDpoInputs {
                model_winner: &mw,
                model_loser: &ml,
                ref_winner: &rw,
                ref_loser: &rl,
                target_winner: &tw,
                target_loser: &tl,
            };
            let r = diffusion_dpo_loss(&inputs, &cfg)?;
            write_outputs(&[(Some(&gw), &r.grad_model_winner), (Some(&gl), &r.grad_model_loser)])?;
            loss.write(r.loss);
            let m = r.metrics;
            if let Some(out) = metrics {
                out.write(ur_diffusion_dpo_metrics {
                    struct_size: size_of_u32::<ur_diffusion_dpo_metrics>(),
                    implicit_accuracy: m.implicit_accuracy,
                    model_mse_winner: m.model_mse_winner,
                    model_mse_loser: m.model_mse_loser,
                    ref_mse_winner: m.ref_mse_winner,
                    ref_mse_loser: m.ref_mse_loser,
                });
            }
            Ok(())
        })
    })
}
