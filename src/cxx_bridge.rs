//! The cxx bridge (feature `cxx`): the Rust API for C++ programs that link the static library `libunireward.a`
//! (a cdylib cannot export cxx's symbols; C and other languages use the C ABI instead).
//!
//! Inputs are host arrays (`rust::Slice<const T>`, row-major, their dimensions passed beside them) and the work
//! runs on the CPU; results come back as shared structs of `rust::Vec`. An [`Error`] becomes a `rust::Error`
//! exception whose `what()` is its message. An empty slice stands for an absent optional input, and an absent
//! optional output is an empty `rust::Vec` (or NaN for a scalar). The C++ declarations are in the generated header
//! `unireward_cxx.h`, namespace `unireward::rs`.

use crate::ops::compare::{self, Verdicts};
use crate::ops::heads::{self, VerdictGrads};
use crate::ops::logprobs::{self, LogProbsConfig, SequenceLogProbs};
use crate::ops::preference::{self, PreferenceLogps};
use crate::runtime::{Device, Element, Tensor};
use crate::{Error, Result};

#[cxx::bridge(namespace = "unireward::rs")]
mod ffi {
    /// How a sequence's token log-probs are combined.
    enum TokenReduction {
        /// The sum over counted tokens (DPO).
        Sum,
        /// The mean over counted tokens (IPO, SimPO).
        Mean,
    }

    /// Which tokens count (label ≠ `ignore_index`, mask ≠ 0) and how they are reduced.
    struct LogProbsOptions {
        ignore_index: i64,
        reduction: TokenReduction,
    }

    /// The shape [N, T, V] of a logits array.
    struct LogitsShape {
        n: usize,
        t: usize,
        v: usize,
    }

    /// Per-sequence results [N], plus the per-token logsumexp [N·T] the backward needs.
    struct SequenceLogps {
        logps: Vec<f32>,
        token_counts: Vec<f32>,
        mean_logits: Vec<f32>,
        entropy: Vec<f32>,
        lse: Vec<f32>,
    }

    /// TRL's DPO loss types.
    enum DpoLossType {
        Sigmoid,
        Hinge,
        Ipo,
        Robust,
        BcoPair,
        ExoPair,
        NcaPair,
        SppoHard,
        ApoZero,
        ApoDown,
        Simpo,
        Orpo,
        Aot,
        AotPair,
        Discopop,
    }

    /// Hyper-parameters of `dpo_loss` (see `dpo_options_default`); `rpo_alpha` counts only when `use_rpo`.
    struct DpoOptions {
        loss_type: DpoLossType,
        beta: f32,
        label_smoothing: f32,
        reference_free: bool,
        use_rpo: bool,
        rpo_alpha: f32,
        simpo_gamma: f32,
        /// BCO's running mean before this batch; with a negative `bco_count`, the delta used as given.
        bco_delta: f32,
        /// BCO's running count before this batch (0 at the start): see `ur_dpo_config.bco_count`.
        bco_count: f32,
        grad_output: f32,
    }

    /// TRL's logged metrics; NaN where the loss type has none.
    struct DpoMetrics {
        rewards_chosen: f32,
        rewards_rejected: f32,
        rewards_accuracies: f32,
        rewards_margins: f32,
        logps_chosen: f32,
        logps_rejected: f32,
        nll_loss: f32,
        log_odds_ratio: f32,
        log_odds_chosen: f32,
        /// BCO's running mean and count after this batch, for the next call's options; NaN without bco_pair.
        bco_delta: f32,
        bco_count: f32,
    }

    /// The loss, its gradients with respect to the policy log-probs [P], and the metrics.
    struct DpoResult {
        loss: f32,
        grad_policy_chosen: Vec<f32>,
        grad_policy_rejected: Vec<f32>,
        metrics: DpoMetrics,
    }

    /// Class probabilities [B·K], log-probabilities [B·K] and expected scores [B] (empty without class values).
    struct Verdict {
        num_classes: usize,
        probs: Vec<f32>,
        log_probs: Vec<f32>,
        expected_score: Vec<f32>,
    }

    /// What `compare` and `select_pairs` read: scores [G·K] or verdict log-odds [G·K·K].
    enum VerdictKind {
        Scores,
        LogOdds,
    }

    /// How a score margin becomes a preference probability.
    enum ScoreLink {
        Sigmoid,
        Hard,
    }

    /// Configuration of `compare` (see `compare_options_default`): the link and the Bradley–Terry fit.
    struct CompareOptions {
        score_link: ScoreLink,
        ridge: f32,
        tolerance: f32,
        max_iterations: u32,
    }

    /// Everything `compare` computes, per group (G) and candidate (K); `consistency` [G] only for log-odds.
    struct Comparison {
        preference: Vec<f32>,
        wins: Vec<f32>,
        copeland: Vec<i32>,
        ranks: Vec<i32>,
        strengths: Vec<f32>,
        iterations: Vec<i32>,
        converged: Vec<i32>,
        best: Vec<i32>,
        worst: Vec<i32>,
        consistency: Vec<f32>,
    }

    /// How candidates are paired for the selection rule.
    enum Pairing {
        Adjacent,
        AllPairs,
    }

    /// What a tied pair verdict does.
    enum TiePolicy {
        Skip,
        FirstWins,
        DropGroup,
    }

    /// What a NaN verdict or pointwise score does.
    enum NanPolicy {
        Fail,
        Skip,
    }

    /// Configuration of `select_pairs`.
    struct SelectionOptions {
        pairing: Pairing,
        ties: TiePolicy,
        nans: NanPolicy,
    }

    /// The selected pair of each group [G]; index −1 and score NaN where a group has no pick.
    struct Selection {
        chosen: Vec<i32>,
        rejected: Vec<i32>,
        chosen_score: Vec<f32>,
        rejected_score: Vec<f32>,
        kept: Vec<i32>,
    }

    extern "Rust" {
        /// Verdict classes: token ids in CSR form, validated once; optional values (one per class, or empty).
        type VerdictClasses;
        fn num_classes(self: &VerdictClasses) -> usize;
        fn verdict_classes(class_offsets: &[i64], token_ids: &[i64], values: &[f32]) -> Result<Box<VerdictClasses>>;

        /// The library's version ("0.1.0").
        fn version() -> &'static str;

        fn logprobs_options_default() -> LogProbsOptions;
        fn sequence_logprobs(
            logits: &[f32],
            labels: &[i64],
            mask: &[f32],
            shape: LogitsShape,
            options: &LogProbsOptions,
        ) -> Result<SequenceLogps>;
        fn sequence_logprobs_backward(
            logits: &[f32],
            labels: &[i64],
            mask: &[f32],
            shape: LogitsShape,
            saved: &SequenceLogps,
            grad_logps: &[f32],
            options: &LogProbsOptions,
        ) -> Result<Vec<f32>>;

        fn dpo_options_default() -> DpoOptions;
        fn dpo_loss(
            policy_chosen: &[f32],
            policy_rejected: &[f32],
            reference_chosen: &[f32],
            reference_rejected: &[f32],
            chosen_lengths: &[i64],
            rejected_lengths: &[i64],
            options: &DpoOptions,
        ) -> Result<DpoResult>;

        fn verdict_head(logits: &[f32], batch: usize, vocab: usize, classes: &VerdictClasses) -> Result<Verdict>;
        fn verdict_head_backward(
            logits: &[f32],
            batch: usize,
            vocab: usize,
            classes: &VerdictClasses,
            grad_log_probs: &[f32],
            grad_expected_score: &[f32],
        ) -> Result<Vec<f32>>;

        fn compare_options_default() -> CompareOptions;
        fn compare(
            kind: VerdictKind,
            verdicts: &[f32],
            groups: usize,
            candidates: usize,
            options: &CompareOptions,
        ) -> Result<Comparison>;

        fn selection_options_default() -> SelectionOptions;
        fn select_pairs(
            kind: VerdictKind,
            verdicts: &[f32],
            pointwise: &[f32],
            groups: usize,
            candidates: usize,
            options: &SelectionOptions,
        ) -> Result<Selection>;
    }
}

/// Maps a shared enum to the crate's; C++ can pass any integer, which is an error rather than a panic.
macro_rules! convert {
    ($value:expr, $name:literal, { $($from:path => $to:expr),+ $(,)? }) => {
        match $value {
            $($from => Ok($to),)+
            other => Err(Error::InvalidArgument(format!("{} has no value {}", $name, other.repr))),
        }
    };
}

/// [`heads::VerdictClasses`], opaque to C++.
pub struct VerdictClasses(heads::VerdictClasses);

impl VerdictClasses {
    fn num_classes(&self) -> usize {
        self.0.num_classes()
    }
}

fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// A CPU tensor over `data` without a copy, for the length of a call; `name` appears in a shape error.
fn view<T: Element>(name: &str, data: &[T], shape: &[usize]) -> Result<Tensor> {
    let numel = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    if numel != Some(data.len()) {
        return Err(Error::Shape(format!("`{name}` has {} values, expected shape {shape:?}", data.len())));
    }
    // SAFETY: `data` is valid, aligned and row-major for `shape` (checked above); the shared borrow keeps it alive
    // and unmodified while the tensor lives, and every caller below only reads the tensor within its own call.
    unsafe { Tensor::from_raw_parts(data.as_ptr() as u64, shape, T::DTYPE, Device::Cpu) }
}

/// [`view`] of an optional input: an empty slice is absent.
fn optional<T: Element>(name: &str, data: &[T], shape: &[usize]) -> Result<Option<Tensor>> {
    (!data.is_empty()).then(|| view(name, data, shape)).transpose()
}

fn verdict_classes(class_offsets: &[i64], token_ids: &[i64], values: &[f32]) -> Result<Box<VerdictClasses>> {
    let offsets = view("class_offsets", class_offsets, &[class_offsets.len()])?;
    let ids = view("token_ids", token_ids, &[token_ids.len()])?;
    let mut classes = heads::VerdictClasses::from_csr(&offsets, &ids)?;
    if !values.is_empty() {
        classes = classes.with_values(values)?;
    }
    Ok(Box::new(VerdictClasses(classes)))
}

fn logprobs_options_default() -> ffi::LogProbsOptions {
    let cfg = LogProbsConfig::default();
    let reduction = match cfg.reduction {
        logprobs::TokenReduction::Sum => ffi::TokenReduction::Sum,
        logprobs::TokenReduction::Mean => ffi::TokenReduction::Mean,
    };
    ffi::LogProbsOptions { ignore_index: cfg.ignore_index, reduction }
}

impl TryFrom<&ffi::LogProbsOptions> for LogProbsConfig {
    type Error = Error;

    fn try_from(o: &ffi::LogProbsOptions) -> Result<Self> {
        use ffi::TokenReduction as R;
        let reduction = convert!(o.reduction, "TokenReduction", {
            R::Sum => logprobs::TokenReduction::Sum,
            R::Mean => logprobs::TokenReduction::Mean,
        })?;
        Ok(LogProbsConfig { ignore_index: o.ignore_index, reduction })
    }
}

fn sequence_logprobs(
    logits: &[f32],
    labels: &[i64],
    mask: &[f32],
    shape: ffi::LogitsShape,
    options: &ffi::LogProbsOptions,
) -> Result<ffi::SequenceLogps> {
    let ffi::LogitsShape { n, t, v } = shape;
    let out = logprobs::sequence_logprobs(
        &view("logits", logits, &[n, t, v])?,
        &view("labels", labels, &[n, t])?,
        optional("mask", mask, &[n, t])?.as_ref(),
        &options.try_into()?,
    )?;
    Ok(ffi::SequenceLogps {
        logps: out.logps.to_vec()?,
        token_counts: out.token_counts.to_vec()?,
        mean_logits: out.mean_logits.to_vec()?,
        entropy: out.entropy.to_vec()?,
        lse: out.lse.to_vec()?,
    })
}

fn sequence_logprobs_backward(
    logits: &[f32],
    labels: &[i64],
    mask: &[f32],
    shape: ffi::LogitsShape,
    saved: &ffi::SequenceLogps,
    grad_logps: &[f32],
    options: &ffi::LogProbsOptions,
) -> Result<Vec<f32>> {
    let ffi::LogitsShape { n, t, v } = shape;
    let saved = SequenceLogProbs {
        logps: view("saved.logps", &saved.logps, &[n])?,
        token_counts: view("saved.token_counts", &saved.token_counts, &[n])?,
        mean_logits: view("saved.mean_logits", &saved.mean_logits, &[n])?,
        entropy: view("saved.entropy", &saved.entropy, &[n])?,
        lse: view("saved.lse", &saved.lse, &[n, t])?,
    };
    logprobs::sequence_logprobs_backward(
        &view("logits", logits, &[n, t, v])?,
        &view("labels", labels, &[n, t])?,
        optional("mask", mask, &[n, t])?.as_ref(),
        &saved,
        &view("grad_logps", grad_logps, &[n])?,
        &options.try_into()?,
    )?
    .to_vec()
}

/// The bridge's loss types, in the order of [`preference::DpoLossType::ALL`].
const DPO_LOSS_TYPES: [ffi::DpoLossType; 15] = [
    ffi::DpoLossType::Sigmoid,
    ffi::DpoLossType::Hinge,
    ffi::DpoLossType::Ipo,
    ffi::DpoLossType::Robust,
    ffi::DpoLossType::BcoPair,
    ffi::DpoLossType::ExoPair,
    ffi::DpoLossType::NcaPair,
    ffi::DpoLossType::SppoHard,
    ffi::DpoLossType::ApoZero,
    ffi::DpoLossType::ApoDown,
    ffi::DpoLossType::Simpo,
    ffi::DpoLossType::Orpo,
    ffi::DpoLossType::Aot,
    ffi::DpoLossType::AotPair,
    ffi::DpoLossType::Discopop,
];
// A loss type added to the crate must be added to the bridge too.
const _: () = assert!(DPO_LOSS_TYPES.len() == preference::DpoLossType::ALL.len());

fn dpo_options_default() -> ffi::DpoOptions {
    let cfg = preference::DpoConfig::default();
    let index = preference::DpoLossType::ALL.iter().position(|&t| t == cfg.loss_type).unwrap_or(0);
    ffi::DpoOptions {
        loss_type: DPO_LOSS_TYPES[index],
        beta: cfg.beta,
        label_smoothing: cfg.label_smoothing,
        reference_free: cfg.reference_free,
        use_rpo: cfg.rpo_alpha.is_some(),
        rpo_alpha: cfg.rpo_alpha.unwrap_or(0.0),
        simpo_gamma: cfg.simpo_gamma,
        bco_delta: 0.0,
        bco_count: 0.0,
        grad_output: cfg.grad_output,
    }
}

impl TryFrom<&ffi::DpoOptions> for preference::DpoConfig {
    type Error = Error;

    fn try_from(o: &ffi::DpoOptions) -> Result<Self> {
        let index = DPO_LOSS_TYPES.iter().position(|&t| t == o.loss_type);
        let loss_type = index
            .map(|i| preference::DpoLossType::ALL[i])
            .ok_or_else(|| Error::InvalidArgument(format!("DpoLossType has no value {}", o.loss_type.repr)))?;
        let bco_delta = if o.bco_count < 0.0 {
            preference::BcoDelta::Fixed(o.bco_delta)
        } else {
            preference::BcoDelta::Running { mean: o.bco_delta, count: o.bco_count }
        };
        Ok(preference::DpoConfig {
            loss_type,
            beta: o.beta,
            label_smoothing: o.label_smoothing,
            reference_free: o.reference_free,
            rpo_alpha: o.use_rpo.then_some(o.rpo_alpha),
            simpo_gamma: o.simpo_gamma,
            bco_delta,
            grad_output: o.grad_output,
            ..Default::default()
        })
    }
}

fn dpo_loss(
    policy_chosen: &[f32],
    policy_rejected: &[f32],
    reference_chosen: &[f32],
    reference_rejected: &[f32],
    chosen_lengths: &[i64],
    rejected_lengths: &[i64],
    options: &ffi::DpoOptions,
) -> Result<ffi::DpoResult> {
    let pairs = [policy_chosen.len()];
    let chosen = view("policy_chosen", policy_chosen, &pairs)?;
    let rejected = view("policy_rejected", policy_rejected, &pairs)?;
    let ref_chosen = optional("reference_chosen", reference_chosen, &pairs)?;
    let ref_rejected = optional("reference_rejected", reference_rejected, &pairs)?;
    let len_chosen = optional("chosen_lengths", chosen_lengths, &pairs)?;
    let len_rejected = optional("rejected_lengths", rejected_lengths, &pairs)?;
    let inputs = PreferenceLogps {
        reference_chosen: ref_chosen.as_ref(),
        reference_rejected: ref_rejected.as_ref(),
        chosen_lengths: len_chosen.as_ref(),
        rejected_lengths: len_rejected.as_ref(),
        ..PreferenceLogps::new(&chosen, &rejected)
    };
    let cfg: preference::DpoConfig = options.try_into()?;
    let out = preference::dpo_loss(&inputs, &cfg)?;
    let m = out.metrics;
    let (bco_delta, bco_count) = match out.bco_delta {
        preference::BcoDelta::Running { mean, count } if cfg.loss_type == preference::DpoLossType::BcoPair => {
            (mean, count)
        }
        preference::BcoDelta::Fixed(delta) if cfg.loss_type == preference::DpoLossType::BcoPair => (delta, -1.0),
        _ => (f32::NAN, f32::NAN),
    };
    Ok(ffi::DpoResult {
        loss: out.loss,
        grad_policy_chosen: out.grad_policy_chosen.to_vec()?,
        grad_policy_rejected: out.grad_policy_rejected.to_vec()?,
        metrics: ffi::DpoMetrics {
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
        },
    })
}

fn verdict_head(logits: &[f32], batch: usize, vocab: usize, classes: &VerdictClasses) -> Result<ffi::Verdict> {
    let out = heads::verdict_head(&view("logits", logits, &[batch, vocab])?, &classes.0)?;
    Ok(ffi::Verdict {
        num_classes: classes.num_classes(),
        probs: out.probs.to_vec()?,
        log_probs: out.log_probs.to_vec()?,
        expected_score: out.expected_score.map_or(Ok(Vec::new()), |t| t.to_vec())?,
    })
}

fn verdict_head_backward(
    logits: &[f32],
    batch: usize,
    vocab: usize,
    classes: &VerdictClasses,
    grad_log_probs: &[f32],
    grad_expected_score: &[f32],
) -> Result<Vec<f32>> {
    let log_probs = optional("grad_log_probs", grad_log_probs, &[batch, classes.num_classes()])?;
    let expected_score = optional("grad_expected_score", grad_expected_score, &[batch])?;
    let grads = VerdictGrads { log_probs: log_probs.as_ref(), expected_score: expected_score.as_ref() };
    heads::verdict_head_backward(&view("logits", logits, &[batch, vocab])?, &classes.0, grads)?.to_vec()
}

/// The verdicts as the crate's [`Verdicts`], over a tensor `compare` and `select_pairs` read.
fn verdicts_view(kind: ffi::VerdictKind, verdicts: &[f32], groups: usize, candidates: usize) -> Result<Tensor> {
    use ffi::VerdictKind as K;
    let (name, shape) = convert!(kind, "VerdictKind", {
        K::Scores => ("scores", vec![groups, candidates]),
        K::LogOdds => ("log_odds", vec![groups, candidates, candidates]),
    })?;
    view(name, verdicts, &shape)
}

fn as_verdicts(tensor: &Tensor) -> Verdicts<'_> {
    if tensor.rank() == 3 {
        Verdicts::LogOdds(tensor)
    } else {
        Verdicts::Scores(tensor)
    }
}

fn compare_options_default() -> ffi::CompareOptions {
    let cfg = compare::CompareConfig::default();
    let score_link = match cfg.score_link {
        compare::ScoreLink::Sigmoid => ffi::ScoreLink::Sigmoid,
        compare::ScoreLink::Hard => ffi::ScoreLink::Hard,
    };
    let fit = cfg.fit;
    ffi::CompareOptions { score_link, ridge: fit.ridge, tolerance: fit.tolerance, max_iterations: fit.max_iterations }
}

fn compare(
    kind: ffi::VerdictKind,
    verdicts: &[f32],
    groups: usize,
    candidates: usize,
    options: &ffi::CompareOptions,
) -> Result<ffi::Comparison> {
    use ffi::ScoreLink as L;
    let score_link = convert!(options.score_link, "ScoreLink", {
        L::Sigmoid => compare::ScoreLink::Sigmoid,
        L::Hard => compare::ScoreLink::Hard,
    })?;
    let fit = compare::BradleyTerryFit {
        ridge: options.ridge,
        tolerance: options.tolerance,
        max_iterations: options.max_iterations,
    };
    let input = verdicts_view(kind, verdicts, groups, candidates)?;
    let out = compare::compare(as_verdicts(&input), &compare::CompareConfig { score_link, fit })?;
    Ok(ffi::Comparison {
        preference: out.preference.to_vec()?,
        wins: out.wins.to_vec()?,
        copeland: out.copeland.to_vec()?,
        ranks: out.ranks.to_vec()?,
        strengths: out.strengths.to_vec()?,
        iterations: out.iterations.to_vec()?,
        converged: out.converged.to_vec()?,
        best: out.best.to_vec()?,
        worst: out.worst.to_vec()?,
        consistency: out.consistency.map_or(Ok(Vec::new()), |t| t.to_vec())?,
    })
}

fn selection_options_default() -> ffi::SelectionOptions {
    let cfg = compare::SelectionConfig::default();
    let pairing = match cfg.pairing {
        compare::Pairing::Adjacent => ffi::Pairing::Adjacent,
        compare::Pairing::AllPairs => ffi::Pairing::AllPairs,
    };
    let ties = match cfg.ties {
        compare::TiePolicy::Skip => ffi::TiePolicy::Skip,
        compare::TiePolicy::FirstWins => ffi::TiePolicy::FirstWins,
        compare::TiePolicy::DropGroup => ffi::TiePolicy::DropGroup,
    };
    let nans = match cfg.nans {
        compare::NanPolicy::Error => ffi::NanPolicy::Fail,
        compare::NanPolicy::Skip => ffi::NanPolicy::Skip,
    };
    ffi::SelectionOptions { pairing, ties, nans }
}

impl TryFrom<&ffi::SelectionOptions> for compare::SelectionConfig {
    type Error = Error;

    fn try_from(o: &ffi::SelectionOptions) -> Result<Self> {
        use ffi::{NanPolicy as N, Pairing as P, TiePolicy as T};
        Ok(compare::SelectionConfig {
            pairing: convert!(o.pairing, "Pairing", {
                P::Adjacent => compare::Pairing::Adjacent,
                P::AllPairs => compare::Pairing::AllPairs,
            })?,
            ties: convert!(o.ties, "TiePolicy", {
                T::Skip => compare::TiePolicy::Skip,
                T::FirstWins => compare::TiePolicy::FirstWins,
                T::DropGroup => compare::TiePolicy::DropGroup,
            })?,
            nans: convert!(o.nans, "NanPolicy", {
                N::Fail => compare::NanPolicy::Error,
                N::Skip => compare::NanPolicy::Skip,
            })?,
        })
    }
}

fn select_pairs(
    kind: ffi::VerdictKind,
    verdicts: &[f32],
    pointwise: &[f32],
    groups: usize,
    candidates: usize,
    options: &ffi::SelectionOptions,
) -> Result<ffi::Selection> {
    let input = verdicts_view(kind, verdicts, groups, candidates)?;
    let scores = view("pointwise", pointwise, &[groups, candidates])?;
    let out = compare::select_pairs(as_verdicts(&input), &scores, &options.try_into()?)?;
    Ok(ffi::Selection {
        chosen: out.chosen.to_vec()?,
        rejected: out.rejected.to_vec()?,
        chosen_score: out.chosen_score.to_vec()?,
        rejected_score: out.rejected_score.to_vec()?,
        kept: out.kept.to_vec()?,
    })
}
