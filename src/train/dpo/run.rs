//! The DPO training loop over a pair file, with the reference log-probabilities cached (or computed on the fly)
//! and checkpoints that resume bitwise (see [`crate::train::run`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use super::reference::{self, CacheKey, CACHE_FILE};
use super::{needs_reference, reference_logps, DpoStepMetrics, DpoTrainer, DpoTrainerConfig, PairBatch, PairLogps};
use crate::ops::preference::{BcoDelta, DpoConfig};
use crate::runtime::DType;
use crate::train::data::{collate_pairs, BatchSampler, ConversationTokenizer, DataReport, DataSource, PairDataset};
use crate::train::model::TrainModel;
use crate::train::run::{
    data_options_for, drive, latest_checkpoint, load_run_state, refuse_media_without_loader, save_run_checkpoint_with,
    Steps, TrainOptions, TrainerState,
};
use crate::{Error, Result};

/// A whole DPO run.
#[derive(Clone, Debug, Default)]
pub struct DpoRun {
    /// The policy trained from (config, weights, tokenizer files, chat template).
    pub policy: PathBuf,
    /// Preference pairs (`prompt`, `chosen`, `rejected`; [`PairDataset::load_pairs`]'s format).
    pub pairs: PathBuf,
    /// Checkpoints go to `out/checkpoint-<step>/`, the reference cache to `out/ref_logps.json`.
    pub out: PathBuf,
    /// The reference checkpoint; `None`: the policy as it starts (frozen).
    pub reference: Option<PathBuf>,
    /// Compute the reference log-probs of each batch with a frozen copy instead of caching them up front.
    pub reference_on_the_fly: bool,
    /// The folder the prompts' media paths are relative to (`None`: the pair file's folder).
    pub media_folder: Option<PathBuf>,
    /// Frames sampled from each video (LLaVA-OneVision policies).
    pub video_frames: usize,
    pub loss: DpoConfig,
    pub train: TrainOptions,
}

/// Where the reference log-probabilities came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReferenceSource {
    /// Computed up front and written to the cache.
    Computed,
    /// Read from the cache of an earlier run.
    Cached,
    /// A frozen copy ran beside the policy.
    OnTheFly,
    /// The loss needs none (reference-free, SimPO, ORPO).
    Unused,
}

/// How a run ended.
#[derive(Debug)]
pub struct DpoOutcome {
    pub steps_done: u64,
    pub total_steps: usize,
    /// The last checkpoint written.
    pub checkpoint: PathBuf,
    /// Stopped by the caller's flag before the end.
    pub interrupted: bool,
    pub data: DataReport,
    pub reference: ReferenceSource,
}

/// The reference a run's batches get their log-probs from.
enum Reference {
    Cached(PairLogps),
    OnTheFly(Box<TrainModel>),
    Unused,
}

/// What the trainer's own checkpoint state holds (`TrainerState::extra`).
#[derive(serde::Serialize, serde::Deserialize)]
struct DpoState {
    /// BCO's running mean and count (`None` for a fixed δ).
    bco: Option<(f32, f32)>,
}

/// Restores the trainer's own part of the state of the checkpoint in `dir` (BCO's running mean).
pub(super) fn restore_trainer_extra(trainer: &mut DpoTrainer, extra: serde_json::Value, dir: &Path) -> Result<()> {
    let own: DpoState = serde_json::from_value(extra)
        .map_err(|e| Error::Checkpoint(format!("{}: the DPO state: {e}", dir.display())))?;
    if let Some((mean, count)) = own.bco {
        trainer.set_bco_delta(BcoDelta::Running { mean, count });
    }
    Ok(())
}

/// The trainer's own part of a checkpoint's state (`TrainerState::extra`): BCO's running mean.
pub(super) fn trainer_extra(trainer: &DpoTrainer) -> Result<serde_json::Value> {
    let bco = match trainer.bco_delta() {
        BcoDelta::Running { mean, count } => Some((mean, count)),
        BcoDelta::Fixed(_) => None,
    };
    serde_json::to_value(DpoState { bco }).map_err(|e| Error::Checkpoint(e.to_string()))
}

/// Refuses a β or a label smoothing out of range, naming the command-line flag.
pub(super) fn check_loss_options(loss: &DpoConfig) -> Result<()> {
    let beta = loss.beta;
    if !(beta.is_finite() && beta > 0.0) {
        return Err(Error::InvalidArgument(format!("`--beta` must be finite and > 0, got {beta}")));
    }
    let eps = loss.label_smoothing;
    if !(0.0..0.5).contains(&eps) {
        return Err(Error::InvalidArgument(format!("`--label-smoothing` must be in [0, 0.5), got {eps}")));
    }
    Ok(())
}

/// A run's trainer, data, reference and loader position, as [`drive`] steps them.
struct Progress<'a> {
    run: &'a DpoRun,
    trainer: DpoTrainer,
    data: PairDataset,
    sampler: BatchSampler,
    reference: Reference,
    pad: u32,
    total_steps: usize,
}

impl Progress<'_> {
    fn batch(&mut self) -> Result<PairBatch> {
        let indices = self.sampler.next_batch().examples;
        let examples: Vec<_> = indices.iter().map(|&i| &self.data.examples[i]).collect();
        let rows = collate_pairs(&examples, self.pad);
        let reference = match &self.reference {
            Reference::Cached(all) => Some(PairLogps {
                chosen: indices.iter().map(|&i| all.chosen[i]).collect(),
                rejected: indices.iter().map(|&i| all.rejected[i]).collect(),
            }),
            Reference::OnTheFly(model) => {
                let config = self.trainer.config();
                Some(reference_logps(model, &rows, config.forward, config.loss.ld_alpha)?)
            }
            Reference::Unused => None,
        };
        Ok(PairBatch { rows, reference })
    }
}

impl Steps for Progress<'_> {
    type Metrics = DpoStepMetrics;

    fn steps_done(&self) -> u64 {
        self.trainer.optimizer().steps_done()
    }

    fn step(&mut self) -> Result<DpoStepMetrics> {
        let micro = (0..self.run.train.grad_accum).map(|_| self.batch()).collect::<Result<Vec<_>>>()?;
        self.trainer.step(&micro)
    }

    fn save(&self) -> Result<PathBuf> {
        let optimizer = self.trainer.optimizer();
        let state = TrainerState {
            step: optimizer.steps_done(),
            total_steps: self.total_steps,
            loader: Some(self.sampler.state()),
            extra: trainer_extra(&self.trainer)?,
        };
        save_run_checkpoint_with(&self.run.out, optimizer, &state, |dir, options, extra| {
            self.trainer.model().save(&self.run.policy, dir, options, extra)
        })
    }
}

impl DpoRun {
    fn check(&self) -> Result<()> {
        self.train.check()?;
        check_loss_options(&self.loss)
    }

    /// The pair file, its prompts' media decoded and their placeholders expanded for a LLaVA-OneVision policy
    /// (`media`); a text-only policy refuses a record with media.
    fn load_pairs(&self, tokenizer: &ConversationTokenizer, model: &TrainModel) -> Result<(PairDataset, DataReport)> {
        let options =
            data_options_for(&self.train, &self.pairs, self.media_folder.as_deref()).within(model.max_positions());
        let media = model.media_loader();
        let (data, report) =
            PairDataset::load_pairs_with_media(&[DataSource::new(&self.pairs)], tokenizer, &options, media)?;
        if media.is_none() {
            let first = data.examples.iter().find(|e| !e.media.is_empty()).map(|e| e.line);
            refuse_media_without_loader(first, &self.pairs)?;
        }
        Ok((data, report))
    }

    /// The checkpoint the reference is loaded from.
    fn reference_dir(&self) -> &Path {
        self.reference.as_deref().unwrap_or(&self.policy)
    }

    /// Trains, calling `on_step` after every step, until the end or until `stop` is set (then saves and returns).
    /// Everything (options, loss, pair file, checkpoints, a cache of other inputs) is checked before anything is
    /// written to `out`.
    pub fn run(&self, stop: &AtomicBool, on_step: impl FnMut(&DpoStepMetrics, usize)) -> Result<DpoOutcome> {
        let train = &self.train;
        self.check()?;
        let tokenizer = ConversationTokenizer::from_checkpoint_dir(&self.policy)?;
        let resumed = if train.resume { latest_checkpoint(&self.out) } else { None };
        let weights_dir = resumed.as_ref().map_or(self.policy.as_path(), |(_, dir)| dir.as_path());
        let model = TrainModel::load(weights_dir, DType::F32, train.device, self.video_frames)?;
        let (data, report) = self.load_pairs(&tokenizer, &model)?;
        if data.examples.is_empty() {
            let first = report.bad.first().map_or(String::new(), |b| format!("; first: {b}"));
            return Err(Error::InvalidArgument(format!(
                "{} holds no usable pair ({} records, {} left out{first})",
                self.pairs.display(),
                report.records,
                report.bad.len()
            )));
        }
        let mut sampler = BatchSampler::for_pairs(&data, train.sampler())?;
        let total_steps = train.total_steps(sampler.batches_per_epoch())?;
        let config = DpoTrainerConfig {
            optimizer: train.optimizer(total_steps)?,
            groups: train.groups(),
            loss: self.loss,
            ..DpoTrainerConfig::default()
        };
        let mut trainer = DpoTrainer::new(model, config)?;
        if let Some((_, dir)) = &resumed {
            let state = load_run_state(dir, trainer.optimizer_mut(), total_steps)?;
            sampler.restore(state.loader()?)?;
            restore_trainer_extra(&mut trainer, state.extra, dir)?;
        }
        let pad = tokenizer.pad_id();
        let (reference, source) = self.reference(&data, pad)?;
        let mut progress = Progress { run: self, trainer, data, sampler, reference, pad, total_steps };
        let resumed = resumed.map(|(_, dir)| dir);
        let driven = drive(&mut progress, total_steps, train.save_every, stop, resumed, on_step)?;
        Ok(DpoOutcome {
            steps_done: progress.steps_done(),
            total_steps,
            checkpoint: driven.checkpoint,
            interrupted: driven.interrupted,
            data: report,
            reference: source,
        })
    }

    /// The reference for the run: none, a frozen copy, or every pair's log-probs from the cache (computed and
    /// written there when absent; a cache of other inputs is an error).
    fn reference(&self, data: &PairDataset, pad: u32) -> Result<(Reference, ReferenceSource)> {
        if !needs_reference(&self.loss) {
            return Ok((Reference::Unused, ReferenceSource::Unused));
        }
        let load = || TrainModel::load(self.reference_dir(), DType::F32, self.train.device, self.video_frames);
        if self.reference_on_the_fly {
            return Ok((Reference::OnTheFly(Box::new(load()?)), ReferenceSource::OnTheFly));
        }
        let path = self.out.join(CACHE_FILE);
        let key = CacheKey::new(&self.pairs, self.reference_dir(), data, self.loss.ld_alpha)?;
        if let Some(cached) = reference::load(&path, key, data.examples.len())? {
            return Ok((Reference::Cached(cached), ReferenceSource::Cached));
        }
        let model = load()?;
        let batch_size = self.train.batch_size;
        let logps = reference::compute(&model, data, pad, batch_size, Default::default(), self.loss.ld_alpha)?;
        std::fs::create_dir_all(&self.out)
            .map_err(|e| Error::Checkpoint(format!("cannot create {}: {e}", self.out.display())))?;
        reference::save(&path, &logps, key, data)?;
        Ok((Reference::Cached(logps), ReferenceSource::Computed))
    }
}
