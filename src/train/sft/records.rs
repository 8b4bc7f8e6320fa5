//! [`SftRecordTrainer`]: the SFT trainer stepped by its caller on batches of conversation records (LLaVA's JSON,
//! one object a record) instead of a data file — what the C ABI and Python expose so that a script drives the loop.
//! Records are tokenized, collated and trained exactly as [`SftRun`](super::SftRun) does the same records drawn in
//! the same batches, with the same optimizer settings: the losses and parameters are bitwise the run's.

use std::path::{Path, PathBuf};

use super::{SftConfig, SftStepMetrics, SftTrainer};
use crate::runtime::DType;
use crate::train::data::{collate_conversations, ConversationTokenizer, DataOptions, SftDataset};
use crate::train::model::TrainModel;
use crate::train::run::{check_steps_left, save_run_checkpoint_with, StepOptions, TrainerState};
use crate::{Error, Result};

/// The task of every record: the step-driven trainer reports the overall loss only (per-task losses need the task
/// list before the first step).
const TASK: &str = "records";

/// An SFT trainer over a checkpoint, stepped on the caller's batches of conversation records.
#[derive(Debug)]
pub struct SftRecordTrainer {
    trainer: SftTrainer,
    tokenizer: ConversationTokenizer,
    data: DataOptions,
    /// The checkpoint trained from (its tokenizer files and config are copied into each saved checkpoint).
    source: PathBuf,
    total_steps: usize,
}

impl SftRecordTrainer {
    /// Loads the checkpoint in `model` (config, weights, tokenizer files, chat template; for LLaVA-OneVision its
    /// preprocessor config) in f32 on `options.device`, with a fresh optimizer — or, with `options.resume_from`,
    /// the weights and optimizer state of a checkpoint [`save`](Self::save) wrote.
    pub fn new(model: &Path, options: &StepOptions) -> Result<SftRecordTrainer> {
        let train = options.checked(&[model])?;
        let tokenizer = ConversationTokenizer::from_checkpoint_dir(model)?;
        let loaded = TrainModel::load(options.weights_dir(model)?, DType::F32, options.device, options.video_frames)?;
        let config = SftConfig {
            optimizer: train.optimizer(options.total_steps)?,
            groups: train.groups(),
            tasks: 1,
            ..SftConfig::default()
        };
        let data = DataOptions { media_folder: options.media_folder.clone(), ..train.data() };
        let mut trainer = SftTrainer::new(loaded, config)?;
        options.restore(trainer.optimizer_mut())?;
        Ok(SftRecordTrainer { trainer, tokenizer, data, source: model.to_path_buf(), total_steps: options.total_steps })
    }

    /// The trainer (its model and optimizer).
    pub fn trainer(&self) -> &SftTrainer {
        &self.trainer
    }

    /// One optimizer step over `micro_batches` (gradient accumulation over one or more), each a list of
    /// conversation records in batch order. Every record is parsed, tokenized and its media decoded before the
    /// first micro-batch runs; a bad one is an error naming it (`micro_batches[i][j]`) and nothing is updated.
    pub fn step(&mut self, micro_batches: &[Vec<&str>]) -> Result<SftStepMetrics> {
        check_steps_left(self.trainer.optimizer().steps_done(), self.total_steps)?;
        let media = self.trainer.model().media_loader();
        let mut batches = Vec::with_capacity(micro_batches.len());
        for (i, records) in micro_batches.iter().enumerate() {
            if records.is_empty() {
                return Err(Error::InvalidArgument(format!("`micro_batches[{i}]` holds no record")));
            }
            let what = format!("micro_batches[{i}]");
            let data = SftDataset::from_conversation_records(records, &what, TASK, &self.tokenizer, &self.data, media)?;
            if media.is_none() {
                if let Some(e) = data.examples.iter().find(|e| !e.media.is_empty()) {
                    return Err(Error::InvalidArgument(format!(
                        "`{what}[{}]` has images or videos but the model is a text-only Qwen2",
                        e.line - 1
                    )));
                }
            }
            let examples: Vec<_> = data.examples.iter().collect();
            batches.push(collate_conversations(&examples, self.tokenizer.pad_id()));
        }
        self.trainer.step(&batches)
    }

    /// Writes `out/checkpoint-<step>/` as [`SftRun`](super::SftRun) does — the weights in the source's layout
    /// (transformers loads them) and `trainer_state/` (the optimizer's moments and masters and the step), in one
    /// atomic rename — without a data-loader position (the caller's loop has its own). Returns its folder.
    pub fn save(&self, out: &Path) -> Result<PathBuf> {
        let optimizer = self.trainer.optimizer();
        let state = TrainerState {
            step: optimizer.steps_done(),
            total_steps: self.total_steps,
            loader: None,
            extra: serde_json::Value::Null,
        };
        save_run_checkpoint_with(out, optimizer, &state, |dir, options, extra| {
            self.trainer.model().save(&self.source, dir, options, extra)
        })
    }
}
