//! [`RewardRecordTrainer`]: the reward-model trainer stepped by its caller on batches of records instead of a data
//! file — preference pairs (`prompt`, `chosen`, `rejected`, optional `margin` and media) for Bradley–Terry, ranked
//! lists (`prompt`, `responses` best first) for a K-wise loss — what the C ABI and Python expose so that a script
//! drives the loop. Records are tokenized, collated and trained exactly as [`RewardRun`](super::RewardRun) does the
//! same records drawn in the same batches, with the same optimizer settings: the metrics and parameters are bitwise
//! the run's.

use std::path::{Path, PathBuf};

use super::run::{load_reward_model, save_reward_checkpoint};
use super::{RewardBatch, RewardLoss, RewardStepMetrics, RewardTrainer, RewardTrainerConfig};
use crate::train::data::{
    collate_rankings, ConversationTokenizer, DataOptions, PairDataset, RankingDataset, RankingExample,
};
use crate::train::run::{check_steps_left, StepOptions, TrainerState};
use crate::{Error, Result};

/// The task of every record (the reward trainer reports no per-task metrics).
const TASK: &str = "records";

/// A reward-model trainer over a checkpoint, stepped on the caller's batches of pair or ranking records.
#[derive(Debug)]
pub struct RewardRecordTrainer {
    trainer: RewardTrainer,
    tokenizer: ConversationTokenizer,
    data: DataOptions,
    /// The checkpoint trained from (its config and tokenizer files are copied into each saved checkpoint).
    source: PathBuf,
    total_steps: usize,
}

impl RewardRecordTrainer {
    /// Loads the checkpoint in `model` (a Qwen2 or LLaVA-OneVision one, or a reward checkpoint with its
    /// `score.weight`; a checkpoint without a head gets a fresh one drawn as `unireward train-reward` draws it at
    /// its default seed) in f32 on `options.device`, with a fresh optimizer and `loss` — or, with
    /// `options.resume_from`, the weights, head and optimizer state of a checkpoint [`save`](Self::save) wrote.
    pub fn new(model: &Path, loss: RewardLoss, options: &StepOptions) -> Result<RewardRecordTrainer> {
        let train = options.checked(&[model])?;
        let tokenizer = ConversationTokenizer::from_checkpoint_dir(model)?;
        let weights = options.weights_dir(model)?;
        let (loaded, score) = load_reward_model(weights, options.device, options.video_frames, train.seed)?;
        let config = RewardTrainerConfig {
            optimizer: train.optimizer(options.total_steps)?,
            groups: train.groups(),
            loss,
            ..RewardTrainerConfig::default()
        };
        let data =
            DataOptions { media_folder: options.media_folder.clone(), ..train.data() }.within(loaded.max_positions());
        let mut trainer = RewardTrainer::new(loaded, score, config)?;
        options.restore(trainer.optimizer_mut())?;
        Ok(RewardRecordTrainer {
            trainer,
            tokenizer,
            data,
            source: model.to_path_buf(),
            total_steps: options.total_steps,
        })
    }

    /// The trainer (its model, head and optimizer).
    pub fn trainer(&self) -> &RewardTrainer {
        &self.trainer
    }

    /// One optimizer step over `micro_batches` (gradient accumulation over one or more), each a list of records in
    /// batch order: pairs for Bradley–Terry, ranked lists of the same length for a K-wise loss. Every record is
    /// parsed, tokenized and its media decoded before the first micro-batch runs; a bad one is an error naming it
    /// (`micro_batches[i][j]`) and nothing is updated.
    pub fn step(&mut self, micro_batches: &[Vec<&str>]) -> Result<RewardStepMetrics> {
        check_steps_left(self.trainer.optimizer().steps_done(), self.total_steps)?;
        let batches =
            micro_batches.iter().enumerate().map(|(i, records)| self.batch(i, records)).collect::<Result<Vec<_>>>()?;
        if let Some(k) = batches.first().map(|b| b.k) {
            if let Some((i, b)) = batches.iter().enumerate().find(|(_, b)| b.k != k) {
                return Err(Error::InvalidArgument(format!(
                    "`micro_batches[{i}]` ranks {} responses a record, `micro_batches[0]` {k}: a step ranks as many",
                    b.k
                )));
            }
        }
        self.trainer.step(&batches)
    }

    /// The records of micro-batch `i` as one batch of the trainer's loss.
    fn batch(&self, i: usize, records: &[&str]) -> Result<RewardBatch> {
        if records.is_empty() {
            return Err(Error::InvalidArgument(format!("`micro_batches[{i}]` holds no record")));
        }
        let what = format!("micro_batches[{i}]");
        let (tokenizer, data, media) = (&self.tokenizer, &self.data, self.trainer.model().media_loader());
        let (examples, margin): (Vec<RankingExample>, _) = match self.trainer.config().loss {
            RewardLoss::BradleyTerry { .. } => {
                let pairs = PairDataset::from_pair_records(records, &what, TASK, tokenizer, data, media)?;
                let any_margin = pairs.examples.iter().any(|e| e.margin.is_some());
                let margin = any_margin.then(|| pairs.examples.iter().map(|e| e.margin.unwrap_or(0.0)).collect());
                (pairs.examples.into_iter().map(RankingExample::from).collect(), margin)
            }
            RewardLoss::Kwise(_) => {
                let ranked = RankingDataset::from_ranking_records(records, &what, TASK, tokenizer, data, media)?;
                (ranked.examples, None)
            }
        };
        if media.is_none() {
            if let Some(e) = examples.iter().find(|e| !e.media.is_empty()) {
                return Err(Error::InvalidArgument(format!(
                    "`{what}[{}]` has images or videos but the model is a text-only Qwen2",
                    e.line - 1
                )));
            }
        }
        let k = examples[0].responses.len();
        if let Some(e) = examples.iter().find(|e| e.responses.len() != k) {
            return Err(Error::InvalidArgument(format!(
                "`{what}[{}]` ranks {} responses, `{what}[0]` {k}: every record of a step ranks as many",
                e.line - 1,
                e.responses.len()
            )));
        }
        let refs: Vec<&RankingExample> = examples.iter().collect();
        Ok(RewardBatch { rows: collate_rankings(&refs, self.tokenizer.pad_id()), k, margin })
    }

    /// Writes `out/checkpoint-<step>/` as [`RewardRun`](super::RewardRun) does — the model in the source's layout
    /// with `score.weight` beside it and `trainer_state/` (the optimizer's moments and masters and the step), in one
    /// atomic rename — without a data-loader position (the caller's loop has its own). Returns its folder.
    pub fn save(&self, out: &Path) -> Result<PathBuf> {
        let state = TrainerState {
            step: self.trainer.optimizer().steps_done(),
            total_steps: self.total_steps,
            loader: None,
            extra: serde_json::Value::Null,
        };
        save_reward_checkpoint(&self.trainer, &self.source, self.tokenizer.pad_id(), out, &state)
    }
}
