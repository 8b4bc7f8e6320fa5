//! The SFT training loop over a conversation file, with checkpoints that resume bitwise: every `save_every` steps,
//! at the end, and when asked to stop, `out/checkpoint-<step>/` holds the weights in the source's layout and
//! `trainer_state/` (the optimizer's moments and masters, its step count — which is the schedule's position — and
//! the loader's [`LoaderState`]), written atomically in one rename. The loop has no other random state.
//!
//! The checkpoint may be a Qwen2 or a LLaVA-OneVision one ([`TrainModel`]); for the latter every record's images
//! and videos are decoded when the data is loaded (to expand its placeholders and to find unreadable files) and
//! again for each batch ([`MediaLoader`]). A held-out file, when given, is evaluated every `eval_every` steps and
//! at the end ([`SftTrainer::evaluate`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use super::{EvalMetrics, SftConfig, SftStepMetrics, SftTrainer};
use crate::model::files::{read_text, MAX_JSON_BYTES};
use crate::model::{save_safetensors, WeightStore};
use crate::runtime::{DType, Device, Tensor};
use crate::train::checkpoint::{is_checkpoint, SaveOptions, TRAINER_STATE_DIR};
use crate::train::data::{
    collate_conversations, BatchSampler, ConversationTokenizer, DataOptions, DataReport, DataSource, LoaderState,
    MediaLoader, SamplerConfig, SequenceBatch, SftDataset, DEFAULT_VIDEO_FRAMES,
};
use crate::train::model::TrainModel;
use crate::train::optim::{AdamWConfig, ParamGroup, Schedule, ScheduleKind};
use crate::{Error, Result};

const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const STATE_FILE: &str = "state.json";
const CHECKPOINT_PREFIX: &str = "checkpoint-";

/// A whole SFT run.
#[derive(Clone, Debug)]
pub struct SftRun {
    /// The checkpoint trained from (config, weights, tokenizer files, chat template).
    pub model: PathBuf,
    pub data: PathBuf,
    /// Checkpoints go to `out/checkpoint-<step>/`.
    pub out: PathBuf,
    pub epochs: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub max_grad_norm: Option<f64>,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    pub max_len: usize,
    pub warmup_ratio: f64,
    pub seed: u64,
    /// Save every this many steps (0: only at the end).
    pub save_every: usize,
    /// Continue from the latest checkpoint in `out` (from the start when there is none).
    pub resume: bool,
    /// Parameters left untrained, by name fragment.
    pub frozen: Vec<String>,
    pub device: Device,
    /// The folder the records' media paths are relative to; `None`: the data file's folder.
    pub media_folder: Option<PathBuf>,
    /// Frames sampled from each video (a LLaVA-OneVision checkpoint).
    pub video_frames: usize,
    /// A held-out conversation file, evaluated every `eval_every` steps (0: only at the end) and at the end.
    pub eval: Option<PathBuf>,
    pub eval_every: usize,
}

impl Default for SftRun {
    fn default() -> Self {
        SftRun {
            model: PathBuf::new(),
            data: PathBuf::new(),
            out: PathBuf::new(),
            epochs: 1,
            lr: 1e-5,
            weight_decay: 0.0,
            max_grad_norm: Some(1.0),
            batch_size: 1,
            grad_accum: 1,
            max_len: 2048,
            warmup_ratio: 0.03,
            seed: 0,
            save_every: 0,
            resume: false,
            frozen: Vec::new(),
            device: Device::Cpu,
            media_folder: None,
            video_frames: DEFAULT_VIDEO_FRAMES,
            eval: None,
            eval_every: 0,
        }
    }
}

/// What the state file of a checkpoint holds beside the optimizer's buffers.
#[derive(Serialize, Deserialize)]
struct TrainerState {
    step: u64,
    total_steps: usize,
    loader: LoaderState,
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

/// The newest complete `checkpoint-<step>` in `out`, if any.
pub fn latest_checkpoint(out: &Path) -> Option<(u64, PathBuf)> {
    let entries = std::fs::read_dir(out).ok()?;
    entries
        .filter_map(|e| {
            let path = e.ok()?.path();
            let step = path.file_name()?.to_str()?.strip_prefix(CHECKPOINT_PREFIX)?.parse().ok()?;
            (is_checkpoint(&path) && path.join(TRAINER_STATE_DIR).join(STATE_FILE).is_file()).then_some((step, path))
        })
        .max_by_key(|(step, _)| *step)
}

impl SftRun {
    fn check(&self) -> Result<()> {
        for (name, value) in
            [("--epochs", self.epochs), ("--batch-size", self.batch_size), ("--grad-accum", self.grad_accum)]
        {
            if value == 0 {
                return Err(Error::InvalidArgument(format!("`{name}` must be at least 1")));
            }
        }
        if self.eval_every > 0 && self.eval.is_none() {
            return Err(Error::InvalidArgument("`--eval-every` needs a held-out file (`--eval`)".into()));
        }
        Ok(())
    }

    /// Trains, calling `on_step` after every step, until the end or until `stop` is set (then saves and returns).
    pub fn run(&self, stop: &AtomicBool, on_step: impl FnMut(&SftStepMetrics, usize)) -> Result<SftOutcome> {
        self.run_with_eval(stop, on_step, |_, _| {})
    }

    /// [`SftRun::run`], calling `on_eval` with the step and the held-out metrics after each evaluation.
    pub fn run_with_eval(
        &self,
        stop: &AtomicBool,
        mut on_step: impl FnMut(&SftStepMetrics, usize),
        mut on_eval: impl FnMut(u64, &EvalMetrics),
    ) -> Result<SftOutcome> {
        self.check()?;
        let tokenizer = ConversationTokenizer::from_checkpoint_dir(&self.model)?;
        let resumed = if self.resume { latest_checkpoint(&self.out) } else { None };
        let weights_dir = resumed.as_ref().map_or(self.model.as_path(), |(_, dir)| dir.as_path());
        let model = TrainModel::load(weights_dir, DType::F32, self.device, self.video_frames)?;
        let (data, report) = self.load_data(&self.data, &tokenizer, model.media_loader())?;
        let eval = match &self.eval {
            Some(path) => {
                let (eval, report) = self.load_data(path, &tokenizer, model.media_loader())?;
                Some((self.eval_batches(&eval, &data.tasks, &tokenizer, path)?, report))
            }
            None => None,
        };
        let sampler_config = SamplerConfig { batch_size: self.batch_size, seed: self.seed, ..SamplerConfig::default() };
        let mut sampler = BatchSampler::for_conversations(&data, sampler_config)?;
        let total_steps = self.epochs * sampler.batches_per_epoch() / self.grad_accum;
        if total_steps == 0 {
            return Err(Error::InvalidArgument("the data holds fewer micro-batches than `--grad-accum`".into()));
        }
        let optimizer = AdamWConfig {
            lr: self.lr,
            weight_decay: self.weight_decay,
            max_grad_norm: self.max_grad_norm,
            schedule: Schedule::with_warmup_ratio(ScheduleKind::Cosine, total_steps, self.warmup_ratio)?,
            ..AdamWConfig::default()
        };
        let frozen: Vec<&str> = self.frozen.iter().map(String::as_str).collect();
        let groups = if frozen.is_empty() { Vec::new() } else { vec![ParamGroup::new("frozen", &frozen).frozen()] };
        let config = SftConfig { optimizer, groups, tasks: data.tasks.len(), ..SftConfig::default() };
        let mut trainer = SftTrainer::new(model, config)?;
        if let Some((_, dir)) = &resumed {
            let state = load_trainer_state(dir, &mut trainer, total_steps)?;
            sampler.restore(&state.loader)?;
        }
        let pad = tokenizer.pad_id();
        let mut checkpoint = resumed.map(|(_, dir)| dir).unwrap_or_default();
        let mut interrupted = false;
        while (trainer.optimizer().steps_done() as usize) < total_steps {
            if stop.load(Ordering::SeqCst) {
                interrupted = true;
                break;
            }
            let micro: Vec<_> = (0..self.grad_accum)
                .map(|_| {
                    let indices = sampler.next_batch();
                    let examples: Vec<_> = indices.examples.iter().map(|&i| &data.examples[i]).collect();
                    collate_conversations(&examples, pad)
                })
                .collect();
            let metrics = trainer.step(&micro)?;
            on_step(&metrics, total_steps);
            let step = metrics.step as usize;
            if let Some((batches, _)) = &eval {
                if (self.eval_every > 0 && step.is_multiple_of(self.eval_every)) || step == total_steps {
                    on_eval(metrics.step, &trainer.evaluate(batches)?);
                }
            }
            if (self.save_every > 0 && step.is_multiple_of(self.save_every)) || step == total_steps {
                checkpoint = self.save(&trainer, &sampler.state(), total_steps)?;
            }
        }
        let steps_done = trainer.optimizer().steps_done();
        if interrupted && !checkpoint.ends_with(format!("{CHECKPOINT_PREFIX}{steps_done}")) {
            checkpoint = self.save(&trainer, &sampler.state(), total_steps)?;
        }
        let eval_data = eval.map(|(_, report)| report);
        Ok(SftOutcome { steps_done, total_steps, checkpoint, interrupted, data: report, eval_data })
    }

    /// A conversation file, its media expanded when the model has a media loader.
    fn load_data(
        &self,
        path: &Path,
        tokenizer: &ConversationTokenizer,
        media: Option<&MediaLoader>,
    ) -> Result<(SftDataset, DataReport)> {
        let media_folder = match &self.media_folder {
            Some(folder) => folder.clone(),
            None => path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf),
        };
        let options = DataOptions { max_len: self.max_len, media_folder, ..DataOptions::default() };
        let (data, report) =
            SftDataset::load_conversations_with_media(&[DataSource::new(path)], tokenizer, &options, media)?;
        if media.is_none() {
            if let Some(example) = data.examples.iter().find(|e| !e.media.is_empty()) {
                return Err(Error::InvalidArgument(format!(
                    "line {} of {} has images or videos but the model is a text-only Qwen2",
                    example.line,
                    path.display()
                )));
            }
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
        Ok(refs.chunks(self.batch_size).map(|chunk| collate_conversations(chunk, tokenizer.pad_id())).collect())
    }

    fn save(&self, trainer: &SftTrainer, loader: &LoaderState, total_steps: usize) -> Result<PathBuf> {
        let optimizer = trainer.optimizer();
        let step = optimizer.steps_done();
        let dir = self.out.join(format!("{CHECKPOINT_PREFIX}{step}"));
        let options = SaveOptions { overwrite: true, ..SaveOptions::default() };
        trainer.model().save(&self.model, &dir, &options, |tmp| {
            let state_dir = tmp.join(TRAINER_STATE_DIR);
            std::fs::create_dir_all(&state_dir)
                .map_err(|e| Error::Checkpoint(format!("cannot create {}: {e}", state_dir.display())))?;
            let s = optimizer.state();
            let buffers = [("exp_avg", s.exp_avg), ("exp_avg_sq", s.exp_avg_sq), ("master", s.master)];
            save_safetensors(&state_dir.join(OPTIMIZER_FILE), &buffers)?;
            let state = TrainerState { step, total_steps, loader: loader.clone() };
            let json = serde_json::to_string_pretty(&state).map_err(|e| Error::Checkpoint(e.to_string()))?;
            std::fs::write(state_dir.join(STATE_FILE), json)
                .map_err(|e| Error::Checkpoint(format!("cannot write the trainer state: {e}")))
        })?;
        Ok(dir)
    }
}

/// Restores the optimizer from a checkpoint's `trainer_state/` and returns the rest of that state.
fn load_trainer_state(dir: &Path, trainer: &mut SftTrainer, total_steps: usize) -> Result<TrainerState> {
    let state_dir = dir.join(TRAINER_STATE_DIR);
    let path = state_dir.join(STATE_FILE);
    let state: TrainerState = serde_json::from_str(&read_text(&path, MAX_JSON_BYTES)?)
        .map_err(|e| Error::Checkpoint(format!("{}: {e}", path.display())))?;
    if state.total_steps != total_steps {
        return Err(Error::Checkpoint(format!(
            "{} was written by a run of {} steps, this one has {total_steps}: resume with the same data and options",
            dir.display(),
            state.total_steps
        )));
    }
    let store = WeightStore::open(&state_dir.join(OPTIMIZER_FILE))?;
    let device = trainer.model().device();
    let current = trainer.optimizer().state();
    let buffer = |name: &str, like: &Tensor| store.get_as(name, like.shape(), DType::F32, device);
    let (m, v, master) = (
        buffer("exp_avg", current.exp_avg)?,
        buffer("exp_avg_sq", current.exp_avg_sq)?,
        buffer("master", current.master)?,
    );
    trainer.optimizer_mut().load_state(state.step, &m, &v, &master)?;
    Ok(state)
}
