//! Direct preference optimisation of a policy ([`TrainModel`]: Qwen2, or LLaVA-OneVision with the prompts' images and
//! videos): per optimizer step, each micro-batch of pairs
//! runs one forward over its chosen and rejected rows together (TRL's concatenated forward), takes each row's summed
//! completion log-probability through the fused LM head (no `[N,T,V]` logits), gets the DPO-family loss and its
//! gradient with respect to those log-probabilities from [`dpo_loss`] (TRL's loss types, length normalisation for
//! IPO/SimPO/ORPO done there from the token counts), and sends that gradient back through the fused head into the
//! model. Gradients are accumulated weighted by each micro-batch's pairs, so a step's loss and gradient are the mean
//! over all its pairs (for the losses that treat pairs independently: all but AOT's sorting and BCO's running mean,
//! which see each micro-batch as TRL does). Reference log-probabilities come with the batches: precomputed once and
//! cached ([`mod@reference`]), or from a frozen copy on the fly ([`DpoRun`]).
//!
//! LD-DPO (`ld_alpha`) takes each row's verbose tail in the same pass through the head, weighted per token, and
//! splits the reference's log-probs alike (see `ld.rs`); WPO (`use_weighting`) weights each pair's loss by the
//! policy's own length-normalised probability of its completions, from statistics of the same pass (see `wpo.rs`).

mod ld;
mod records;
pub mod reference;
mod run;
mod wpo;

pub use records::DpoRecordTrainer;
pub use run::{DpoOutcome, DpoRun, ReferenceSource};

use super::data::SequenceBatch;
use super::optim::{AdamW, AdamWConfig, ParamGroup};
use crate::model::qwen2::{ForwardOptions, LabelExtras, LabelLogps};
use crate::ops::fused_linear::FusedLinearConfig;
use crate::ops::preference::{dpo_loss, BcoDelta, DpoConfig, DpoMetrics, DpoOutput, PreferenceLogps};
use crate::runtime::{DType, Device, Tensor};
use crate::train::model::{TrainGradients, TrainModel, TrainPass};
use crate::{Error, Result};

/// What a DPO trainer is built with.
#[derive(Clone, Debug, Default)]
pub struct DpoTrainerConfig {
    pub optimizer: AdamWConfig,
    /// Parameter groups (own learning rate, frozen), matched by checkpoint name.
    pub groups: Vec<ParamGroup>,
    /// The fused head's chunking (and ignore index: the labels' `-100`).
    pub head: FusedLinearConfig,
    pub forward: ForwardOptions,
    /// The loss: type(s), β, label smoothing, `reference_free`, ... (TRL's `DPOConfig` fields).
    pub loss: DpoConfig,
}

/// Summed completion log-probabilities of P pairs (each completion's labelled tokens).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PairLogps {
    pub chosen: Vec<f32>,
    pub rejected: Vec<f32>,
}

/// A micro-batch of P pairs: the `2P` rows of [`collate_pairs`](super::data::collate_pairs) (chosen in rows
/// `0..P`, rejected in `P..2P`, labels on the completions only) and, when the loss uses them, the reference
/// log-probabilities of its pairs in the same order.
#[derive(Clone, Debug)]
pub struct PairBatch {
    pub rows: SequenceBatch,
    pub reference: Option<PairLogps>,
}

impl PairBatch {
    pub fn pairs(&self) -> usize {
        self.rows.rows / 2
    }
}

/// What one optimizer step did: TRL's logged metrics (means over the step's pairs) and the optimizer's report.
#[derive(Clone, Debug, PartialEq)]
pub struct DpoStepMetrics {
    /// Steps done, this one included.
    pub step: u64,
    /// The loss before the update: the mean over the step's pairs.
    pub loss: f64,
    /// `rewards/chosen`, `rewards/rejected`, `rewards/accuracies`, `rewards/margins`, `logps/chosen`,
    /// `logps/rejected` (and the RPO/ORPO extras): means over the step's pairs.
    pub metrics: DpoMetrics,
    pub pairs: usize,
    /// Labelled completion tokens of the step (chosen and rejected, all micro-batches).
    pub tokens: usize,
    /// The global gradient norm before clipping (when clipping is on).
    pub grad_norm: Option<f64>,
    /// The default group's learning rate of this step.
    pub lr: f64,
}

impl DpoStepMetrics {
    /// The step's line of a `metrics.jsonl` log, TRL's metric names (`unireward dpo`'s and the pipeline's).
    pub fn log_line(&self) -> serde_json::Value {
        let m = &self.metrics;
        serde_json::json!({
            "step": self.step, "loss": self.loss,
            "rewards/chosen": m.rewards_chosen, "rewards/rejected": m.rewards_rejected,
            "rewards/accuracies": m.rewards_accuracies, "rewards/margins": m.rewards_margins,
            "logps/chosen": m.logps_chosen, "logps/rejected": m.logps_rejected,
            "grad_norm": self.grad_norm, "lr": self.lr, "tokens": self.tokens, "pairs": self.pairs,
        })
    }
}

/// The summed log-probabilities of each pair's completions under `model` (and, with `ld_alpha`, of their verbose
/// tails: [`LabelLogps::weighted`]; with `log_collision`, WPO's statistics) and, with them, what their backward
/// needs. The only place the trainer runs the model forward.
fn pair_logps(
    model: &TrainModel,
    rows: &SequenceBatch,
    forward: ForwardOptions,
    head: &FusedLinearConfig,
    ld_alpha: Option<f32>,
    log_collision: bool,
) -> Result<(TrainPass, LabelLogps)> {
    let verbose = ld_alpha.map(|_| ld::verbose_tokens(rows, head.logprobs.ignore_index));
    let pass = model.forward(&model.prepare(rows)?, forward)?;
    let extras = LabelExtras { token_weights: verbose.as_deref(), log_collision };
    let logps = model.language_model().label_logps(pass.lm(), &rows.labels, extras, head)?;
    Ok((pass, logps))
}

/// [`PairLogps`] of a batch's rows under a model that is not trained (the reference): forward only. With LD-DPO's
/// `ld_alpha` each completion's log-prob is its public part plus α times its verbose tail, as the policy's.
pub fn reference_logps(
    model: &TrainModel,
    rows: &SequenceBatch,
    forward: ForwardOptions,
    ld_alpha: Option<f32>,
) -> Result<PairLogps> {
    let (_, logps) = pair_logps(model, rows, forward, &FusedLinearConfig::default(), ld_alpha, false)?;
    Ok(match (ld_alpha, &logps.weighted) {
        (Some(alpha), Some(verbose)) => {
            let rows: Vec<f64> = logps
                .logps
                .iter()
                .zip(verbose)
                .map(|(&full, &verbose)| ld::desensitized(full, verbose, alpha))
                .collect();
            split(&rows)
        }
        _ => split(&logps.logps),
    })
}

/// Rows `0..P` and `P..2P` of per-row values.
fn split(rows: &[f64]) -> PairLogps {
    let (chosen, rejected) = rows.split_at(rows.len() / 2);
    let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect();
    PairLogps { chosen: f32s(chosen), rejected: f32s(rejected) }
}

/// A policy (Qwen2 or LLaVA-OneVision) with its optimizer and gradient buffers.
#[derive(Debug)]
pub struct DpoTrainer {
    model: TrainModel,
    grads: TrainGradients,
    optimizer: AdamW,
    config: DpoTrainerConfig,
    /// BCO's running mean, carried from step to step (and saved with a checkpoint).
    bco_delta: BcoDelta,
}

impl DpoTrainer {
    /// Refuses a loss configuration [`dpo_loss`] would refuse before building anything.
    pub fn new(model: impl Into<TrainModel>, config: DpoTrainerConfig) -> Result<DpoTrainer> {
        check_loss(&config.loss)?;
        let mut model = model.into();
        let optimizer = AdamW::new(&model.named_parameters(), config.groups.clone(), config.optimizer.clone())?;
        model.skip_frozen_gradients(&config.groups);
        let grads = model.zero_gradients()?;
        let bco_delta = config.loss.bco_delta;
        Ok(DpoTrainer { model, grads, optimizer, config, bco_delta })
    }

    pub fn model(&self) -> &TrainModel {
        &self.model
    }

    pub fn optimizer(&self) -> &AdamW {
        &self.optimizer
    }

    /// The optimizer, writable: restoring its state from a checkpoint.
    pub fn optimizer_mut(&mut self) -> &mut AdamW {
        &mut self.optimizer
    }

    pub fn config(&self) -> &DpoTrainerConfig {
        &self.config
    }

    /// The trained model.
    pub fn into_model(self) -> TrainModel {
        self.model
    }

    /// BCO's running mean as the next step will use it.
    pub fn bco_delta(&self) -> BcoDelta {
        self.bco_delta
    }

    /// Restores BCO's running mean (from a checkpoint).
    pub fn set_bco_delta(&mut self, delta: BcoDelta) {
        self.bco_delta = delta;
    }

    /// Whether batches must carry reference log-probabilities: the loss compares against a reference and is not
    /// `reference_free` (then the reference log-probs are taken as 0).
    pub fn needs_reference(&self) -> bool {
        needs_reference(&self.config.loss)
    }

    /// One optimizer step over `micro_batches` (gradient accumulation: one or more).
    pub fn step(&mut self, micro_batches: &[PairBatch]) -> Result<DpoStepMetrics> {
        if micro_batches.is_empty() {
            return Err(Error::InvalidArgument("a DPO step needs at least one micro-batch".into()));
        }
        // Everything is checked before the first micro-batch adds to the accumulator.
        for (i, batch) in micro_batches.iter().enumerate() {
            self.check_batch(batch).map_err(|e| Error::InvalidArgument(format!("micro-batch {i}: {e}")))?;
        }
        let (mut pairs, mut tokens, mut loss) = (0, 0, 0.0);
        let mut parts = Vec::with_capacity(micro_batches.len());
        for (i, batch) in micro_batches.iter().enumerate() {
            let (out, batch_tokens) = self.micro_batch(batch)?;
            if i + 1 < micro_batches.len() {
                self.optimizer.accumulate(&self.model.named_gradients(&self.grads), batch.pairs() as f64)?;
            }
            loss += batch.pairs() as f64 * f64::from(out.loss);
            pairs += batch.pairs();
            tokens += batch_tokens;
            parts.push((batch.pairs() as f64, out.metrics));
        }
        let last_pairs = micro_batches[micro_batches.len() - 1].pairs() as f64;
        let grads = self.model.named_gradients(&self.grads);
        let params = &mut self.model.named_parameters_mut();
        let report = self.optimizer.step_with_last_micro_batch(params, &grads, last_pairs)?;
        let metrics = pair_weighted_mean(&parts);
        Ok(DpoStepMetrics {
            step: report.step,
            loss: loss / pairs as f64,
            metrics,
            pairs,
            tokens,
            grad_norm: report.grad_norm,
            lr: report.lr,
        })
    }

    /// What is wrong with `batch`, if anything.
    fn check_batch(&self, batch: &PairBatch) -> std::result::Result<(), String> {
        let rows = &batch.rows;
        if rows.rows == 0 || !rows.rows.is_multiple_of(2) {
            return Err(format!("{} rows: a pair batch has a chosen and a rejected row per pair", rows.rows));
        }
        let (size, vocab) = (rows.rows * rows.len, self.model.language_model().config.vocab_size);
        for (name, len) in [("ids", rows.ids.len()), ("mask", rows.mask.len()), ("labels", rows.labels.len())] {
            if len != size {
                return Err(format!("`{name}` has {len} values, want {size} for {} rows", rows.rows));
            }
        }
        self.model.check_input_ids(&rows.ids)?;
        let in_vocab = |id: i64| (0..vocab as i64).contains(&id);
        let ignore = self.config.head.logprobs.ignore_index;
        if let Some(l) = rows.labels.iter().find(|&&l| l != ignore && !in_vocab(l)) {
            return Err(format!("label {l} is neither {ignore} nor in the vocabulary of {vocab}"));
        }
        let pairs = batch.pairs();
        if let Some(row) = (0..rows.rows).find(|&r| rows.predicted_labels(r, ignore) == 0) {
            let which = if row < pairs { "chosen" } else { "rejected" };
            return Err(format!("pair {}: the {which} completion has no token to learn", row % pairs));
        }
        match (&batch.reference, self.needs_reference()) {
            (None, true) => {
                let name = self.config.loss.losses().terms().iter().map(|(t, _)| t.trl_name()).collect::<Vec<_>>();
                return Err(format!("the {} loss needs the pairs' reference log-probabilities", name.join(" + ")));
            }
            (Some(r), true) if r.chosen.len() != pairs || r.rejected.len() != pairs => {
                return Err(format!(
                    "{} chosen and {} rejected reference log-probabilities for {pairs} pairs",
                    r.chosen.len(),
                    r.rejected.len()
                ));
            }
            (Some(r), true) => {
                if let Some(v) = r.chosen.iter().chain(&r.rejected).find(|v| !v.is_finite()) {
                    return Err(format!("a reference log-probability is {v}"));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Forward, loss and backward of one micro-batch into the gradient buffers (the step weighs them by its pairs).
    /// Returns the loss's output and the micro-batch's labelled tokens.
    fn micro_batch(&mut self, batch: &PairBatch) -> Result<(DpoOutput, usize)> {
        let device = self.model.device();
        let DpoTrainerConfig { forward, head, loss, .. } = &self.config;
        let (pass, logps) = pair_logps(&self.model, &batch.rows, *forward, head, loss.ld_alpha, loss.use_weighting)?;
        let pairs = batch.pairs();
        let policy = split(&logps.logps);
        let lengths: Vec<i64> = logps.tokens.iter().map(|&n| n as i64).collect();
        let vector = |v: &[f32]| Tensor::from_f32(v, &[pairs], DType::F32, device);
        let (chosen, rejected) = (vector(&policy.chosen)?, vector(&policy.rejected)?);
        let verbose = match &logps.weighted {
            Some(weighted) => {
                let verbose = split(weighted);
                Some((vector(&verbose.chosen)?, vector(&verbose.rejected)?))
            }
            None => None,
        };
        let pair_weights = match &logps.log_collision {
            Some(collision) => Some(vector(&wpo::pair_weights(&logps.logps, collision, &logps.tokens))?),
            None => None,
        };
        let chosen_lengths = Tensor::from_slice(&lengths[..pairs], &[pairs], device)?;
        let rejected_lengths = Tensor::from_slice(&lengths[pairs..], &[pairs], device)?;
        let reference = match batch.reference.as_ref().filter(|_| self.needs_reference()) {
            Some(r) => Some((vector(&r.chosen)?, vector(&r.rejected)?)),
            None => None,
        };
        let mut inputs = PreferenceLogps::new(&chosen, &rejected).with_lengths(&chosen_lengths, &rejected_lengths);
        if let Some((c, r)) = &reference {
            inputs = inputs.with_reference(c, r);
        }
        if let Some((c, r)) = &verbose {
            inputs = inputs.with_verbose(c, r);
        }
        if let Some(w) = &pair_weights {
            inputs = inputs.with_pair_weights(w);
        }
        let loss_config = DpoConfig { bco_delta: self.bco_delta, ..self.config.loss };
        let out = dpo_loss(&inputs, &loss_config)?;
        let rows = |chosen: &Tensor, rejected: &Tensor| -> Result<Vec<f32>> {
            let mut values = chosen.to_dtype(DType::F32)?.to_vec::<f32>()?;
            values.extend(rejected.to_dtype(DType::F32)?.to_vec::<f32>()?);
            Ok(values)
        };
        let grad_logps = rows(&out.grad_policy_chosen, &out.grad_policy_rejected)?;
        let grad_verbose = match (&out.grad_policy_chosen_verbose, &out.grad_policy_rejected_verbose) {
            (Some(c), Some(r)) => Some(rows(c, r)?),
            _ => None,
        };
        let lm = self.model.language_model();
        let grads = lm.label_logps_backward_into(
            pass.lm(),
            &logps,
            &grad_logps,
            grad_verbose.as_deref(),
            self.grads.language_model_mut(),
        )?;
        self.model.backward_into(pass, grads, &mut self.grads)?;
        self.bco_delta = out.bco_delta;
        Ok((out, logps.tokens.iter().sum()))
    }
}

/// The mean of each metric over micro-batches weighted by their pairs (an optional one over those that have it).
fn pair_weighted_mean(parts: &[(f64, DpoMetrics)]) -> DpoMetrics {
    let mean = |get: &dyn Fn(&DpoMetrics) -> Option<f32>| {
        let (sum, weight) = parts
            .iter()
            .filter_map(|(p, m)| get(m).map(|v| (p * f64::from(v), *p)))
            .fold((0.0, 0.0), |(s, w), (v, p)| (s + v, w + p));
        (weight > 0.0).then(|| (sum / weight) as f32)
    };
    let all = |get: &dyn Fn(&DpoMetrics) -> f32| mean(&|m| Some(get(m))).unwrap_or(0.0);
    DpoMetrics {
        rewards_chosen: all(&|m| m.rewards_chosen),
        rewards_rejected: all(&|m| m.rewards_rejected),
        rewards_accuracies: all(&|m| m.rewards_accuracies),
        rewards_margins: all(&|m| m.rewards_margins),
        logps_chosen: all(&|m| m.logps_chosen),
        logps_rejected: all(&|m| m.logps_rejected),
        nll_loss: mean(&|m| m.nll_loss),
        log_odds_ratio: mean(&|m| m.log_odds_ratio),
        log_odds_chosen: mean(&|m| m.log_odds_chosen),
    }
}

/// See [`DpoTrainer::needs_reference`].
pub(crate) fn needs_reference(loss: &DpoConfig) -> bool {
    loss.losses().uses_reference() && !loss.reference_free
}

/// Refuses what the trainer does not do and what [`dpo_loss`] would refuse, by running its own checks on one
/// made-up pair, so a bad β or mixture is an error when the trainer is built, not at its first step.
fn check_loss(loss: &DpoConfig) -> Result<()> {
    if let Some(problem) = loss.ld_alpha_problem() {
        return Err(Error::InvalidArgument(format!("`ld_alpha` {problem}")));
    }
    let cpu = Device::Cpu;
    let (chosen, rejected) =
        (Tensor::from_f32(&[-1.0], &[1], DType::F32, cpu)?, Tensor::from_f32(&[-2.0], &[1], DType::F32, cpu)?);
    let lengths = Tensor::from_slice(&[2i64], &[1], cpu)?;
    let mut inputs =
        PreferenceLogps::new(&chosen, &rejected).with_lengths(&lengths, &lengths).with_reference(&rejected, &chosen);
    if loss.ld_alpha.is_some() {
        inputs = inputs.with_verbose(&rejected, &rejected);
    }
    let weights = Tensor::from_f32(&[1.0], &[1], DType::F32, cpu)?;
    if loss.use_weighting {
        inputs = inputs.with_pair_weights(&weights);
    }
    dpo_loss(&inputs, loss).map(|_| ())
}
