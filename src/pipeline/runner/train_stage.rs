//! The training stages (the judge's and the policy's fine-tuning, DPO): the trainers' runs in the stage's folder,
//! resumed from their latest checkpoint when the stage continues, with one metrics line per step in
//! `metrics.jsonl` (cut back to the resumed checkpoint's step, so a resumed stage writes the bytes of an
//! uninterrupted one) plotted at the end.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use super::executor::StageContext;
use crate::model::files::read_text;
use crate::train::dpo::DpoRun;
use crate::train::plots::write_metric_plots;
use crate::train::run::latest_checkpoint;
use crate::train::sft::SftRun;
use crate::{Error, Result};

const METRICS_FILE: &str = "metrics.jsonl";
/// The largest metrics log read back.
const MAX_METRICS_BYTES: u64 = 1 << 30;

/// The checkpoint a finished training stage in `dir` leaves (its latest).
pub fn final_checkpoint(dir: &Path) -> Result<PathBuf> {
    latest_checkpoint(dir).map(|(_, path)| path).ok_or_else(|| {
        Error::InvalidArgument(format!("{}: a finished training stage without a checkpoint", dir.display()))
    })
}

/// The stage's metrics log, opened for appending: a new one, or (resuming) the old one's lines up to the step of
/// the checkpoint the trainer resumes from.
struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    fn open(dir: &Path, resume: bool) -> Result<MetricsLog> {
        let path = dir.join(METRICS_FILE);
        let io = |e: std::io::Error| Error::InvalidArgument(format!("writing {}: {e}", path.display()));
        let kept = if resume && path.is_file() {
            let resumed_step = latest_checkpoint(dir).map_or(0, |(step, _)| step);
            let text = read_text(&path, MAX_METRICS_BYTES)?;
            let complete = &text[..text.rfind('\n').map_or(0, |at| at + 1)];
            complete
                .lines()
                .take_while(|line| {
                    let step = serde_json::from_str::<serde_json::Value>(line).ok().and_then(|v| v["step"].as_u64());
                    step.is_some_and(|s| s <= resumed_step)
                })
                .map(|l| format!("{l}\n"))
                .collect()
        } else {
            String::new()
        };
        std::fs::write(&path, kept).map_err(io)?;
        let file = std::fs::OpenOptions::new().append(true).open(&path).map_err(io)?;
        Ok(MetricsLog { path, file })
    }

    fn append(&mut self, line: &serde_json::Value) -> Result<()> {
        writeln!(self.file, "{line}")
            .map_err(|e| Error::InvalidArgument(format!("writing {}: {e}", self.path.display())))
    }

    /// Plots the log beside it; a log that cannot be plotted (no step ran) is left as it is.
    fn finish(self) {
        drop(self.file);
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let _ = write_metric_plots(&self.path, dir);
    }
}

/// What a trainer's step reports: its step, the run's steps, its metrics line and a short message.
type OnStep<'a> = &'a mut dyn FnMut(u64, usize, serde_json::Value, String);

/// Runs a trainer (`train(stop, on_step)`, returning whether it was interrupted) with the stage's metrics log and
/// progress; false when stopped early.
fn logged(context: &mut StageContext<'_>, train: impl FnOnce(&AtomicBool, OnStep<'_>) -> Result<bool>) -> Result<bool> {
    let mut log = MetricsLog::open(&context.dir, context.resume)?;
    let mut failed = None;
    let stop = context.stop;
    let interrupted = train(stop, &mut |step, total, line, message| {
        if let Err(e) = log.append(&line) {
            failed.get_or_insert(e);
        }
        context.progress(step as usize, total, "steps", message);
    })?;
    failed.map_or(Ok(()), Err)?;
    if !interrupted {
        log.finish();
    }
    Ok(!interrupted)
}

/// Runs an SFT stage (`run.out`, `run.train.resume` set here); false when stopped early.
pub fn sft_stage(context: &mut StageContext<'_>, mut run: SftRun) -> Result<bool> {
    run.out = context.dir.clone();
    run.train.resume = context.resume;
    logged(context, |stop, on_step| {
        let outcome = run.run(stop, |m, total| on_step(m.step, total, m.log_line(), format!("loss {:.4}", m.loss)))?;
        Ok(outcome.interrupted)
    })
}

/// Runs a DPO stage like [`sft_stage`]; a pair file without pairs trains nothing (the policy stays as it was).
pub fn dpo_stage(context: &mut StageContext<'_>, mut run: DpoRun) -> Result<bool> {
    let pairs = std::fs::metadata(&run.pairs)
        .map_err(|e| Error::InvalidArgument(format!("reading {}: {e}", run.pairs.display())))?;
    if pairs.len() == 0 {
        return Ok(true);
    }
    run.out = context.dir.clone();
    run.train.resume = context.resume;
    logged(context, |stop, on_step| {
        let outcome = run.run(stop, |s, total| {
            let message = format!("loss {:.4}  reward acc {:.2}", s.loss, s.metrics.rewards_accuracies);
            on_step(s.step, total, s.log_line(), message)
        })?;
        Ok(outcome.interrupted)
    })
}

/// The policy after a DPO stage in `dir`: its checkpoint, or `before` when the stage had no pairs to train on.
pub fn policy_after_dpo(dir: &Path, before: &Path) -> PathBuf {
    latest_checkpoint(dir).map_or_else(|| before.to_path_buf(), |(_, path)| path)
}
