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

/// The task name the data reader gives a record without a `task` field.
const NO_TASK: &str = "";

/// An SFT trainer over a checkpoint, stepped on the caller's batches of conversation records.
#[derive(Debug)]
pub struct SftRecordTrainer {
    trainer: SftTrainer,
    tokenizer: ConversationTokenizer,
    data: DataOptions,
    /// The checkpoint trained from (its tokenizer files and config are copied into each saved checkpoint).
    source: PathBuf,
    total_steps: usize,
    /// The tasks of [`set_tasks`](Self::set_tasks), in the order of the metrics' `task_loss`; empty: every record
    /// counts as one task.
    tasks: Vec<String>,
    /// The last step's mean loss per task (`None`: none of its tokens in the step); empty before the first step.
    last_task_loss: Vec<Option<f64>>,
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
        let data =
            DataOptions { media_folder: options.media_folder.clone(), ..train.data() }.within(loaded.max_positions());
        let mut trainer = SftTrainer::new(loaded, config)?;
        options.restore(trainer.optimizer_mut())?;
        Ok(SftRecordTrainer {
            trainer,
            tokenizer,
            data,
            source: model.to_path_buf(),
            total_steps: options.total_steps,
            tasks: Vec::new(),
            last_task_loss: Vec::new(),
        })
    }

    /// Names the tasks of the caller's records (each record's `task` field, as in `train-judge`'s data files), so
    /// that every later step's `task_loss` holds each task's mean loss over its labelled tokens, in this order — the
    /// per-task losses of the paper's joint training. Every record must then name one of them; without a list (the
    /// default) every record counts as one task and no `task` field is read. The names must be distinct and not
    /// empty; on error the trainer is unchanged.
    pub fn set_tasks(&mut self, tasks: &[&str]) -> Result<()> {
        if tasks.is_empty() {
            return Err(Error::InvalidArgument("the task list is empty: name at least one task".into()));
        }
        for (i, task) in tasks.iter().enumerate() {
            if task.is_empty() {
                return Err(Error::InvalidArgument(format!("`tasks[{i}]` is empty")));
            }
            if tasks[..i].contains(task) {
                return Err(Error::InvalidArgument(format!("`tasks[{i}]` ({task:?}) is named twice")));
            }
        }
        self.tasks = tasks.iter().map(|t| t.to_string()).collect();
        self.trainer.set_task_count(tasks.len());
        Ok(())
    }

    /// The tasks [`set_tasks`](Self::set_tasks) named (empty when it was not called).
    pub fn tasks(&self) -> &[String] {
        &self.tasks
    }

    /// The trainer (its model and optimizer).
    pub fn trainer(&self) -> &SftTrainer {
        &self.trainer
    }

    /// One optimizer step over `micro_batches` (gradient accumulation over one or more), each a list of
    /// conversation records in batch order. Every record is parsed, tokenized and its media decoded before the
    /// first micro-batch runs; a bad one (or, with [`set_tasks`](Self::set_tasks), one of no task the trainer
    /// has) is an error naming it (`micro_batches[i][j]`) and nothing is updated.
    pub fn step(&mut self, micro_batches: &[Vec<&str>]) -> Result<SftStepMetrics> {
        check_steps_left(self.trainer.optimizer().steps_done(), self.total_steps)?;
        let media = self.trainer.model().media_loader();
        let mut batches = Vec::with_capacity(micro_batches.len());
        for (i, records) in micro_batches.iter().enumerate() {
            if records.is_empty() {
                return Err(Error::InvalidArgument(format!("`micro_batches[{i}]` holds no record")));
            }
            let what = format!("micro_batches[{i}]");
            let mut data =
                SftDataset::from_conversation_records(records, &what, NO_TASK, &self.tokenizer, &self.data, media)?;
            let indices = self.task_indices(&data, &what)?;
            for example in &mut data.examples {
                example.task = indices[example.task];
            }
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
        let metrics = self.trainer.step(&batches)?;
        self.last_task_loss = metrics.task_loss.clone();
        Ok(metrics)
    }

    /// The last step's `task_loss` (in the order of [`tasks`](Self::tasks)); empty before the first step.
    pub fn last_task_loss(&self) -> &[Option<f64>] {
        &self.last_task_loss
    }

    /// The trainer's task index of each of `data`'s tasks (a micro-batch's, in the order its records named them),
    /// or an error naming the first record of a task the trainer does not have.
    fn task_indices(&self, data: &SftDataset, what: &str) -> Result<Vec<usize>> {
        if self.tasks.is_empty() {
            return Ok(vec![0; data.tasks.len()]);
        }
        let index = |(k, name): (usize, &String)| {
            self.tasks.iter().position(|t| t == name).ok_or_else(|| {
                let record = data.examples.iter().find(|e| e.task == k).map_or(0, |e| e.line - 1);
                let which = if name == NO_TASK { "has no `task` field".into() } else { format!("is of task {name:?}") };
                Error::InvalidArgument(format!(
                    "`{what}[{record}]` {which}, not one of the trainer's tasks {:?}",
                    self.tasks
                ))
            })
        };
        data.tasks.iter().enumerate().map(index).collect()
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
