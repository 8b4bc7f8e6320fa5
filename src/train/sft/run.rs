//! The SFT training loop over a conversation file, with checkpoints that resume bitwise (see [`crate::train::run`]).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use super::{SftConfig, SftStepMetrics, SftTrainer};
use crate::model::Qwen2Model;
use crate::runtime::DType;
use crate::train::data::{
    collate_conversations, BatchSampler, ConversationTokenizer, DataReport, DataSource, SftDataset,
};
use crate::train::run::{
    drive, latest_checkpoint, load_run_state, save_run_checkpoint, Parameters, Steps, TrainOptions, TrainerState,
};
use crate::{Error, Result};

/// A whole SFT run.
#[derive(Clone, Debug, Default)]
pub struct SftRun {
    /// The checkpoint trained from (config, weights, tokenizer files, chat template).
    pub model: PathBuf,
    pub data: PathBuf,
    /// Checkpoints go to `out/checkpoint-<step>/`.
    pub out: PathBuf,
    pub train: TrainOptions,
}

/// How a run ended.
#[derive(Debug)]
pub struct SftOutcome {
    pub steps_done: u64,
    pub total_steps: usize,
    /// The last checkpoint written.
    pub checkpoint: PathBuf,
    /// Stopped by the caller's flag before the end.
    pub interrupted: bool,
    pub data: DataReport,
}

/// A run's trainer, data and loader position, as [`drive`] steps them.
struct Progress<'a> {
    run: &'a SftRun,
    trainer: SftTrainer,
    data: SftDataset,
    sampler: BatchSampler,
    pad: u32,
    total_steps: usize,
}

impl Steps for Progress<'_> {
    type Metrics = SftStepMetrics;

    fn steps_done(&self) -> u64 {
        self.trainer.optimizer().steps_done()
    }

    fn step(&mut self) -> Result<SftStepMetrics> {
        let micro: Vec<_> = (0..self.run.train.grad_accum)
            .map(|_| {
                let indices = self.sampler.next_batch();
                let examples: Vec<_> = indices.examples.iter().map(|&i| &self.data.examples[i]).collect();
                collate_conversations(&examples, self.pad)
            })
            .collect();
        self.trainer.step(&micro)
    }

    fn save(&self) -> Result<PathBuf> {
        let model = self.trainer.model();
        let head = model.weights.names().lm_head.clone();
        let left_out = if model.config.tie_word_embeddings { vec![head] } else { vec![] };
        let params = Parameters { named: model.weights.named(), left_out };
        let optimizer = self.trainer.optimizer();
        let state = TrainerState {
            step: optimizer.steps_done(),
            total_steps: self.total_steps,
            loader: self.sampler.state(),
            extra: serde_json::Value::Null,
        };
        save_run_checkpoint(&self.run.out, &self.run.model, &params, optimizer, &state)
    }
}

impl SftRun {
    /// Trains, calling `on_step` after every step, until the end or until `stop` is set (then saves and returns).
    pub fn run(&self, stop: &AtomicBool, on_step: impl FnMut(&SftStepMetrics, usize)) -> Result<SftOutcome> {
        let train = &self.train;
        train.check()?;
        let tokenizer = ConversationTokenizer::from_checkpoint_dir(&self.model)?;
        let (data, report) = SftDataset::load_conversations(&[DataSource::new(&self.data)], &tokenizer, &train.data())?;
        if let Some(example) = data.examples.iter().find(|e| !e.media.is_empty()) {
            return Err(Error::InvalidArgument(format!(
                "line {} of {} has images or videos: the SFT trainer is text-only (Qwen2) for now",
                example.line,
                self.data.display()
            )));
        }
        let mut sampler = BatchSampler::for_conversations(&data, train.sampler())?;
        let total_steps = train.total_steps(sampler.batches_per_epoch())?;
        let resumed = if train.resume { latest_checkpoint(&self.out) } else { None };
        let weights_dir = resumed.as_ref().map_or(self.model.as_path(), |(_, dir)| dir.as_path());
        let model = Qwen2Model::load(weights_dir, DType::F32, train.device)?;
        let config = SftConfig {
            optimizer: train.optimizer(total_steps)?,
            groups: train.groups(),
            tasks: data.tasks.len(),
            ..SftConfig::default()
        };
        let mut trainer = SftTrainer::new(model, config)?;
        if let Some((_, dir)) = &resumed {
            let state = load_run_state(dir, trainer.optimizer_mut(), total_steps)?;
            sampler.restore(&state.loader)?;
        }
        let pad = tokenizer.pad_id();
        let mut progress = Progress { run: self, trainer, data, sampler, pad, total_steps };
        let resumed = resumed.map(|(_, dir)| dir);
        let driven = drive(&mut progress, total_steps, train.save_every, stop, resumed, on_step)?;
        Ok(SftOutcome {
            steps_done: progress.steps_done(),
            total_steps,
            checkpoint: driven.checkpoint,
            interrupted: driven.interrupted,
            data: report,
        })
    }
}
