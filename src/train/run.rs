//! What the trainers' runs share: the options every run takes, checkpoints that resume bitwise, and the loop that
//! stops on a flag. Every `save_every` steps, at the end, and when asked to stop, `out/checkpoint-<step>/` holds the
//! weights in the source's layout and `trainer_state/` (the optimizer's moments and masters, its step count —
//! which is the schedule's position — the loader's [`LoaderState`] and the trainer's own state), written
//! atomically in one rename. A run has no other random state.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use crate::model::files::{read_text, MAX_JSON_BYTES};
use crate::model::{save_safetensors, WeightStore};
use crate::runtime::{DType, Device, Tensor};
use crate::train::checkpoint::{is_checkpoint, SaveOptions, TRAINER_STATE_DIR};
use crate::train::data::{BadRecordPolicy, DataOptions, LoaderState, SamplerConfig, DEFAULT_VIDEO_FRAMES};
use crate::train::optim::{AdamW, AdamWConfig, ParamGroup, Schedule, ScheduleKind};
use crate::{Error, Result};

const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const STATE_FILE: &str = "state.json";
const CHECKPOINT_PREFIX: &str = "checkpoint-";

/// The options of a training run that every trainer takes (the command line's shared flags).
#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub epochs: usize,
    /// Optimizer steps of the run in place of `epochs` (transformers' `max_steps`): the sampler goes on into the
    /// next epochs as far as needed, and the schedule spans these steps.
    pub max_steps: Option<usize>,
    pub lr: f64,
    pub weight_decay: f64,
    pub max_grad_norm: Option<f64>,
    /// Examples (conversations, or pairs) per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Records longer than this many tokens are left out (and reported).
    pub max_len: usize,
    pub warmup_ratio: f64,
    pub schedule: ScheduleKind,
    pub seed: u64,
    /// Save every this many steps (0: only at the end).
    pub save_every: usize,
    /// Continue from the latest checkpoint in `out` (from the start when there is none).
    pub resume: bool,
    /// Parameters left untrained, by name fragment.
    pub frozen: Vec<String>,
    /// Bad records: left out and reported, or the run refused.
    pub bad_records: BadRecordPolicy,
    /// Batch examples of similar lengths together (less padding; in a multi-task file, batches then mostly hold one
    /// task) or draw every batch from the whole shuffled epoch (each batch a mix of the tasks).
    pub group_by_length: bool,
    /// `(task, weight)`: how many times a task's examples are seen per epoch (tasks not named: 1).
    pub task_weights: Vec<(String, f64)>,
    pub device: Device,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            epochs: 1,
            max_steps: None,
            lr: 1e-5,
            weight_decay: 0.0,
            max_grad_norm: Some(1.0),
            batch_size: 1,
            grad_accum: 1,
            max_len: 2048,
            warmup_ratio: 0.03,
            schedule: ScheduleKind::Cosine,
            seed: 0,
            save_every: 0,
            resume: false,
            frozen: Vec::new(),
            bad_records: BadRecordPolicy::Skip,
            group_by_length: true,
            task_weights: Vec::new(),
            device: Device::Cpu,
        }
    }
}

impl TrainOptions {
    /// Refuses counts of 0 and learning-rate settings the optimizer would refuse, naming the command-line flag.
    pub fn check(&self) -> Result<()> {
        for (name, value) in
            [("--epochs", self.epochs), ("--batch-size", self.batch_size), ("--grad-accum", self.grad_accum)]
        {
            if value == 0 {
                return Err(Error::InvalidArgument(format!("`{name}` must be at least 1")));
            }
        }
        if self.max_len == 0 {
            return Err(Error::InvalidArgument("`--max-len` must be at least 1".into()));
        }
        if self.max_steps == Some(0) {
            return Err(Error::InvalidArgument("`--max-steps` must be at least 1".into()));
        }
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            return Err(Error::InvalidArgument(format!(
                "`--warmup-ratio` must be in [0, 1], got {}",
                self.warmup_ratio
            )));
        }
        for (name, value) in [("--lr", self.lr), ("--weight-decay", self.weight_decay)] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(Error::InvalidArgument(format!("`{name}` must be finite and >= 0, got {value}")));
            }
        }
        Ok(())
    }

    /// Optimizer steps of the run over `batches_per_epoch` micro-batches an epoch: `max_steps` when set.
    pub(crate) fn total_steps(&self, batches_per_epoch: usize) -> Result<usize> {
        if let Some(steps) = self.max_steps {
            return Ok(steps);
        }
        match self.epochs * batches_per_epoch / self.grad_accum {
            0 => Err(Error::InvalidArgument("the data holds fewer micro-batches than `--grad-accum`".into())),
            steps => Ok(steps),
        }
    }

    pub(crate) fn optimizer(&self, total_steps: usize) -> Result<AdamWConfig> {
        Ok(AdamWConfig {
            lr: self.lr,
            weight_decay: self.weight_decay,
            max_grad_norm: self.max_grad_norm,
            schedule: Schedule::with_warmup_ratio(self.schedule, total_steps, self.warmup_ratio)?,
            ..AdamWConfig::default()
        })
    }

    /// One frozen group of the `frozen` fragments, if any.
    pub(crate) fn groups(&self) -> Vec<ParamGroup> {
        let frozen: Vec<&str> = self.frozen.iter().map(String::as_str).collect();
        if frozen.is_empty() {
            Vec::new()
        } else {
            vec![ParamGroup::new("frozen", &frozen).frozen()]
        }
    }

    pub(crate) fn sampler(&self) -> SamplerConfig {
        SamplerConfig {
            batch_size: self.batch_size,
            seed: self.seed,
            group_by_length: self.group_by_length,
            task_weights: self.task_weights.clone(),
            ..SamplerConfig::default()
        }
    }

    pub(crate) fn data(&self) -> DataOptions {
        DataOptions { max_len: self.max_len, bad_records: self.bad_records, ..DataOptions::default() }
    }
}

/// What a trainer stepped on its caller's records ([`SftRecordTrainer`](crate::train::sft::SftRecordTrainer),
/// [`DpoRecordTrainer`](crate::train::dpo::DpoRecordTrainer)) is built with: a run's optimizer and data settings, with
/// the run's length (`total_steps`, which places the schedule) given instead of derived from a data file.
#[derive(Clone, Debug)]
pub struct StepOptions {
    pub lr: f64,
    pub weight_decay: f64,
    pub max_grad_norm: Option<f64>,
    pub schedule: ScheduleKind,
    /// `ceil(total_steps · warmup_ratio)` warm-up steps.
    pub warmup_ratio: f64,
    /// Optimizer steps the schedule spans (at least 1).
    pub total_steps: usize,
    /// A record longer than this many tokens is refused.
    pub max_len: usize,
    /// Parameters left untrained, as `--freeze` names them (`vision`, `projector`, or a name fragment).
    pub freeze: Vec<String>,
    /// The folder the records' media paths are relative to.
    pub media_folder: PathBuf,
    /// Frames sampled from each video (a LLaVA-OneVision checkpoint).
    pub video_frames: usize,
    pub device: Device,
    /// A checkpoint the trainer's `save` wrote, to continue from: its weights, the optimizer's moments and
    /// masters, the step (the schedule's position) and the trainer's own state. The trainer must be built with the
    /// same options (`total_steps` is checked); its model folder still gives the tokenizer and, for DPO, the
    /// reference (the policy as the run started). Fed the same batches after, it continues bitwise.
    pub resume_from: Option<PathBuf>,
}

impl Default for StepOptions {
    /// `unireward train-judge`'s defaults.
    fn default() -> Self {
        let t = TrainOptions::default();
        StepOptions {
            lr: t.lr,
            weight_decay: t.weight_decay,
            max_grad_norm: t.max_grad_norm,
            schedule: t.schedule,
            warmup_ratio: t.warmup_ratio,
            total_steps: 0,
            max_len: t.max_len,
            freeze: Vec::new(),
            media_folder: PathBuf::from("."),
            video_frames: DEFAULT_VIDEO_FRAMES,
            device: t.device,
            resume_from: None,
        }
    }
}

/// Refuses a step of a step-driven trainer past its schedule's `total_steps`, before any of the step's work.
pub(crate) fn check_steps_left(steps_done: u64, total_steps: usize) -> Result<()> {
    if steps_done as usize >= total_steps {
        return Err(Error::InvalidArgument(format!("the schedule's {total_steps} steps are done (`total_steps`)")));
    }
    Ok(())
}

impl StepOptions {
    /// These options checked for a trainer over the checkpoint folders `models` (each must exist), as the run
    /// options they stand for.
    pub(crate) fn checked(&self, models: &[&Path]) -> Result<TrainOptions> {
        let train = self.train_options();
        train.check()?;
        if self.total_steps == 0 {
            return Err(Error::InvalidArgument("`total_steps` must be at least 1".into()));
        }
        if self.video_frames == 0 {
            return Err(Error::InvalidArgument("`video_frames` must be at least 1".into()));
        }
        if let Some(dir) = models.iter().find(|dir| !dir.is_dir()) {
            return Err(Error::InvalidArgument(format!("the model folder {} does not exist", dir.display())));
        }
        Ok(train)
    }

    /// The folder the trainer loads its weights from: the checkpoint it resumes, else `model`. Either must exist.
    pub(crate) fn weights_dir<'a>(&'a self, model: &'a Path) -> Result<&'a Path> {
        let dir = self.resume_from.as_deref().unwrap_or(model);
        if !dir.is_dir() {
            let what = if self.resume_from.is_some() { "checkpoint to resume (`resume_from`)" } else { "model folder" };
            return Err(Error::InvalidArgument(format!("the {what} {} does not exist", dir.display())));
        }
        Ok(dir)
    }

    /// Restores `optimizer` from the checkpoint resumed, if any, and returns the rest of its state.
    pub(crate) fn restore(&self, optimizer: &mut AdamW) -> Result<Option<TrainerState>> {
        self.resume_from.as_deref().map(|dir| load_run_state(dir, optimizer, self.total_steps)).transpose()
    }

    /// The run options these stand for (the loop's own fields — epochs, batch size, seed — are the caller's).
    pub(crate) fn train_options(&self) -> TrainOptions {
        TrainOptions {
            lr: self.lr,
            weight_decay: self.weight_decay,
            max_grad_norm: self.max_grad_norm,
            schedule: self.schedule,
            warmup_ratio: self.warmup_ratio,
            max_len: self.max_len,
            frozen: frozen_fragments(&self.freeze),
            bad_records: BadRecordPolicy::Refuse,
            device: self.device,
            ..TrainOptions::default()
        }
    }
}

/// The parameter-name fragments that `--freeze` names stand for: `vision` is the LLaVA vision tower, `projector` its
/// projector in either layout, anything else a fragment as given.
pub fn frozen_fragments(names: &[String]) -> Vec<String> {
    names
        .iter()
        .flat_map(|f| match f.as_str() {
            "vision" => vec!["vision_tower.".to_string()],
            "projector" => vec!["multi_modal_projector.".to_string(), "mm_projector.".to_string()],
            _ => vec![f.clone()],
        })
        .collect()
}

/// What the state file of a checkpoint holds beside the optimizer's buffers.
#[derive(Serialize, Deserialize)]
pub(crate) struct TrainerState {
    pub step: u64,
    pub total_steps: usize,
    /// The loader's position; `None` in a checkpoint of a trainer its caller feeds (`SftRecordTrainer`: the C ABI
    /// and Python), which has no loader to resume.
    #[serde(default)]
    pub loader: Option<LoaderState>,
    /// The trainer's own state (DPO: BCO's running mean); `null` when it has none.
    #[serde(default)]
    pub extra: serde_json::Value,
}

impl TrainerState {
    /// The loader's position a run resumes from.
    pub(crate) fn loader(&self) -> Result<&LoaderState> {
        self.loader.as_ref().ok_or_else(|| {
            Error::Checkpoint(
                "the checkpoint was written by a trainer stepped on its caller's batches (C or Python): it has no \
                 data-loader position to resume a run from"
                    .into(),
            )
        })
    }
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

/// Writes `out/checkpoint-<step>/` — the weights by `save` (a model's own saver, as
/// [`crate::train::model::TrainModel::save`]), which gets the checkpoint's directory, the options and the writer of
/// the trainer's state (the optimizer and `state`) to call on its temporary directory — and returns it.
pub(crate) fn save_run_checkpoint_with(
    out: &Path,
    optimizer: &AdamW,
    state: &TrainerState,
    save: impl FnOnce(&Path, &SaveOptions, &mut dyn FnMut(&Path) -> Result<()>) -> Result<()>,
) -> Result<PathBuf> {
    let dir = out.join(format!("{CHECKPOINT_PREFIX}{}", state.step));
    let options = SaveOptions { overwrite: true, ..SaveOptions::default() };
    save(&dir, &options, &mut |tmp| {
        let state_dir = tmp.join(TRAINER_STATE_DIR);
        std::fs::create_dir_all(&state_dir)
            .map_err(|e| Error::Checkpoint(format!("cannot create {}: {e}", state_dir.display())))?;
        let s = optimizer.state();
        let buffers = [("exp_avg", s.exp_avg), ("exp_avg_sq", s.exp_avg_sq), ("master", s.master)];
        save_safetensors(&state_dir.join(OPTIMIZER_FILE), &buffers)?;
        let json = serde_json::to_string_pretty(state).map_err(|e| Error::Checkpoint(e.to_string()))?;
        std::fs::write(state_dir.join(STATE_FILE), json)
            .map_err(|e| Error::Checkpoint(format!("cannot write the trainer state: {e}")))
    })?;
    Ok(dir)
}

/// The data options of the file at `path`: `train`'s, with media paths relative to `media_folder`, else to the
/// file's own folder.
pub(crate) fn data_options_for(train: &TrainOptions, path: &Path, media_folder: Option<&Path>) -> DataOptions {
    let mut options = train.data();
    options.media_folder = match media_folder {
        Some(folder) => folder.to_path_buf(),
        None => path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf),
    };
    options
}

/// A model without a media loader (a text-only Qwen2) refuses the file at `path` when a record has images or
/// videos: `first_with_media` is the line of the first such record.
pub(crate) fn refuse_media_without_loader(first_with_media: Option<usize>, path: &Path) -> Result<()> {
    match first_with_media {
        Some(line) => Err(Error::InvalidArgument(format!(
            "line {line} of {} has images or videos but the model is a text-only Qwen2",
            path.display()
        ))),
        None => Ok(()),
    }
}

/// Restores `optimizer` from a checkpoint's `trainer_state/` and returns the rest of that state.
pub(crate) fn load_run_state(dir: &Path, optimizer: &mut AdamW, total_steps: usize) -> Result<TrainerState> {
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
    let current = optimizer.state();
    let device = current.exp_avg.device();
    let buffer = |name: &str, like: &Tensor| store.get_as(name, like.shape(), DType::F32, device);
    let (m, v, master) = (
        buffer("exp_avg", current.exp_avg)?,
        buffer("exp_avg_sq", current.exp_avg_sq)?,
        buffer("master", current.master)?,
    );
    optimizer.load_state(state.step, &m, &v, &master)?;
    Ok(state)
}

/// A run in progress, as [`drive`] steps and saves it.
pub(crate) trait Steps {
    type Metrics;
    fn steps_done(&self) -> u64;
    /// Draws the next micro-batches and takes one optimizer step.
    fn step(&mut self) -> Result<Self::Metrics>;
    /// Writes a checkpoint of the current state and returns its directory.
    fn save(&self) -> Result<PathBuf>;
}

/// How [`drive`] ended.
pub(crate) struct Driven {
    /// The last checkpoint written (the resumed one when none was).
    pub checkpoint: PathBuf,
    pub interrupted: bool,
}

/// Steps `run` to `total_steps`, calling `on_step` after every step and saving every `save_every` steps and at the
/// end; when `stop` is set, saves (unless the last step was just saved) and returns.
pub(crate) fn drive<S: Steps>(
    run: &mut S,
    total_steps: usize,
    save_every: usize,
    stop: &AtomicBool,
    resumed: Option<PathBuf>,
    mut on_step: impl FnMut(&S::Metrics, usize),
) -> Result<Driven> {
    let mut checkpoint = resumed.unwrap_or_default();
    let mut interrupted = false;
    while (run.steps_done() as usize) < total_steps {
        if stop.load(Ordering::SeqCst) {
            interrupted = true;
            break;
        }
        let metrics = run.step()?;
        on_step(&metrics, total_steps);
        let step = run.steps_done() as usize;
        if (save_every > 0 && step.is_multiple_of(save_every)) || step == total_steps {
            checkpoint = run.save()?;
        }
    }
    let steps_done = run.steps_done();
    if interrupted && !checkpoint.ends_with(format!("{CHECKPOINT_PREFIX}{steps_done}")) {
        checkpoint = run.save()?;
    }
    Ok(Driven { checkpoint, interrupted })
}
