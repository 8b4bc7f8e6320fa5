//! The joint-versus-single comparison: for each task, a judge trained on that task's conversations alone — the
//! same examples the joint judge saw of it, for the same epochs — and evaluated on that task's held-out judgments.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use super::base::fine_tune;
use super::DemoConfig;
use crate::judge::bench::{evaluate_bench, read_bench_file, BenchOptions, BenchSummary};
use crate::judge::{GenerationConfig, Judge, Task};
use crate::model::files::read_text;
use crate::pipeline::world::DemoFiles;
use crate::runtime::{DType, Device};
use crate::{Error, Result};

/// The summary a finished single-task judge leaves in its folder.
pub const SUMMARY_FILE: &str = "summary.json";

/// Trains (or continues, from its latest checkpoint) the judge of `task` alone from the checkpoint `base` (the
/// joint judge's start) under `out` and evaluates it on the task's held-out judgments; `on_step(done, total)` as it
/// trains. `None` when `stop` ended the training (run again to continue); a finished judge's summary is read back,
/// not recomputed.
pub fn single_task_judge(
    config: &DemoConfig,
    files: &DemoFiles,
    base: &Path,
    task: Task,
    out: &Path,
    stop: &AtomicBool,
    on_step: impl FnMut(usize, usize),
) -> Result<Option<BenchSummary>> {
    let summary_path = out.join(SUMMARY_FILE);
    if summary_path.is_file() {
        let text = read_text(&summary_path, 1 << 20)?;
        return serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::InvalidArgument(format!("{}: {e}", summary_path.display())));
    }
    let data = files.judge_train_single.get(&task).ok_or_else(|| {
        Error::InvalidArgument(format!("the demo's data set has no single-task conversations of {task}"))
    })?;
    let mut train = config.judge_training.options("judge.training", Device::Cpu)?;
    // The task's own weight only: its share of each epoch is the joint judge's share of it.
    train.task_weights.retain(|(name, _)| name == task.name());
    let Some(checkpoint) = fine_tune(files, base, data, &out.join("train"), train, stop, on_step)? else {
        return Ok(None);
    };
    let reasoned = config.filter.reasoned_generation()?;
    let held_out = &files.judge_held_out;
    let Some(summary) = evaluate_judge(&checkpoint, held_out, &files.dir, Some(task), reasoned, stop)? else {
        return Ok(None);
    };
    let text = serde_json::to_string_pretty(&summary).expect("a summary serialises");
    std::fs::write(&summary_path, text)
        .map_err(|e| Error::InvalidArgument(format!("writing {}: {e}", summary_path.display())))?;
    Ok(Some(summary))
}

/// The judge in `judge_dir` on the judgments of the benchmark file `bench` (media relative to `media_dir`; only
/// those of `task` when given), as `unireward eval --batch 32` judges them — reasoned with `reasoned`, as the
/// pipeline's judge answers; `None` when `stop` ended it.
pub fn evaluate_judge(
    judge_dir: &Path,
    bench: &Path,
    media_dir: &Path,
    task: Option<Task>,
    reasoned: Option<GenerationConfig>,
    stop: &AtomicBool,
) -> Result<Option<BenchSummary>> {
    let judge = Judge::load(judge_dir, DType::F32, Device::Cpu)?;
    let pairs: Vec<_> =
        read_bench_file(bench, media_dir)?.into_iter().filter(|p| task.is_none_or(|t| p.request.task == t)).collect();
    let options = BenchOptions { batch: 32, reasoned, ..BenchOptions::default() };
    let outcome = evaluate_bench(&judge, &pairs, &options, stop, |_, _| {})?;
    Ok((!outcome.interrupted).then_some(outcome.summary))
}
