//! The judge's pairwise accuracy during SFT: a benchmark file in `unireward eval`'s format
//! ([`crate::judge::bench`]) judged one-pass by the model being trained, lent to a [`Judge`] in memory (moved in
//! and back, no copy, nothing saved), so that an evaluation after step `n` reports what `unireward eval` reports
//! on `checkpoint-n`: the same judge code, judging files, batches and metrics.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use super::SftTrainer;
use crate::judge::bench::{evaluate_bench, read_bench_file, BenchOptions, BenchPair, BenchSummary};
use crate::judge::Judge;
use crate::train::model::TrainModel;
use crate::{Error, Result};

/// The metrics key prefix of a benchmark evaluation in `metrics.jsonl`.
pub const BENCH_KEY_PREFIX: &str = "eval/bench/";

impl SftTrainer {
    /// [`TrainModel::judge_with`] on the model being trained: `f` gets a judge over the current parameters and the
    /// judging files (tokenizer, chat template, task templates, image processor) of the checkpoint directory
    /// `dir`; the trainer comes back unchanged. On an error the trainer is dropped.
    pub fn judge_with<R>(self, dir: &Path, f: impl FnOnce(&Judge) -> Result<R>) -> Result<(SftTrainer, R)> {
        let SftTrainer { model, grads, optimizer, config } = self;
        let (model, out) = model.judge_with(dir, f)?;
        Ok((SftTrainer { model, grads, optimizer, config }, out))
    }
}

/// A benchmark file read and checked for a run.
#[derive(Debug)]
pub(super) struct TrainingBench {
    path: PathBuf,
    pairs: Vec<BenchPair>,
    /// The checkpoint whose judging files the judge reads (the run's source: its checkpoints copy them).
    judging_files: PathBuf,
}

impl TrainingBench {
    /// Reads the benchmark file `path` (media relative to `media_folder`): a missing file, a bad line or no pair at
    /// all is an error naming `--eval-bench` and the file (and the line).
    pub fn read(path: &Path, media_folder: &Path, judging_files: &Path) -> Result<TrainingBench> {
        let named = |e: Error| match e {
            Error::InvalidArgument(m) | Error::Checkpoint(m) => Error::InvalidArgument(format!("`--eval-bench`: {m}")),
            other => other,
        };
        let pairs = read_bench_file(path, media_folder).map_err(named)?;
        if pairs.is_empty() {
            return Err(Error::InvalidArgument(format!("`--eval-bench` {} holds no pairs", path.display())));
        }
        Ok(TrainingBench { path: path.to_path_buf(), pairs, judging_files: judging_files.to_path_buf() })
    }

    /// Checks every pair as `model`'s judge would judge it (its task's template and fields, the media files,
    /// whether the model sees images), before anything is trained or written; gives the model back.
    pub fn check(&self, model: TrainModel) -> Result<TrainModel> {
        let (model, ()) = model.judge_with(&self.judging_files, |judge| {
            for (i, pair) in self.pairs.iter().enumerate() {
                judge.check(&pair.request).map_err(|e| {
                    let why = match e {
                        Error::InvalidArgument(m) => m,
                        other => other.to_string(),
                    };
                    Error::InvalidArgument(format!(
                        "`--eval-bench` {} pair {} ({}): the judge cannot judge it: {why}",
                        self.path.display(),
                        i + 1,
                        pair.request.task
                    ))
                })?;
            }
            Ok(())
        })?;
        Ok(model)
    }

    /// The benchmark's summary for `trainer`'s current parameters, judged in `unireward eval`'s default batches;
    /// `None` when `stop` was set before the last batch (a part of the pairs is not the benchmark's metric).
    pub fn evaluate(&self, trainer: SftTrainer, stop: &AtomicBool) -> Result<(SftTrainer, Option<BenchSummary>)> {
        trainer.judge_with(&self.judging_files, |judge| {
            let outcome = evaluate_bench(judge, &self.pairs, &BenchOptions::default(), stop, |_, _| {})?;
            Ok((!outcome.interrupted).then_some(outcome.summary))
        })
    }
}

/// `summary`'s entries of a `metrics.jsonl` line: `eval/bench/<metric>` for every rate (per-task `tau` / `diff`
/// or `accuracy`, `vl_reward_bench.*`, `position_consistency`, `ece`); the pair counts are left out (they are the
/// file's, the same at every evaluation).
pub fn bench_log_entries(summary: &BenchSummary) -> serde_json::Map<String, serde_json::Value> {
    summary
        .metrics
        .iter()
        .filter(|(key, _)| !key.ends_with(".pairs"))
        .map(|(key, value)| (format!("{BENCH_KEY_PREFIX}{key}"), value.clone()))
        .collect()
}
