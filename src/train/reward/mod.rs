//! A scalar reward model (TRL's `RewardTrainer`): a Qwen2 decoder with the head `score.weight` `[1, H]` on each
//! sequence's last real token (transformers' `Qwen2ForSequenceClassification`, `num_labels = 1`), trained on
//! preference pairs with Bradley–Terry (`-logσ(r_chosen - r_rejected - margin)`, optional margins and TRL's
//! `center_rewards_coefficient` term) or on ranked lists of K responses with a K-wise loss (Plackett–Luce, or
//! Bradley–Terry over all pairs).
//!
//! Per optimizer step, each micro-batch of G groups (pairs, or ranked lists of K) runs one forward over its `K·G`
//! rows (response-major: row `k·G + g` is group g's k-th best, as [`collate_pairs`](super::data::collate_pairs) and
//! [`collate_rankings`](super::data::collate_rankings) lay them out), reads one reward per row through the head,
//! takes the loss and its gradient with respect to the rewards from the preference ops
//! ([`bradley_terry_loss`](crate::ops::preference::bradley_terry_loss),
//! [`kwise_loss`](crate::ops::preference::kwise_loss)), sends that back through the head into the model, and adds
//! its gradients to the optimizer's accumulator weighted by its groups: a step's loss and gradient are the mean over
//! all its groups. An untied LM head is not part of the reward model and stays frozen.
//!
//! Every model call (forward, backward) is in `forward_rewards` and `RewardTrainer::backward`; beyond them the
//! model's type appears only where it is held, loaded and saved, so a LLaVA-capable model is a local change.

mod head;
mod loss;
mod run;

pub use head::{init_score, load_score, reward_config, SCORE_WEIGHT};
pub use loss::{RewardLoss, RewardMetrics};
pub use run::{RewardData, RewardOutcome, RewardRun};

use super::data::SequenceBatch;
use super::optim::{AdamW, AdamWConfig, ParamGroup};
use crate::model::qwen2::{ForwardOptions, ForwardPass, HeadGradient, OutputGrads, Qwen2Gradients, Qwen2Model};
use crate::ops::heads::{scalar_reward, scalar_reward_backward, ScalarHead};
use crate::runtime::{DType, Tensor};
use crate::{Error, Result};
use loss::loss_of;

/// What a reward trainer is built with.
#[derive(Clone, Debug, Default)]
pub struct RewardTrainerConfig {
    pub optimizer: AdamWConfig,
    /// Parameter groups (own learning rate, frozen), matched by checkpoint name (`score.weight` for the head).
    pub groups: Vec<ParamGroup>,
    pub forward: ForwardOptions,
    pub loss: RewardLoss,
}

/// A micro-batch of G groups of K responses: `rows` holds `K·G` rows response-major (row `k·G + g`: group g's k-th
/// best, padding on the right or the left: each row's reward is read at its last token of mask 1); `margin`, for
/// Bradley–Terry only, one value per pair.
#[derive(Clone, Debug)]
pub struct RewardBatch {
    pub rows: SequenceBatch,
    /// Responses per group (2 for pairs).
    pub k: usize,
    pub margin: Option<Vec<f32>>,
}

impl RewardBatch {
    /// Pairs as [`collate_pairs`](super::data::collate_pairs) lays them out.
    pub fn pairs(rows: SequenceBatch, margin: Option<Vec<f32>>) -> RewardBatch {
        RewardBatch { rows, k: 2, margin }
    }

    pub fn groups(&self) -> usize {
        self.rows.rows / self.k.max(1)
    }
}

/// What one optimizer step did.
#[derive(Clone, Debug, PartialEq)]
pub struct RewardStepMetrics {
    /// Steps done, this one included.
    pub step: u64,
    /// Means over the step's groups, before the update.
    pub metrics: RewardMetrics,
    /// Groups (pairs or ranked lists) of the step.
    pub groups: usize,
    /// Real tokens (mask 1) of the step.
    pub tokens: usize,
    /// The global gradient norm before clipping (when clipping is on).
    pub grad_norm: Option<f64>,
    /// The default group's learning rate of this step.
    pub lr: f64,
    /// The held-out evaluation after this step, when one was due.
    pub eval: Option<RewardMetrics>,
}

/// Each row's last position of mask 1 (the token whose hidden state the head reads).
fn row_ends(rows: &SequenceBatch) -> std::result::Result<Vec<i64>, String> {
    (0..rows.rows)
        .map(|r| {
            let mask = &rows.mask[r * rows.len..(r + 1) * rows.len];
            mask.iter().rposition(|&m| m != 0).map(|e| e as i64).ok_or_else(|| format!("row {r} has no token"))
        })
        .collect()
}

/// The model's forward over `rows` and each row's reward `[rows, 1]`: the only place the trainer runs the model
/// forward.
fn forward_rewards(
    model: &Qwen2Model,
    score: &Tensor,
    rows: &SequenceBatch,
    ends: &Tensor,
    forward: ForwardOptions,
) -> Result<(ForwardPass, Tensor)> {
    let [ids, mask, _] = rows.tensors(model.device())?;
    let pass = model.forward(&ids, &mask, forward)?;
    let rewards = scalar_reward(ScalarHead { hidden: pass.hidden(), ends, weight: score, bias: None })?;
    Ok((pass, rewards))
}

/// A Qwen2 model with its reward head, optimizer and gradient buffers.
#[derive(Debug)]
pub struct RewardTrainer {
    model: Qwen2Model,
    /// `score.weight` `[1, H]`, f32 like the model.
    score: Tensor,
    grads: Qwen2Gradients,
    grad_score: Tensor,
    optimizer: AdamW,
    config: RewardTrainerConfig,
}

impl RewardTrainer {
    /// Over an f32 `model` and its head `score` `[1, H]` (see [`init_score`] and [`load_score`]).
    pub fn new(model: Qwen2Model, score: Tensor, config: RewardTrainerConfig) -> Result<RewardTrainer> {
        let hidden = model.config.hidden_size;
        if model.dtype() != DType::F32 || score.dtype() != DType::F32 {
            return Err(Error::InvalidArgument("the reward trainer trains f32 models with an f32 head".into()));
        }
        if score.shape() != [1, hidden] || score.device() != model.device() {
            return Err(Error::InvalidArgument(format!(
                "`{SCORE_WEIGHT}` is {:?} on {}, want [1, {hidden}] on the model's {}",
                score.shape(),
                score.device(),
                model.device()
            )));
        }
        if let RewardLoss::BradleyTerry { center_rewards_coefficient: Some(c) } = config.loss {
            if !(c.is_finite() && c >= 0.0) {
                return Err(Error::InvalidArgument(format!(
                    "`--center-rewards-coefficient` must be finite and >= 0, got {c}"
                )));
            }
        }
        let mut groups = config.groups.clone();
        if model.weights.lm_head.is_some() {
            // Not part of Qwen2ForSequenceClassification: no gradient reaches it, and weight decay must not move it.
            let name = model.weights.names().lm_head.clone();
            groups.insert(0, ParamGroup::new("lm_head", &[&name]).frozen());
        }
        let optimizer = AdamW::new(&named(&model, &score), groups, config.optimizer.clone())?;
        let grads = Qwen2Gradients {
            weights: model.weights.zeros_like()?,
            inputs_embeds: Tensor::zeros(&[0, 0, hidden], model.dtype(), model.device())?,
        };
        let grad_score = Tensor::zeros(&[1, hidden], DType::F32, model.device())?;
        Ok(RewardTrainer { model, score, grads, grad_score, optimizer, config })
    }

    pub fn model(&self) -> &Qwen2Model {
        &self.model
    }

    /// The head `score.weight` `[1, H]`.
    pub fn score(&self) -> &Tensor {
        &self.score
    }

    pub fn optimizer(&self) -> &AdamW {
        &self.optimizer
    }

    /// The optimizer, writable: restoring its state from a checkpoint.
    pub fn optimizer_mut(&mut self) -> &mut AdamW {
        &mut self.optimizer
    }

    pub fn config(&self) -> &RewardTrainerConfig {
        &self.config
    }

    /// The model's parameters then `score.weight`, under their checkpoint names (what a checkpoint holds).
    pub fn named_parameters(&self) -> Vec<(String, &Tensor)> {
        named(&self.model, &self.score)
    }

    /// The gradients of the last [`RewardTrainer::backward`], named as [`RewardTrainer::named_parameters`].
    pub fn gradients(&self) -> Vec<(String, &Tensor)> {
        let mut all = self.grads.weights.named();
        all.push((SCORE_WEIGHT.into(), &self.grad_score));
        all
    }

    /// The trained model and head.
    pub fn into_parts(self) -> (Qwen2Model, Tensor) {
        (self.model, self.score)
    }

    /// Each row's reward (in the batch's order): forward only.
    pub fn rewards(&self, rows: &SequenceBatch) -> Result<Vec<f32>> {
        self.check_rows(rows).map_err(Error::InvalidArgument)?;
        let ends = row_ends(rows).map_err(Error::InvalidArgument)?;
        let ends = Tensor::from_slice(&ends, &[rows.rows], self.model.device())?;
        let (_, rewards) = forward_rewards(&self.model, &self.score, rows, &ends, self.config.forward)?;
        rewards.to_vec::<f32>()
    }

    /// The loss and metrics of `batches` (a held-out set) without training: means over all their groups.
    pub fn evaluate(&self, batches: &[RewardBatch]) -> Result<RewardMetrics> {
        self.check_all(batches)?;
        let mut parts = Vec::with_capacity(batches.len());
        for batch in batches {
            let (metrics, _) = loss_of(&self.rewards(&batch.rows)?, batch, self.config.loss)?;
            parts.push((batch.groups() as f64, metrics));
        }
        Ok(RewardMetrics::weighted_mean(&parts))
    }

    /// One optimizer step over `micro_batches` (gradient accumulation: one or more).
    pub fn step(&mut self, micro_batches: &[RewardBatch]) -> Result<RewardStepMetrics> {
        // Everything is checked before the first micro-batch adds to the accumulator.
        self.check_all(micro_batches)?;
        let (mut parts, mut tokens) = (Vec::with_capacity(micro_batches.len()), 0);
        for batch in micro_batches {
            let metrics = self.backward(batch)?;
            let mut grads = self.grads.weights.named();
            grads.push((SCORE_WEIGHT.into(), &self.grad_score));
            self.optimizer.accumulate(&grads, batch.groups() as f64)?;
            parts.push((batch.groups() as f64, metrics));
            tokens += batch.rows.mask.iter().filter(|&&m| m != 0).count();
        }
        let mut params = self.model.weights.named_mut();
        params.push((SCORE_WEIGHT.into(), &mut self.score));
        let report = self.optimizer.step_accumulated(&mut params)?;
        Ok(RewardStepMetrics {
            step: report.step,
            metrics: RewardMetrics::weighted_mean(&parts),
            groups: micro_batches.iter().map(RewardBatch::groups).sum(),
            tokens,
            grad_norm: report.grad_norm,
            lr: report.lr,
            eval: None,
        })
    }

    /// Forward, loss and backward of one batch: its loss and metrics, its gradients left in
    /// [`RewardTrainer::gradients`] (of the batch's mean loss). Nothing is stepped.
    pub fn backward(&mut self, batch: &RewardBatch) -> Result<RewardMetrics> {
        self.check_batch(batch).map_err(Error::InvalidArgument)?;
        let device = self.model.device();
        let stream = [batch.rows.rows, batch.rows.len, self.model.config.hidden_size];
        if self.grads.inputs_embeds.shape() != stream {
            self.grads.inputs_embeds = Tensor::zeros(&stream, self.model.dtype(), device)?;
        }
        let ends = row_ends(&batch.rows).map_err(Error::InvalidArgument)?;
        let ends = Tensor::from_slice(&ends, &[batch.rows.rows], device)?;
        let (pass, rewards) = forward_rewards(&self.model, &self.score, &batch.rows, &ends, self.config.forward)?;
        let (metrics, grad) = loss_of(&rewards.to_vec::<f32>()?, batch, self.config.loss)?;
        let grad = Tensor::from_f32(&grad, &[batch.rows.rows, 1], DType::F32, device)?;
        let head = ScalarHead { hidden: pass.hidden(), ends: &ends, weight: &self.score, bias: None };
        let head = scalar_reward_backward(head, &grad)?;
        self.grad_score.copy_from(&head.grad_weight)?;
        let output = OutputGrads { hidden: head.grad_hidden, lm_head: HeadGradient::None };
        self.model.backward_into(pass, output, &mut self.grads)?;
        Ok(metrics)
    }

    fn check_all(&self, batches: &[RewardBatch]) -> Result<()> {
        if batches.is_empty() {
            return Err(Error::InvalidArgument("a reward step or evaluation needs at least one batch".into()));
        }
        for (i, batch) in batches.iter().enumerate() {
            self.check_batch(batch).map_err(|e| Error::InvalidArgument(format!("micro-batch {i}: {e}")))?;
        }
        Ok(())
    }

    /// What is wrong with the rows, if anything: sizes, token ids, a row without a token.
    fn check_rows(&self, rows: &SequenceBatch) -> std::result::Result<(), String> {
        let size = rows.rows * rows.len;
        if size == 0 {
            return Err(format!("the batch is [{}, {}]: no token", rows.rows, rows.len));
        }
        for (name, len) in [("ids", rows.ids.len()), ("mask", rows.mask.len())] {
            if len != size {
                return Err(format!("`{name}` has {len} values, want {size} for {} rows", rows.rows));
            }
        }
        let vocab = self.model.config.vocab_size;
        if let Some(id) = rows.ids.iter().find(|&&id| !(0..vocab as i64).contains(&id)) {
            return Err(format!("token id {id} in `ids` is outside the vocabulary of {vocab}"));
        }
        row_ends(rows).map(|_| ())
    }

    /// What is wrong with `batch`, if anything.
    fn check_batch(&self, batch: &RewardBatch) -> std::result::Result<(), String> {
        let (rows, k) = (&batch.rows, batch.k);
        if k < 2 || rows.rows == 0 || !rows.rows.is_multiple_of(k) {
            return Err(format!("{} rows in groups of {k}: a reward batch has K ≥ 2 rows per group", rows.rows));
        }
        if matches!(self.config.loss, RewardLoss::BradleyTerry { .. }) && k != 2 {
            return Err(format!("Bradley–Terry trains on pairs, the batch has groups of {k}: use a K-wise loss"));
        }
        self.check_rows(rows)?;
        match (&batch.margin, self.config.loss) {
            (Some(_), RewardLoss::Kwise(_)) => return Err("a margin is a Bradley–Terry input".into()),
            (Some(m), _) if m.len() != batch.groups() => {
                return Err(format!("{} margins for {} pairs", m.len(), batch.groups()))
            }
            (Some(m), _) => {
                if let Some(v) = m.iter().find(|v| !v.is_finite()) {
                    return Err(format!("a margin is {v}"));
                }
            }
            (None, _) => {}
        }
        Ok(())
    }
}

/// The model's parameters then `score.weight`.
fn named<'a>(model: &'a Qwen2Model, score: &'a Tensor) -> Vec<(String, &'a Tensor)> {
    let mut all = model.weights.named();
    all.push((SCORE_WEIGHT.into(), score));
    all
}
