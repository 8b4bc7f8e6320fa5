//! Supervised fine-tuning of a judge (a text-only Qwen2 or a LLaVA-OneVision [`TrainModel`]) on its judgment text:
//! per optimizer step, each micro-batch (its media decoded first) runs forward, the next-token cross-entropy on the
//! batch's labels through the fused LM head (no `[N,T,V]` logits), backward into gradient buffers kept across steps,
//! and adds its gradients to the optimizer's accumulator weighted by its labelled tokens (the last micro-batch's go
//! to the step directly, so a step of one micro-batch needs no accumulator); the step then clips, applies the
//! schedule and updates (AdamW).
//! The loss of a step is the mean over all labelled tokens of its micro-batches, so accumulation over micro-batches
//! equals one step on their concatenation. With `data_parallel` > 1 that many micro-batches run at once on rayon's
//! threads, each into its own gradient buffers, and still reach the accumulator in their order.

mod bench;
mod eval;
mod records;
mod run;

pub use crate::train::run::latest_checkpoint;
pub use bench::{bench_log_entries, BENCH_KEY_PREFIX};
pub use eval::{EvalMetrics, SftEvaluation};
pub use records::SftRecordTrainer;
pub use run::{SftOutcome, SftRun};

use rayon::prelude::*;

use super::data::SequenceBatch;
use super::model::{PreparedBatch, TrainGradients, TrainModel};
use super::optim::{AdamW, AdamWConfig, ParamGroup};
use crate::model::qwen2::{CausalLmLoss, ForwardOptions};
use crate::ops::fused_linear::FusedLinearConfig;
use crate::{Error, Result};

/// What an SFT trainer is built with.
#[derive(Clone, Debug, Default)]
pub struct SftConfig {
    pub optimizer: AdamWConfig,
    /// Parameter groups (own learning rate, frozen), matched by checkpoint name.
    pub groups: Vec<ParamGroup>,
    /// The fused head's chunking (and ignore index: the labels' `-100`).
    pub head: FusedLinearConfig,
    pub forward: ForwardOptions,
    /// The number of tasks the batches' `tasks` index (per-task losses).
    pub tasks: usize,
    /// Micro-batches of a step trained at once on rayon's threads, each into its own gradient buffers (0 or 1:
    /// one at a time). For models too small to keep the cores busy inside one micro-batch; the step's result is
    /// the same to the bit, as the gradients are still added up in the micro-batches' order.
    pub data_parallel: usize,
}

/// What one optimizer step did.
#[derive(Clone, Debug, PartialEq)]
pub struct SftStepMetrics {
    /// Steps done, this one included.
    pub step: u64,
    /// Mean negative log-likelihood over the step's labelled next tokens, before the update.
    pub loss: f64,
    /// Labelled next tokens of the step (all micro-batches).
    pub tokens: usize,
    /// The global gradient norm before clipping (when clipping is on).
    pub grad_norm: Option<f64>,
    /// The default group's learning rate of this step.
    pub lr: f64,
    /// Per task: its mean loss over its tokens in this step, `None` when the step had none of its tokens.
    pub task_loss: Vec<Option<f64>>,
}

impl SftStepMetrics {
    /// The step's line of a `metrics.jsonl` log (`unireward train-judge`'s and the pipeline's).
    pub fn log_line(&self) -> serde_json::Value {
        serde_json::json!({
            "step": self.step, "loss": self.loss, "tokens": self.tokens, "grad_norm": self.grad_norm, "lr": self.lr,
            "task_loss": self.task_loss,
        })
    }
}

/// A model with its optimizer and gradient buffers (one set per micro-batch trained at once).
#[derive(Debug)]
pub struct SftTrainer {
    model: TrainModel,
    grads: Vec<TrainGradients>,
    optimizer: AdamW,
    config: SftConfig,
}

impl SftTrainer {
    pub fn new(model: impl Into<TrainModel>, config: SftConfig) -> Result<SftTrainer> {
        let mut model = model.into();
        let optimizer = AdamW::new(&model.named_parameters(), config.groups.clone(), config.optimizer.clone())?;
        model.skip_frozen_gradients(&config.groups);
        let grads = (0..config.data_parallel.max(1)).map(|_| model.zero_gradients()).collect::<Result<_>>()?;
        Ok(SftTrainer { model, grads, optimizer, config })
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

    /// Sets how many tasks the batches' `tasks` index: the length of each step's `task_loss`.
    pub fn set_task_count(&mut self, tasks: usize) {
        self.config.tasks = tasks;
    }

    /// The trained model.
    pub fn into_model(self) -> TrainModel {
        self.model
    }

    /// One optimizer step over `micro_batches` (gradient accumulation: one or more).
    pub fn step(&mut self, micro_batches: &[SequenceBatch]) -> Result<SftStepMetrics> {
        if micro_batches.is_empty() {
            return Err(Error::InvalidArgument("an SFT step needs at least one micro-batch".into()));
        }
        // Everything is checked (and every batch's media decoded) before the first micro-batch adds to the
        // accumulator, which a failed step would otherwise leave holding a part of its gradients.
        let mut prepared = Vec::with_capacity(micro_batches.len());
        for (i, batch) in micro_batches.iter().enumerate() {
            let in_batch = |e: String| Error::InvalidArgument(format!("micro-batch {i}: {e}"));
            self.check_batch(batch).map_err(in_batch)?;
            prepared.push(self.model.prepare(batch).map_err(|e| in_batch(e.to_string()))?);
        }
        let tasks = self.config.tasks;
        let (mut nll, mut tokens) = (0.0, 0);
        let (mut task_nll, mut task_tokens) = (vec![0.0; tasks], vec![0usize; tasks]);
        // Micro-batches run a wave at a time, one per gradient buffer; their gradients then go to the optimizer in
        // the micro-batches' order, each computed alone as in a sequential step: the same step to the bit.
        let (width, last) = (self.grads.len(), prepared.len() - 1);
        let mut report = None;
        for (wave, batches) in prepared.chunks(width).enumerate() {
            let (model, config) = (&self.model, &self.config);
            let outcomes: Vec<Result<(usize, Vec<f64>)>> = batches
                .par_iter()
                .zip(&mut self.grads)
                .map(|(batch, grads)| micro_batch(model, config, batch, grads))
                .collect();
            for (i, ((batch, outcome), grads)) in batches.iter().zip(outcomes).zip(&self.grads).enumerate() {
                let (batch_tokens, row_nll) = outcome?;
                let grads = self.model.named_gradients(grads);
                if wave * width + i < last {
                    self.optimizer.accumulate(&grads, batch_tokens as f64)?;
                } else {
                    let params = &mut self.model.named_parameters_mut();
                    report = Some(self.optimizer.step_with_last_micro_batch(params, &grads, batch_tokens as f64)?);
                }
                let batch = batch.batch;
                nll += row_nll.iter().sum::<f64>();
                tokens += batch_tokens;
                for (row, row_nll) in row_nll.iter().enumerate() {
                    task_nll[batch.tasks[row]] += row_nll;
                    task_tokens[batch.tasks[row]] +=
                        batch.predicted_labels(row, self.config.head.logprobs.ignore_index);
                }
            }
        }
        let report = report.expect("the last micro-batch makes the step");
        let task_loss = task_nll.iter().zip(&task_tokens).map(|(&l, &n)| (n > 0).then(|| l / n as f64)).collect();
        Ok(SftStepMetrics {
            step: report.step,
            loss: nll / tokens as f64,
            tokens,
            grad_norm: report.grad_norm,
            lr: report.lr,
            task_loss,
        })
    }

    /// What is wrong with `batch`, if anything.
    fn check_batch(&self, batch: &SequenceBatch) -> std::result::Result<(), String> {
        let (size, vocab, tasks) =
            (batch.rows * batch.len, self.model.language_model().config.vocab_size, self.config.tasks);
        let ignore = self.config.head.logprobs.ignore_index;
        for (name, len, want) in [
            ("ids", batch.ids.len(), size),
            ("mask", batch.mask.len(), size),
            ("labels", batch.labels.len(), size),
            ("tasks", batch.tasks.len(), batch.rows),
        ] {
            if len != want {
                return Err(format!("`{name}` has {len} values, want {want} for {} rows", batch.rows));
            }
        }
        self.model.check_input_ids(&batch.ids)?;
        let in_vocab = |id: i64| (0..vocab as i64).contains(&id);
        if let Some(l) = batch.labels.iter().find(|&&l| l != ignore && !in_vocab(l)) {
            return Err(format!("label {l} is neither {ignore} nor in the vocabulary of {vocab}"));
        }
        if let Some(t) = batch.tasks.iter().find(|&&t| t >= tasks) {
            return Err(format!("a row has task {t}, the trainer has {tasks} tasks"));
        }
        if (0..batch.rows).all(|row| batch.predicted_labels(row, ignore) == 0) {
            return Err("no labelled token past a row's first position: nothing to learn".into());
        }
        Ok(())
    }
}

/// Forward, loss and backward of one micro-batch into `grads` (the gradient of its mean loss; the step weighs it
/// by its tokens). Returns its labelled tokens and each row's summed loss.
fn micro_batch(
    model: &TrainModel,
    config: &SftConfig,
    batch: &PreparedBatch<'_>,
    grads: &mut TrainGradients,
) -> Result<(usize, Vec<f64>)> {
    let pass = model.forward(batch, config.forward)?;
    let CausalLmLoss { tokens, row_nll, grads: output_grads, .. } =
        model.causal_lm_loss_into_labels(&pass, &batch.batch.labels, &config.head, grads)?;
    model.backward_into(pass, output_grads, grads)?;
    Ok((tokens, row_nll))
}
