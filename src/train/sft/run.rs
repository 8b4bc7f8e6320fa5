//! The SFT training loop over a conversation file, with checkpoints that resume bitwise (see [`crate::train::run`]).
//!
//! The checkpoint may be a Qwen2 or a LLaVA-OneVision one ([`TrainModel`]); for the latter every record's images
//! and videos are decoded when the data is loaded (to expand its placeholders and to find unreadable files) and
//! again for each batch ([`MediaLoader`]). A held-out file, when given, is evaluated every `eval_every` steps and
//! at the end ([`SftTrainer::evaluate`]), and so is a pairwise benchmark file, judged by the model being trained
//! ([`super::bench`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use super::bench::TrainingBench;
use super::{SftConfig, SftEvaluation, SftStepMetrics, SftTrainer};
use crate::runtime::DType;
use crate::train::data::{
    collate_conversations, BatchSampler, ConversationTokenizer, DataReport, DataSource, SequenceBatch, SftDataset,
    DEFAULT_VIDEO_FRAMES,
};
use crate::train::model::TrainModel;
use crate::train::run::{
    data_options_for, drive, latest_checkpoint, load_run_state, refuse_media_without_loader, save_run_checkpoint_with,
    Steps, TrainOptions, TrainerState,
};
use crate::{Error, Result};

/// A whole SFT run.
#[derive(Clone, Debug)]
pub struct SftRun {
    /// The checkpoint trained from (config, weights, tokenizer files, chat template; for LLaVA-OneVision its
    /// `preprocessor_config.json`).
    pub model: PathBuf,
    pub data: PathBuf,
    /// Checkpoints go to `out/checkpoint-<step>/`.
    pub out: PathBuf,
    pub train: TrainOptions,
    /// The folder the records' media paths are relative to; `None`: the data file's folder.
    pub media_folder: Option<PathBuf>,
    /// Frames sampled from each video (a LLaVA-OneVision checkpoint).
    pub video_frames: usize,
    /// A held-out conversation file, evaluated every `eval_every` steps (0: only at the end) and at the end.
    pub eval: Option<PathBuf>,
    /// A pairwise benchmark file (`unireward eval`'s format; media paths relative to `media_folder`, else to its
    /// own folder), judged one-pass by the model being trained at the same steps as `eval`.
    pub eval_bench: Option<PathBuf>,
    pub eval_every: usize,
    /// Micro-batches of a step (of `train.grad_accum`) trained at once, each on its own copy of the gradients:
    /// for a model too small to keep the cores busy inside one micro-batch. The same steps to the bit as 1.
    pub data_parallel: usize,
}

impl Default for SftRun {
    fn default() -> Self {
        SftRun {
            model: PathBuf::new(),
            data: PathBuf::new(),
            out: PathBuf::new(),
            train: TrainOptions::default(),
            media_folder: None,
            video_frames: DEFAULT_VIDEO_FRAMES,
            eval: None,
            eval_bench: None,
            eval_every: 0,
            data_parallel: 1,
        }
    }
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
    /// What loading the held-out file read and left out.
    pub eval_data: Option<DataReport>,
}

/// A run's trainer, data and loader position, as [`drive`] steps them.
struct Progress<'a, E> {
    run: &'a SftRun,
    /// `None` only while a benchmark evaluation has the trainer (see [`LENT`]).
    trainer: Option<SftTrainer>,
    data: SftDataset,
    sampler: BatchSampler,
    pad: u32,
    total_steps: usize,
    /// The held-out batches.
    eval: Option<Vec<SequenceBatch>>,
    bench: Option<TrainingBench>,
    /// Called with each evaluation.
    on_eval: E,
    /// The run's stop flag, which also ends a benchmark evaluation early (unreported).
    stop: &'a AtomicBool,
}

impl<E> Progress<'_, E> {
    fn trainer(&self) -> &SftTrainer {
        self.trainer.as_ref().expect(LENT)
    }
}

/// A benchmark evaluation takes the trainer out of its [`Progress`] to lend its model to a judge, and puts it back
/// or ends the run with an error: every other use finds it there.
const LENT: &str = "the trainer is back from the benchmark evaluation";

impl<E: FnMut(&SftEvaluation)> Progress<'_, E> {
    /// Evaluates what the run evaluates on, and reports it (when there is anything to report).
    fn evaluate(&mut self, step: u64) -> Result<()> {
        let held_out = self.eval.as_ref().map(|batches| self.trainer().evaluate(batches)).transpose()?;
        let mut bench = None;
        if let Some(on) = &self.bench {
            let (trainer, summary) = on.evaluate(self.trainer.take().expect(LENT), self.stop)?;
            self.trainer = Some(trainer);
            bench = summary;
        }
        if held_out.is_some() || bench.is_some() {
            (self.on_eval)(&SftEvaluation { step, held_out, bench });
        }
        Ok(())
    }
}

impl<E: FnMut(&SftEvaluation)> Steps for Progress<'_, E> {
    type Metrics = SftStepMetrics;

    fn steps_done(&self) -> u64 {
        self.trainer().optimizer().steps_done()
    }

    fn step(&mut self) -> Result<SftStepMetrics> {
        let micro: Vec<_> = (0..self.run.train.grad_accum)
            .map(|_| {
                let indices = self.sampler.next_batch();
                let examples: Vec<_> = indices.examples.iter().map(|&i| &self.data.examples[i]).collect();
                collate_conversations(&examples, self.pad)
            })
            .collect();
        let metrics = self.trainer.as_mut().expect(LENT).step(&micro)?;
        let (step, every) = (metrics.step as usize, self.run.eval_every);
        if (every > 0 && step.is_multiple_of(every)) || step == self.total_steps {
            self.evaluate(metrics.step)?;
        }
        Ok(metrics)
    }

    fn save(&self) -> Result<PathBuf> {
        let trainer = self.trainer();
        let optimizer = trainer.optimizer();
        let state = TrainerState {
            step: optimizer.steps_done(),
            total_steps: self.total_steps,
            loader: Some(self.sampler.state()),
            extra: serde_json::Value::Null,
        };
        save_run_checkpoint_with(&self.run.out, optimizer, &state, |dir, options, extra| {
            trainer.model().save(&self.run.model, dir, options, extra)
        })
    }
}

impl SftRun {
    /// Trains, calling `on_step` after every step, until the end or until `stop` is set (then saves and returns).
    pub fn run(&self, stop: &AtomicBool, on_step: impl FnMut(&SftStepMetrics, usize)) -> Result<SftOutcome> {
        self.run_with_eval(stop, on_step, |_| {})
    }

    /// [`SftRun::run`], calling `on_eval` after each evaluation (of `eval`, `eval_bench` or both). Everything —
    /// the data, the held-out file, every benchmark pair as the judge would judge it — is checked before the
    /// first step.
    pub fn run_with_eval(
        &self,
        stop: &AtomicBool,
        on_step: impl FnMut(&SftStepMetrics, usize),
        on_eval: impl FnMut(&SftEvaluation),
    ) -> Result<SftOutcome> {
        let train = &self.train;
        train.check()?;
        if !(1..=train.grad_accum).contains(&self.data_parallel) {
            return Err(Error::InvalidArgument(format!(
                "`--data-parallel` must be between 1 and `--grad-accum` ({}), got {}",
                train.grad_accum, self.data_parallel
            )));
        }
        if self.eval_every > 0 && self.eval.is_none() && self.eval_bench.is_none() {
            return Err(Error::InvalidArgument(
                "`--eval-every` needs a held-out file (`--eval`) or a benchmark file (`--eval-bench`)".into(),
            ));
        }
        let bench = self
            .eval_bench
            .as_deref()
            .map(|path| {
                let media_folder = data_options_for(train, path, self.media_folder.as_deref()).media_folder;
                TrainingBench::read(path, &media_folder, &self.model)
            })
            .transpose()?;
        let tokenizer = ConversationTokenizer::from_checkpoint_dir(&self.model)?;
        let resumed = if train.resume { latest_checkpoint(&self.out) } else { None };
        let weights_dir = resumed.as_ref().map_or(self.model.as_path(), |(_, dir)| dir.as_path());
        let mut model = TrainModel::load(weights_dir, DType::F32, train.device, self.video_frames)?;
        let (data, report) = self.load_data(&self.data, &tokenizer, &model)?;
        let (eval, eval_data) = match &self.eval {
            Some(path) => {
                let (eval, report) = self.load_data(path, &tokenizer, &model)?;
                (Some(self.eval_batches(&eval, &data.tasks, &tokenizer, path)?), Some(report))
            }
            None => (None, None),
        };
        if let Some(bench) = &bench {
            model = bench.check(model)?;
        }
        let mut sampler = BatchSampler::for_conversations(&data, train.sampler())?;
        let total_steps = train.total_steps(sampler.batches_per_epoch())?;
        let config = SftConfig {
            optimizer: train.optimizer(total_steps)?,
            groups: train.groups(),
            tasks: data.tasks.len(),
            data_parallel: self.data_parallel,
            ..SftConfig::default()
        };
        let mut trainer = SftTrainer::new(model, config)?;
        if let Some((_, dir)) = &resumed {
            let state = load_run_state(dir, trainer.optimizer_mut(), total_steps)?;
            sampler.restore(state.loader()?)?;
        }
        let pad = tokenizer.pad_id();
        let mut progress =
            Progress { run: self, trainer: Some(trainer), data, sampler, pad, total_steps, eval, bench, on_eval, stop };
        let resumed = resumed.map(|(_, dir)| dir);
        let driven = drive(&mut progress, total_steps, train.save_every, stop, resumed, on_step)?;
        Ok(SftOutcome {
            steps_done: progress.steps_done(),
            total_steps,
            checkpoint: driven.checkpoint,
            interrupted: driven.interrupted,
            data: report,
            eval_data,
        })
    }

    /// A conversation file, its media expanded when the model has a media loader.
    fn load_data(
        &self,
        path: &Path,
        tokenizer: &ConversationTokenizer,
        model: &TrainModel,
    ) -> Result<(SftDataset, DataReport)> {
        let options = data_options_for(&self.train, path, self.media_folder.as_deref()).within(model.max_positions());
        let media = model.media_loader();
        let sources = [DataSource::new(path)];
        let (data, report) = SftDataset::load_conversations_with_media(&sources, tokenizer, &options, media)?;
        if media.is_none() {
            let first = data.examples.iter().find(|e| !e.media.is_empty()).map(|e| e.line);
            refuse_media_without_loader(first, path)?;
        }
        Ok((data, report))
    }

    /// The held-out examples in file order, `batch_size` a batch, their tasks mapped to the training data's
    /// (a task the training data lacks is an error: the trainer reports per training task).
    fn eval_batches(
        &self,
        eval: &SftDataset,
        tasks: &[String],
        tokenizer: &ConversationTokenizer,
        path: &Path,
    ) -> Result<Vec<SequenceBatch>> {
        let mut examples = eval.examples.clone();
        for example in &mut examples {
            let name = &eval.tasks[example.task];
            example.task = tasks.iter().position(|t| t == name).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "line {} of {} has task `{name}`, which the training data does not have",
                    example.line,
                    path.display()
                ))
            })?;
        }
        if examples.is_empty() {
            return Err(Error::InvalidArgument(format!("{} holds no usable record to evaluate on", path.display())));
        }
        let refs: Vec<_> = examples.iter().collect();
        Ok(refs.chunks(self.train.batch_size).map(|chunk| collate_conversations(chunk, tokenizer.pad_id())).collect())
    }
}
