//! The reward-model training loop over a pair file (Bradley–Terry) or a ranked-list file (K-wise), with an optional
//! held-out file evaluated every `eval_every` steps and at the end, and checkpoints that resume bitwise (see
//! [`crate::train::run`]).
//!
//! The checkpoint trained may be a Qwen2 or a LLaVA-OneVision one ([`TrainModel`], by `config.json`'s
//! `model_type`). For the latter each record's images and videos (on the prompt side: every response of a record
//! shares its prompt's media) are decoded when the data is loaded, to expand the prompt's placeholders and to find
//! unreadable files, and again for each batch. A checkpoint holds `score.weight` `[1, H]` beside the model's
//! weights, under that name whatever the layout:
//!
//! - Qwen2: `config.json` becomes `Qwen2ForSequenceClassification` with one label, so transformers loads the
//!   checkpoint as that class, the head as its `score`.
//! - LLaVA-OneVision: transformers has no sequence-classification class for it, so `config.json` is the source's
//!   (`LlavaOnevisionForConditionalGeneration` or `llava_qwen`); transformers' loader reports `score.weight` as an
//!   unexpected key and loads the rest, and the reward is `score.weight · h`, h the language model's last hidden
//!   state (after its final norm) at each sequence's last real token. This trainer (and [`load_score`]) loads it
//!   back with the model, as it does a Qwen2 reward checkpoint.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use super::head::{init_score, load_score, reward_config, SCORE_WEIGHT};
use super::{RewardBatch, RewardLoss, RewardStepMetrics, RewardTrainer, RewardTrainerConfig};
use crate::model::LoadOptions;
use crate::runtime::{DType, Tensor};
use crate::train::data::{
    collate_rankings, BatchSampler, ConversationTokenizer, DataOptions, DataReport, DataSource, MediaLoader,
    PairDataset, RankingDataset, RankingExample, DEFAULT_VIDEO_FRAMES,
};
use crate::train::model::TrainModel;
use crate::train::run::{
    data_options_for, drive, latest_checkpoint, load_run_state, refuse_media_without_loader, save_run_checkpoint_with,
    Steps, TrainOptions, TrainerState,
};
use crate::{Device, Error, Result};

/// The standard deviation of a fresh head (transformers' default `initializer_range`).
const INITIAL_SCORE_STD: f64 = 0.02;

/// A training (or held-out) file and its format. Records may carry the prompt's `image` / `video` (a LLaVA-OneVision
/// model; a text-only one refuses them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RewardData {
    /// `prompt`, `chosen`, `rejected` (optional `margin`): [`PairDataset::load_pairs`]'s format.
    Pairs(PathBuf),
    /// `prompt`, `responses` best first: [`RankingDataset::load_rankings`]'s format; every record of a file holds
    /// the same number of responses.
    Rankings(PathBuf),
}

impl Default for RewardData {
    fn default() -> Self {
        RewardData::Pairs(PathBuf::new())
    }
}

impl RewardData {
    pub fn path(&self) -> &Path {
        match self {
            RewardData::Pairs(p) | RewardData::Rankings(p) => p,
        }
    }

    /// The file as ranked lists (pairs: chosen then rejected), each pair's margin (0 where a record has none;
    /// `None` when no record has one) and the load's report. With `media` (a LLaVA model's loader) the prompts'
    /// media are decoded and their placeholders expanded; without, a record with media is refused. A file with no
    /// usable record, or with rankings of different lengths, is refused.
    fn load(
        &self,
        tokenizer: &ConversationTokenizer,
        options: &DataOptions,
        media: Option<&MediaLoader>,
    ) -> Result<(RankingDataset, Option<Vec<f32>>, DataReport)> {
        let sources = [DataSource::new(self.path())];
        let (data, margins, report) = match self {
            RewardData::Pairs(_) => {
                let (pairs, report) = PairDataset::load_pairs_with_media(&sources, tokenizer, options, media)?;
                let any_margin = pairs.examples.iter().any(|e| e.margin.is_some());
                let margins = any_margin.then(|| pairs.examples.iter().map(|e| e.margin.unwrap_or(0.0)).collect());
                let examples = pairs.examples.into_iter().map(RankingExample::from).collect();
                (RankingDataset { tasks: pairs.tasks, examples }, margins, report)
            }
            RewardData::Rankings(_) => {
                let (data, report) = RankingDataset::load_rankings_with_media(&sources, tokenizer, options, media)?;
                (data, None, report)
            }
        };
        let path = self.path().display();
        let Some(first) = data.examples.first() else {
            let first = report.bad.first().map_or(String::new(), |b| format!("; first: {b}"));
            return Err(Error::InvalidArgument(format!(
                "{path} holds no usable record ({} records, {} left out{first})",
                report.records,
                report.bad.len()
            )));
        };
        let k = first.responses.len();
        if let Some(e) = data.examples.iter().find(|e| e.responses.len() != k) {
            return Err(Error::InvalidArgument(format!(
                "line {} of {path} ranks {} responses, line {} ranks {k}: every record of a file ranks as many",
                e.line,
                e.responses.len(),
                first.line
            )));
        }
        if media.is_none() {
            let first = data.examples.iter().find(|e| !e.media.is_empty()).map(|e| e.line);
            refuse_media_without_loader(first, self.path())?;
        }
        Ok((data, margins, report))
    }
}

/// A whole reward-model run.
#[derive(Clone, Debug)]
pub struct RewardRun {
    /// The checkpoint trained from (config, weights, tokenizer files, chat template; for LLaVA-OneVision its
    /// `preprocessor_config.json`); its `score.weight` is the head's start when it has one, otherwise the head is
    /// drawn from `train.seed`.
    pub model: PathBuf,
    pub data: RewardData,
    /// Checkpoints go to `out/checkpoint-<step>/`.
    pub out: PathBuf,
    /// A held-out file in `data`'s format.
    pub eval: Option<PathBuf>,
    /// Evaluate every this many steps (0: only at the end); always at the end.
    pub eval_every: usize,
    pub loss: RewardLoss,
    pub train: TrainOptions,
    /// The folder the records' media paths are relative to; `None`: each data file's own folder.
    pub media_folder: Option<PathBuf>,
    /// Frames sampled from each video (a LLaVA-OneVision checkpoint).
    pub video_frames: usize,
}

impl Default for RewardRun {
    fn default() -> Self {
        RewardRun {
            model: PathBuf::new(),
            data: RewardData::default(),
            out: PathBuf::new(),
            eval: None,
            eval_every: 0,
            loss: RewardLoss::default(),
            train: TrainOptions::default(),
            media_folder: None,
            video_frames: DEFAULT_VIDEO_FRAMES,
        }
    }
}

/// How a run ended.
#[derive(Debug)]
pub struct RewardOutcome {
    pub steps_done: u64,
    pub total_steps: usize,
    /// The last checkpoint written.
    pub checkpoint: PathBuf,
    /// Stopped by the caller's flag before the end.
    pub interrupted: bool,
    pub data: DataReport,
    /// The held-out file's report.
    pub eval_data: Option<DataReport>,
}

/// A run's trainer, data, held-out batches and loader position, as [`drive`] steps them.
struct Progress<'a> {
    run: &'a RewardRun,
    trainer: RewardTrainer,
    data: RankingDataset,
    margins: Option<Vec<f32>>,
    sampler: BatchSampler,
    eval: Vec<RewardBatch>,
    pad: u32,
    total_steps: usize,
}

/// `examples` (indices into `data`) as one batch.
fn batch(data: &RankingDataset, margins: Option<&[f32]>, indices: &[usize], pad: u32) -> RewardBatch {
    let examples: Vec<_> = indices.iter().map(|&i| &data.examples[i]).collect();
    let k = examples.first().map_or(2, |e| e.responses.len());
    let margin = margins.map(|m| indices.iter().map(|&i| m[i]).collect());
    RewardBatch { rows: collate_rankings(&examples, pad), k, margin }
}

impl Steps for Progress<'_> {
    type Metrics = RewardStepMetrics;

    fn steps_done(&self) -> u64 {
        self.trainer.optimizer().steps_done()
    }

    fn step(&mut self) -> Result<RewardStepMetrics> {
        let micro: Vec<_> = (0..self.run.train.grad_accum)
            .map(|_| batch(&self.data, self.margins.as_deref(), &self.sampler.next_batch().examples, self.pad))
            .collect();
        let mut metrics = self.trainer.step(&micro)?;
        let step = metrics.step as usize;
        let every = self.run.eval_every;
        let due = (every > 0 && step.is_multiple_of(every)) || step == self.total_steps;
        if due && !self.eval.is_empty() {
            metrics.eval = Some(self.trainer.evaluate(&self.eval)?);
        }
        Ok(metrics)
    }

    fn save(&self) -> Result<PathBuf> {
        let state = TrainerState {
            step: self.trainer.optimizer().steps_done(),
            total_steps: self.total_steps,
            loader: Some(self.sampler.state()),
            extra: serde_json::Value::Null,
        };
        save_reward_checkpoint(&self.trainer, &self.run.model, self.pad, &self.run.out, &state)
    }
}

/// The reward model in `weights_dir` in f32 on `device` (a reward checkpoint's `score.weight` beside its weights is
/// the head's start; otherwise the head is drawn from `seed`).
pub(super) fn load_reward_model(
    weights_dir: &Path,
    device: Device,
    video_frames: usize,
    seed: u64,
) -> Result<(TrainModel, Tensor)> {
    // Lenient: a reward checkpoint holds `score.weight` beside the model.
    let options = LoadOptions { lenient: true, ..LoadOptions::default() };
    let model = TrainModel::load_with(weights_dir, DType::F32, device, video_frames, &options)?;
    let hidden = model.language_model().config.hidden_size;
    let score = match load_score(weights_dir, hidden, device)? {
        Some(score) => score,
        None => init_score(hidden, INITIAL_SCORE_STD, seed, device)?,
    };
    Ok((model, score))
}

/// Writes `out/checkpoint-<step>/` for `trainer`: the model in `source`'s layout with `score.weight` beside it (for
/// Qwen2 under a sequence-classification config, see the module's doc) and `state`, atomically.
pub(super) fn save_reward_checkpoint(
    trainer: &RewardTrainer,
    source: &Path,
    pad: u32,
    out: &Path,
    state: &TrainerState,
) -> Result<PathBuf> {
    let model = trainer.model();
    // Qwen2: a sequence-classification config over the source's, so transformers loads the head as `score`.
    let config = match model {
        TrainModel::Qwen2(_) => Some(reward_config(source, pad)?),
        TrainModel::Llava(_) => None,
    };
    let head = [(SCORE_WEIGHT.to_string(), trainer.score())];
    save_run_checkpoint_with(out, trainer.optimizer(), state, |dir, options, trainer_state| {
        model.save_with(&head, source, dir, options, |tmp| {
            if let Some(config) = &config {
                let path = tmp.join("config.json");
                std::fs::write(&path, config)
                    .map_err(|e| Error::Checkpoint(format!("cannot write {}: {e}", path.display())))?;
            }
            trainer_state(tmp)
        })
    })
}

impl RewardRun {
    /// Trains, calling `on_step` after every step, until the end or until `stop` is set (then saves and returns).
    /// Everything (options, loss, the data and held-out files, checkpoints) is checked before anything is written
    /// to `out`.
    pub fn run(&self, stop: &AtomicBool, on_step: impl FnMut(&RewardStepMetrics, usize)) -> Result<RewardOutcome> {
        let train = &self.train;
        train.check()?;
        if self.eval.is_none() && self.eval_every > 0 {
            return Err(Error::InvalidArgument("`--eval-every` needs a held-out file: give `--eval FILE`".into()));
        }
        let tokenizer = ConversationTokenizer::from_checkpoint_dir(&self.model)?;
        let resumed = if train.resume { latest_checkpoint(&self.out) } else { None };
        let weights_dir = resumed.as_ref().map_or(self.model.as_path(), |(_, dir)| dir.as_path());
        let (model, score) = load_reward_model(weights_dir, train.device, self.video_frames, train.seed)?;
        let media = model.media_loader();
        let positions = model.max_positions();
        let (data, margins, report) =
            self.data.load(&tokenizer, &self.data_options(self.data.path(), positions), media)?;
        let k = data.examples[0].responses.len();
        let path = self.data.path().display();
        match self.loss {
            RewardLoss::BradleyTerry { .. } if k != 2 => {
                return Err(Error::InvalidArgument(format!(
                    "{path} ranks {k} responses a record: Bradley–Terry trains on pairs, use `--loss kwise`"
                )))
            }
            RewardLoss::Kwise(_) if margins.is_some() => {
                return Err(Error::InvalidArgument(format!(
                    "{path} gives margins, a Bradley–Terry input: use `--loss bradley-terry` or drop them"
                )))
            }
            _ => {}
        }
        let pad = tokenizer.pad_id();
        let (eval, eval_report) = match &self.eval {
            Some(file) => {
                let held_out = match &self.data {
                    RewardData::Pairs(_) => RewardData::Pairs(file.clone()),
                    RewardData::Rankings(_) => RewardData::Rankings(file.clone()),
                };
                let (eval_data, eval_margins, eval_report) =
                    held_out.load(&tokenizer, &self.data_options(file, positions), media)?;
                let eval_k = eval_data.examples[0].responses.len();
                if eval_k != k || (eval_margins.is_some() && matches!(self.loss, RewardLoss::Kwise(_))) {
                    return Err(Error::InvalidArgument(format!(
                        "the held-out file {} ranks {eval_k} responses a record{}, the training data {k}: they must \
                         match the loss",
                        file.display(),
                        if eval_margins.is_some() { " with margins" } else { "" }
                    )));
                }
                let indices: Vec<usize> = (0..eval_data.examples.len()).collect();
                let batches = indices
                    .chunks(train.batch_size)
                    .map(|chunk| batch(&eval_data, eval_margins.as_deref(), chunk, pad))
                    .collect();
                (batches, Some(eval_report))
            }
            None => (Vec::new(), None),
        };
        let mut sampler = BatchSampler::for_rankings(&data, train.sampler())?;
        let total_steps = train.total_steps(sampler.batches_per_epoch())?;
        let config = RewardTrainerConfig {
            optimizer: train.optimizer(total_steps)?,
            groups: train.groups(),
            loss: self.loss,
            ..RewardTrainerConfig::default()
        };
        let mut trainer = RewardTrainer::new(model, score, config)?;
        if let Some((_, dir)) = &resumed {
            let state = load_run_state(dir, trainer.optimizer_mut(), total_steps)?;
            sampler.restore(state.loader()?)?;
        }
        let mut progress = Progress { run: self, trainer, data, margins, sampler, eval, pad, total_steps };
        let resumed = resumed.map(|(_, dir)| dir);
        let driven = drive(&mut progress, total_steps, train.save_every, stop, resumed, on_step)?;
        Ok(RewardOutcome {
            steps_done: progress.steps_done(),
            total_steps,
            checkpoint: driven.checkpoint,
            interrupted: driven.interrupted,
            data: report,
            eval_data: eval_report,
        })
    }

    /// How the file at `path` is read: media paths relative to `media_folder`, else to the file's folder; records
    /// longer than the model's `positions` are bad records.
    fn data_options(&self, path: &Path, positions: usize) -> DataOptions {
        data_options_for(&self.train, path, self.media_folder.as_deref()).within(positions)
    }
}
