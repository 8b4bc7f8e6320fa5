//! [`DpoRecordTrainer`]: the DPO trainer stepped by its caller on batches of preference-pair records (`prompt`,
//! `chosen`, `rejected`, optional media; one JSON object a record) instead of a pair file. The reference is a
//! frozen copy run on each batch, so the same records drawn in the same batches give bitwise what
//! [`DpoRun`](super::DpoRun) gives with `reference_on_the_fly`.

use std::path::{Path, PathBuf};

use super::run::{check_loss_options, restore_trainer_extra, trainer_extra};
use super::{needs_reference, reference_logps, DpoStepMetrics, DpoTrainer, DpoTrainerConfig, PairBatch};
use crate::ops::preference::DpoConfig;
use crate::runtime::DType;
use crate::train::data::{collate_pairs, ConversationTokenizer, DataOptions, PairDataset};
use crate::train::model::TrainModel;
use crate::train::run::{check_steps_left, save_run_checkpoint_with, StepOptions, TrainerState};
use crate::{Error, Result};

/// The task of every record (the DPO trainer reports no per-task metrics).
const TASK: &str = "pairs";

/// A DPO trainer over a policy checkpoint, stepped on the caller's batches of preference pairs.
#[derive(Debug)]
pub struct DpoRecordTrainer {
    trainer: DpoTrainer,
    /// The frozen reference; `None` when the loss needs none (reference-free, SimPO, ORPO).
    reference: Option<TrainModel>,
    tokenizer: ConversationTokenizer,
    data: DataOptions,
    /// The policy checkpoint trained from (its config and tokenizer files are copied into each checkpoint).
    source: PathBuf,
    total_steps: usize,
}

impl DpoRecordTrainer {
    /// Loads the policy in `policy` (and the reference from `reference`, else a second copy of the policy as it
    /// starts, when the loss needs one) in f32 on `options.device`, with a fresh optimizer and `loss` — or, with
    /// `options.resume_from`, the policy's weights, optimizer state and BCO mean from a checkpoint
    /// [`save`](Self::save) wrote (the reference still from `reference`, else `policy`: the run's start).
    pub fn new(
        policy: &Path,
        reference: Option<&Path>,
        loss: DpoConfig,
        options: &StepOptions,
    ) -> Result<DpoRecordTrainer> {
        check_loss_options(&loss)?;
        let dirs: Vec<&Path> = std::iter::once(policy).chain(reference).collect();
        let train = options.checked(&dirs)?;
        let tokenizer = ConversationTokenizer::from_checkpoint_dir(policy)?;
        let load = |dir: &Path| TrainModel::load(dir, DType::F32, options.device, options.video_frames);
        let model = load(options.weights_dir(policy)?)?;
        let config = DpoTrainerConfig {
            optimizer: train.optimizer(options.total_steps)?,
            groups: train.groups(),
            loss,
            ..DpoTrainerConfig::default()
        };
        let mut trainer = DpoTrainer::new(model, config)?;
        if let Some(state) = options.restore(trainer.optimizer_mut())? {
            restore_trainer_extra(&mut trainer, state.extra, options.resume_from.as_deref().unwrap_or(policy))?;
        }
        let reference = match needs_reference(&loss) {
            true => Some(load(reference.unwrap_or(policy))?),
            false => None,
        };
        let positions = trainer.model().max_positions();
        let data = DataOptions { media_folder: options.media_folder.clone(), ..train.data() }.within(positions);
        Ok(DpoRecordTrainer {
            trainer,
            reference,
            tokenizer,
            data,
            source: policy.to_path_buf(),
            total_steps: options.total_steps,
        })
    }

    /// The trainer (its policy, optimizer and loss).
    pub fn trainer(&self) -> &DpoTrainer {
        &self.trainer
    }

    /// One optimizer step over `micro_batches` (gradient accumulation over one or more), each a list of pair
    /// records in batch order. Every record is parsed, tokenized and its media decoded, and every micro-batch's
    /// reference log-probs computed, before the policy runs; a bad record is an error naming it
    /// (`micro_batches[i][j]`) and nothing is updated.
    pub fn step(&mut self, micro_batches: &[Vec<&str>]) -> Result<DpoStepMetrics> {
        check_steps_left(self.trainer.optimizer().steps_done(), self.total_steps)?;
        let media = self.trainer.model().media_loader();
        let forward = self.trainer.config().forward;
        let mut batches = Vec::with_capacity(micro_batches.len());
        for (i, records) in micro_batches.iter().enumerate() {
            if records.is_empty() {
                return Err(Error::InvalidArgument(format!("`micro_batches[{i}]` holds no record")));
            }
            let what = format!("micro_batches[{i}]");
            let data = PairDataset::from_pair_records(records, &what, TASK, &self.tokenizer, &self.data, media)?;
            if media.is_none() {
                if let Some(e) = data.examples.iter().find(|e| !e.media.is_empty()) {
                    return Err(Error::InvalidArgument(format!(
                        "`{what}[{}]` has images or videos but the policy is a text-only Qwen2",
                        e.line - 1
                    )));
                }
            }
            let examples: Vec<_> = data.examples.iter().collect();
            let rows = collate_pairs(&examples, self.tokenizer.pad_id());
            let ld_alpha = self.trainer.config().loss.ld_alpha;
            let reference =
                self.reference.as_ref().map(|model| reference_logps(model, &rows, forward, ld_alpha)).transpose()?;
            batches.push(PairBatch { rows, reference });
        }
        self.trainer.step(&batches)
    }

    /// Writes `out/checkpoint-<step>/` as [`DpoRun`](super::DpoRun) does — the policy's weights in the source's
    /// layout and `trainer_state/` (the optimizer, the step, BCO's running mean) in one atomic rename — without a
    /// data-loader position. Returns its folder.
    pub fn save(&self, out: &Path) -> Result<PathBuf> {
        let optimizer = self.trainer.optimizer();
        let state = TrainerState {
            step: optimizer.steps_done(),
            total_steps: self.total_steps,
            loader: None,
            extra: trainer_extra(&self.trainer)?,
        };
        save_run_checkpoint_with(out, optimizer, &state, |dir, options, extra| {
            self.trainer.model().save(&self.source, dir, options, extra)
        })
    }
}
