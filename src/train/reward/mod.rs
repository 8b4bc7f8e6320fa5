//! A scalar reward model (TRL's `RewardTrainer`): a [`TrainModel`] — a Qwen2 decoder, or a LLaVA-OneVision model
//! whose rows carry their prompts' images and videos — with the head `score.weight` `[1, H]` on the language model's
//! hidden state at each sequence's last real token (for Qwen2, transformers' `Qwen2ForSequenceClassification`,
//! `num_labels = 1`; transformers has no such class for LLaVA-OneVision: see [`RewardRun`]), trained on
//! preference pairs with Bradley–Terry (`-logσ(r_chosen - r_rejected - margin)`, optional margins and TRL's
//! `center_rewards_coefficient` term) or on ranked lists of K responses with a K-wise loss (Plackett–Luce, or
//! Bradley–Terry over all pairs).
//!
//! Per optimizer step, each micro-batch of G groups (pairs, or ranked lists of K) runs one forward over its `K·G`
//! rows (response-major: row `k·G + g` is group g's k-th best, as [`collate_pairs`](super::data::collate_pairs) and
//! [`collate_rankings`](super::data::collate_rankings) lay them out; a LLaVA model decodes each row's media first,
//! every response of a group sharing its prompt's), reads one reward per row through the head,
//! takes the loss and its gradient with respect to the rewards from the preference ops
//! ([`bradley_terry_loss`](crate::ops::preference::bradley_terry_loss),
//! [`kwise_loss`](crate::ops::preference::kwise_loss)), sends that back through the head into the model, and adds
//! its gradients to the optimizer's accumulator weighted by its groups (the last micro-batch's go to the step
//! directly): a step's loss and gradient are the mean over all its groups. An untied LM head is not part of the reward model and stays frozen.

mod head;
mod loss;
mod records;
mod run;

pub use head::{init_score, load_score, reward_config, SCORE_WEIGHT};
pub use loss::{RewardLoss, RewardMetrics};
pub use records::RewardRecordTrainer;
pub use run::{RewardData, RewardOutcome, RewardRun};

use super::data::SequenceBatch;
use super::model::{PreparedBatch, TrainGradients, TrainModel, TrainPass};
use super::optim::{AdamW, AdamWConfig, ParamGroup};
use crate::model::qwen2::{ForwardOptions, HeadGradient, OutputGrads};
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

/// The model's forward over a prepared batch and each row's reward `[rows, 1]`: the only place the trainer runs the
/// model forward.
fn forward_rewards(
    model: &TrainModel,
    score: &Tensor,
    rows: &PreparedBatch<'_>,
    ends: &Tensor,
    forward: ForwardOptions,
) -> Result<(TrainPass, Tensor)> {
    let pass = model.forward(rows, forward)?;
    let rewards = scalar_reward(ScalarHead { hidden: pass.lm().hidden(), ends, weight: score, bias: None })?;
    Ok((pass, rewards))
}

/// A model with its reward head, optimizer and gradient buffers.
#[derive(Debug)]
pub struct RewardTrainer {
    model: TrainModel,
    /// `score.weight` `[1, H]`, f32 like the model.
    score: Tensor,
    grads: TrainGradients,
    grad_score: Tensor,
    optimizer: AdamW,
    config: RewardTrainerConfig,
}

impl RewardTrainer {
    /// Over an f32 `model` (a Qwen2 or LLaVA-OneVision one) and its head `score` `[1, H]`, H the language model's
    /// hidden size (see [`init_score`] and [`load_score`]).
    pub fn new(model: impl Into<TrainModel>, score: Tensor, config: RewardTrainerConfig) -> Result<RewardTrainer> {
        let mut model = model.into();
        let hidden = model.language_model().config.hidden_size;
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
        let lm = &model.language_model().weights;
        if lm.lm_head.is_some() {
            // Not part of Qwen2ForSequenceClassification: no gradient reaches it, and weight decay must not move it.
            let name = lm.names().lm_head.clone();
            groups.insert(0, ParamGroup::new("lm_head", &[&name]).frozen());
        }
        let optimizer = AdamW::new(&named(&model, &score), groups.clone(), config.optimizer.clone())?;
        model.skip_frozen_gradients(&groups);
        let grads = model.zero_gradients()?;
        let grad_score = Tensor::zeros(&[1, hidden], DType::F32, model.device())?;
        Ok(RewardTrainer { model, score, grads, grad_score, optimizer, config })
    }

    pub fn model(&self) -> &TrainModel {
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
        let mut all = self.model.named_gradients(&self.grads);
        all.push((SCORE_WEIGHT.into(), &self.grad_score));
        all
    }

    /// The trained model and head.
    pub fn into_parts(self) -> (TrainModel, Tensor) {
        (self.model, self.score)
    }

    /// Each row's reward (in the batch's order): forward only (a LLaVA model decodes the rows' media first).
    pub fn rewards(&self, rows: &SequenceBatch) -> Result<Vec<f32>> {
        self.check_rows(rows).map_err(Error::InvalidArgument)?;
        self.prepared_rewards(&self.model.prepare(rows)?)
    }

    /// [`RewardTrainer::rewards`] of a batch already prepared (checked, its media decoded).
    fn prepared_rewards(&self, rows: &PreparedBatch<'_>) -> Result<Vec<f32>> {
        let ends = self.ends(rows.batch)?;
        let (_, rewards) = forward_rewards(&self.model, &self.score, rows, &ends, self.config.forward)?;
        rewards.to_vec::<f32>()
    }

    /// Each row's last real position, on the model's device.
    fn ends(&self, rows: &SequenceBatch) -> Result<Tensor> {
        let ends = row_ends(rows).map_err(Error::InvalidArgument)?;
        Tensor::from_slice(&ends, &[rows.rows], self.model.device())
    }

    /// The loss and metrics of `batches` (a held-out set) without training: means over all their groups.
    pub fn evaluate(&self, batches: &[RewardBatch]) -> Result<RewardMetrics> {
        self.check_all(batches)?;
        let mut parts = Vec::with_capacity(batches.len());
        for (i, batch) in batches.iter().enumerate() {
            // One batch's media decoded at a time: a held-out set can be large.
            let rows = self.model.prepare(&batch.rows).map_err(|e| in_batch(i, e.to_string()))?;
            let (metrics, _) = loss_of(&self.prepared_rewards(&rows)?, batch, self.config.loss)?;
            parts.push((batch.groups() as f64, metrics));
        }
        Ok(RewardMetrics::weighted_mean(&parts))
    }

    /// One optimizer step over `micro_batches` (gradient accumulation: one or more).
    pub fn step(&mut self, micro_batches: &[RewardBatch]) -> Result<RewardStepMetrics> {
        // Everything is checked (and every batch's media decoded) before the first micro-batch adds to the
        // accumulator, which a failed step would otherwise leave holding a part of its gradients.
        let prepared = self.prepare_all(micro_batches)?;
        let (mut parts, mut tokens) = (Vec::with_capacity(micro_batches.len()), 0);
        for (i, (batch, rows)) in micro_batches.iter().zip(&prepared).enumerate() {
            let metrics = self.prepared_backward(batch, rows)?;
            if i + 1 < micro_batches.len() {
                let mut grads = self.model.named_gradients(&self.grads);
                grads.push((SCORE_WEIGHT.into(), &self.grad_score));
                self.optimizer.accumulate(&grads, batch.groups() as f64)?;
            }
            parts.push((batch.groups() as f64, metrics));
            tokens += batch.rows.mask.iter().filter(|&&m| m != 0).count();
        }
        let mut grads = self.model.named_gradients(&self.grads);
        grads.push((SCORE_WEIGHT.into(), &self.grad_score));
        let mut params = self.model.named_parameters_mut();
        params.push((SCORE_WEIGHT.into(), &mut self.score));
        let last = micro_batches[micro_batches.len() - 1].groups() as f64;
        let report = self.optimizer.step_with_last_micro_batch(&mut params, &grads, last)?;
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
        let rows = self.model.prepare(&batch.rows)?;
        self.prepared_backward(batch, &rows)
    }

    /// [`RewardTrainer::backward`] of a batch already checked, `rows` its prepared rows.
    fn prepared_backward(&mut self, batch: &RewardBatch, rows: &PreparedBatch<'_>) -> Result<RewardMetrics> {
        let device = self.model.device();
        let ends = self.ends(&batch.rows)?;
        let (pass, rewards) = forward_rewards(&self.model, &self.score, rows, &ends, self.config.forward)?;
        let (metrics, grad) = loss_of(&rewards.to_vec::<f32>()?, batch, self.config.loss)?;
        let grad = Tensor::from_f32(&grad, &[batch.rows.rows, 1], DType::F32, device)?;
        let head = ScalarHead { hidden: pass.lm().hidden(), ends: &ends, weight: &self.score, bias: None };
        let head = scalar_reward_backward(head, &grad)?;
        self.grad_score.copy_from(&head.grad_weight)?;
        let output = OutputGrads { hidden: head.grad_hidden, lm_head: HeadGradient::None };
        self.model.backward_into(pass, output, &mut self.grads)?;
        Ok(metrics)
    }

    /// Every batch checked, then prepared (its media decoded), in order: an error names the micro-batch.
    fn prepare_all<'a>(&self, batches: &'a [RewardBatch]) -> Result<Vec<PreparedBatch<'a>>> {
        self.check_all(batches)?;
        let prepare = |(i, batch): (usize, &'a RewardBatch)| {
            self.model.prepare(&batch.rows).map_err(|e| in_batch(i, e.to_string()))
        };
        batches.iter().enumerate().map(prepare).collect()
    }

    fn check_all(&self, batches: &[RewardBatch]) -> Result<()> {
        if batches.is_empty() {
            return Err(Error::InvalidArgument("a reward step or evaluation needs at least one batch".into()));
        }
        for (i, batch) in batches.iter().enumerate() {
            self.check_batch(batch).map_err(|e| in_batch(i, e))?;
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
        self.model.check_input_ids(&rows.ids)?;
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

/// An error of micro-batch `i`, named so.
fn in_batch(i: usize, error: String) -> Error {
    Error::InvalidArgument(format!("micro-batch {i}: {error}"))
}

/// The model's parameters then `score.weight`.
fn named<'a>(model: &'a TrainModel, score: &'a Tensor) -> Vec<(String, &'a Tensor)> {
    let mut all = model.named_parameters();
    all.push((SCORE_WEIGHT.into(), score));
    all
}
