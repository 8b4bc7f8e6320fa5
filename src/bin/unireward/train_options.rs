//! What the training subcommands share: their common flags (one [`TrainArgs`] flattened into each) and the
//! progress they report — a bar on a terminal (step, the trainer's message, tokens/s, ETA), one line per step
//! otherwise — with one JSON line of metrics per step appended to `--out/metrics.jsonl`, the file opened at the
//! first step (a run refused before it writes nothing).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use unireward::train::data::{BadRecord, BadRecordPolicy, DEFAULT_VIDEO_FRAMES};
use unireward::train::optim::ScheduleKind;
use unireward::train::plots::write_metric_plots;
use unireward::train::run::{frozen_fragments, TrainOptions};
use unireward::Device;

/// Where a LLaVA-OneVision trainer finds the records' media and how it samples videos.
#[derive(clap::Args)]
pub struct MediaArgs {
    /// The folder the records' media paths are relative to (default: the data file's folder).
    #[arg(long)]
    pub media_folder: Option<PathBuf>,
    /// Frames sampled from each video.
    #[arg(long, default_value_t = DEFAULT_VIDEO_FRAMES)]
    pub video_frames: usize,
}

#[derive(clap::Args)]
pub struct TrainArgs {
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Optimizer steps of the run, in place of --epochs (batches go on into the next epochs as far as needed; the
    /// schedule spans these steps).
    #[arg(long)]
    max_steps: Option<usize>,
    #[arg(long, default_value_t = 1e-5)]
    lr: f64,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Clip the gradients' global norm to this (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    /// Examples (conversations or pairs) per micro-batch.
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Records longer than this many tokens are skipped (and counted).
    #[arg(long, default_value_t = 2048)]
    max_len: usize,
    #[arg(long, default_value_t = 0.03)]
    warmup_ratio: f64,
    /// The learning rate after warm-up: constant, linear or cosine (decay to 0 at the last step).
    #[arg(long, default_value = "cosine", value_parser = parse_schedule)]
    schedule: ScheduleKind,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Save a checkpoint every this many steps (0: only at the end).
    #[arg(long, default_value_t = 0)]
    save_every: usize,
    /// Continue from the latest checkpoint in --out.
    #[arg(long)]
    resume: bool,
    /// Parameters to leave untrained, by name fragment (repeatable; `vision` is the LLaVA vision tower, `projector`
    /// its projector in either layout).
    #[arg(long)]
    freeze: Vec<String>,
    /// Refuse the data file at its first bad record instead of skipping bad records (they are counted either way).
    #[arg(long)]
    refuse_bad_records: bool,
    /// Draw batches from the whole shuffled epoch instead of grouping examples of similar lengths (which, in a
    /// multi-task file, makes most batches hold one task).
    #[arg(long)]
    no_group_by_length: bool,
    /// How many times a task's examples are seen per epoch, as TASK=WEIGHT (repeatable; 0.5: a random half, 2:
    /// each twice; tasks not named: 1).
    #[arg(long, value_parser = parse_task_weight)]
    task_weight: Vec<(String, f64)>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", value_parser = crate::parse_device)]
    device: Device,
}

fn parse_task_weight(s: &str) -> Result<(String, f64), String> {
    let (task, weight) = s.split_once('=').ok_or_else(|| format!("`{s}` is not TASK=WEIGHT"))?;
    let weight = weight.parse().map_err(|e| format!("the weight of `{task}` in `{s}`: {e}"))?;
    Ok((task.to_string(), weight))
}

fn parse_schedule(s: &str) -> Result<ScheduleKind, String> {
    ScheduleKind::from_name(s).map_err(|e| e.to_string())
}

impl TrainArgs {
    pub fn options(&self) -> TrainOptions {
        TrainOptions {
            epochs: self.epochs,
            max_steps: self.max_steps,
            lr: self.lr,
            weight_decay: self.weight_decay,
            max_grad_norm: (self.max_grad_norm > 0.0).then_some(self.max_grad_norm),
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            max_len: self.max_len,
            warmup_ratio: self.warmup_ratio,
            schedule: self.schedule,
            seed: self.seed,
            save_every: self.save_every,
            resume: self.resume,
            frozen: frozen_fragments(&self.freeze),
            bad_records: if self.refuse_bad_records { BadRecordPolicy::Refuse } else { BadRecordPolicy::Skip },
            group_by_length: !self.no_group_by_length,
            task_weights: self.task_weight.clone(),
            device: self.device,
        }
    }
}

/// The progress of a run and its metrics log.
pub struct TrainProgress {
    bar: ProgressBar,
    log_path: PathBuf,
    log: Option<File>,
    log_error: Option<anyhow::Error>,
    start: Instant,
    tokens_seen: usize,
    first_step: Option<u64>,
}

impl TrainProgress {
    pub fn new(out: &Path) -> anyhow::Result<TrainProgress> {
        let style =
            ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} ETA {eta}").context("the bar's template")?;
        Ok(TrainProgress {
            bar: ProgressBar::new(0).with_style(style),
            log_path: out.join("metrics.jsonl"),
            log: None,
            log_error: None,
            start: Instant::now(),
            tokens_seen: 0,
            first_step: None,
        })
    }

    /// Reports step `step` of `total` (`tokens` trained on, `message` the trainer's figures) and logs `metrics`.
    pub fn step(&mut self, step: u64, total: usize, tokens: usize, message: &str, metrics: serde_json::Value) {
        self.tokens_seen += tokens;
        let first = *self.first_step.get_or_insert(step - 1);
        let elapsed = self.start.elapsed().as_secs_f64();
        let eta = elapsed / (step - first) as f64 * (total as f64 - step as f64);
        let speed = self.tokens_seen as f64 / elapsed;
        if self.bar.is_hidden() {
            eprintln!("step {step}/{total}  {message}  {speed:.0} tokens/s  ETA {eta:.0}s");
        } else {
            self.bar.set_length(total as u64);
            self.bar.set_position(step);
            self.bar.set_message(format!("{message}  {speed:.0} tokens/s"));
        }
        if let Err(e) = self.append(&metrics) {
            self.log_error.get_or_insert(e);
        }
    }

    /// Prints `message` above the bar and logs `metrics` (an evaluation's).
    pub fn note(&mut self, message: &str, metrics: serde_json::Value) {
        self.bar.suspend(|| eprintln!("{message}"));
        if let Err(e) = self.append(&metrics) {
            self.log_error.get_or_insert(e);
        }
    }

    fn append(&mut self, metrics: &serde_json::Value) -> anyhow::Result<()> {
        let log = match &mut self.log {
            Some(log) => log,
            None => {
                if let Some(dir) = self.log_path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let file = std::fs::OpenOptions::new().create(true).append(true).open(&self.log_path)?;
                self.log.insert(file)
            }
        };
        writeln!(log, "{metrics}")?;
        Ok(())
    }

    /// Clears the bar and plots the metrics log beside it (`loss.png`, `lr.png`, ...); the first error writing the
    /// log, if any. A plot that cannot be drawn is only a warning: the checkpoint is saved whatever happens here.
    pub fn finish(self) -> anyhow::Result<()> {
        self.bar.finish_and_clear();
        if let Some(e) = self.log_error {
            return Err(e).with_context(|| format!("writing {}", self.log_path.display()));
        }
        drop(self.log);
        let out = self.log_path.parent().unwrap_or(Path::new("."));
        if self.log_path.is_file() {
            match write_metric_plots(&self.log_path, out) {
                Ok(report) => crate::plot::print_report(&report, &self.log_path),
                Err(e) => eprintln!("warning: no plots of {}: {e}", self.log_path.display()),
            }
        }
        Ok(())
    }
}

/// Prints how a run ended (and the bad records it skipped, with their lines).
pub fn report_end(bad: &[BadRecord], data: &Path, interrupted: bool, steps: u64, total: usize, checkpoint: &Path) {
    report_bad_records(data, bad);
    let how = if interrupted { "interrupted after" } else { "done:" };
    println!("{how} {steps} steps of {total}; checkpoint {}", checkpoint.display());
}

/// The records a load of `data` left out, the first few each with its line, and their count.
pub fn report_bad_records(data: &Path, bad: &[BadRecord]) {
    const LISTED: usize = 20;
    if bad.is_empty() {
        return;
    }
    eprintln!("skipped {} bad record(s) of {}:", bad.len(), data.display());
    for record in bad.iter().take(LISTED) {
        eprintln!("  {record}");
    }
    if bad.len() > LISTED {
        eprintln!("  ... and {} more", bad.len() - LISTED);
    }
}
