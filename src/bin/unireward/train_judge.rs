//! `unireward train-judge`: supervised fine-tuning of a judge (a Qwen2 or a LLaVA-OneVision checkpoint, whose
//! records' images and videos are decoded and preprocessed with its image processor) on a conversation file, with
//! checkpoints in `--out` every `--save-every` steps and at the end, `--resume` from the latest, and one JSON line
//! of metrics per step appended to `--out/metrics.jsonl` (plus one per evaluation of `--eval`, keys `eval/...`). Progress (step, loss, tokens/s, ETA) is a bar on a
//! terminal, one line per step otherwise. Ctrl-C stops after the current step with a checkpoint.

use std::cell::RefCell;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use unireward::train::data::DataReport;
use unireward::train::sft::{EvalMetrics, SftRun, SftStepMetrics};
use unireward::Device;

#[derive(clap::Args)]
pub struct Args {
    /// The checkpoint to train: config.json, safetensors weights, tokenizer.json and a chat template.
    #[arg(long)]
    model: PathBuf,
    /// Conversations in LLaVA's JSONL format (`image` / `video` fields for a LLaVA-OneVision checkpoint).
    #[arg(long)]
    data: PathBuf,
    /// A held-out conversation file: mean loss and token accuracy per task, every --eval-every steps and at the end.
    #[arg(long)]
    eval: Option<PathBuf>,
    /// Evaluate every this many steps (0: only at the end).
    #[arg(long, default_value_t = 0)]
    eval_every: usize,
    /// The folder the records' media paths are relative to (default: the data file's folder).
    #[arg(long)]
    media_folder: Option<PathBuf>,
    /// Frames sampled from each video.
    #[arg(long, default_value_t = unireward::train::data::DEFAULT_VIDEO_FRAMES)]
    video_frames: usize,
    /// Where checkpoints (`checkpoint-<step>/`) and `metrics.jsonl` go.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    #[arg(long, default_value_t = 1e-5)]
    lr: f64,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Examples per micro-batch.
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
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", value_parser = crate::parse_device)]
    device: Device,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating --out {}", args.out.display()))?;
    let log_path = args.out.join("metrics.jsonl");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let frozen = args
        .freeze
        .iter()
        .flat_map(|f| match f.as_str() {
            "vision" => vec!["vision_tower.".to_string()],
            "projector" => vec!["multi_modal_projector.".to_string(), "mm_projector.".to_string()],
            _ => vec![f.clone()],
        })
        .collect();
    let run = SftRun {
        model: args.model.clone(),
        data: args.data.clone(),
        out: args.out.clone(),
        epochs: args.epochs,
        lr: args.lr,
        weight_decay: args.weight_decay,
        batch_size: args.batch_size,
        grad_accum: args.grad_accum,
        max_len: args.max_len,
        warmup_ratio: args.warmup_ratio,
        seed: args.seed,
        save_every: args.save_every,
        resume: args.resume,
        frozen,
        device: args.device,
        media_folder: args.media_folder.clone(),
        video_frames: args.video_frames,
        eval: args.eval.clone(),
        eval_every: args.eval_every,
        ..SftRun::default()
    };
    static STOP: AtomicBool = AtomicBool::new(false);
    ctrlc::set_handler(|| STOP.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} ETA {eta}").context("the progress bar's template")?,
    );
    let start = Instant::now();
    let mut tokens_seen = 0usize;
    let mut first_step = None;
    // Both callbacks append to the log; the first write error is kept and reported after the run.
    let log = RefCell::new((log, None::<std::io::Error>));
    let write_line = |line: serde_json::Value| {
        let (file, error) = &mut *log.borrow_mut();
        if let Err(e) = writeln!(file, "{line}") {
            error.get_or_insert(e);
        }
    };
    let on_step = |m: &SftStepMetrics, total: usize| {
        tokens_seen += m.tokens;
        let first = *first_step.get_or_insert(m.step - 1);
        let elapsed = start.elapsed().as_secs_f64();
        let done = (m.step - first) as f64;
        let eta = elapsed / done * (total as f64 - m.step as f64);
        let speed = tokens_seen as f64 / elapsed;
        if bar.is_hidden() {
            eprintln!("step {}/{total}  loss {:.4}  {speed:.0} tokens/s  ETA {eta:.0}s", m.step, m.loss);
        } else {
            bar.set_length(total as u64);
            bar.set_position(m.step);
            bar.set_message(format!("loss {:.4}  {speed:.0} tokens/s", m.loss));
        }
        write_line(serde_json::json!({
            "step": m.step, "loss": m.loss, "tokens": m.tokens, "grad_norm": m.grad_norm, "lr": m.lr,
            "task_loss": m.task_loss,
        }));
    };
    let on_eval = |step: u64, e: &EvalMetrics| {
        bar.suspend(|| eprintln!("step {step}  eval loss {:.4}  accuracy {:.4}", e.loss, e.accuracy));
        write_line(serde_json::json!({
            "step": step, "eval/loss": e.loss, "eval/accuracy": e.accuracy, "eval/tokens": e.tokens,
            "eval/task_loss": e.task_loss, "eval/task_accuracy": e.task_accuracy,
        }));
    };
    let outcome = run.run_with_eval(&STOP, on_step, on_eval)?;
    bar.finish_and_clear();
    if let (_, Some(e)) = log.into_inner() {
        return Err(e).with_context(|| format!("writing {}", log_path.display()));
    }
    report_bad_records(&args.data, &outcome.data);
    if let (Some(path), Some(report)) = (&args.eval, &outcome.eval_data) {
        report_bad_records(path, report);
    }
    let how = if outcome.interrupted { "interrupted after" } else { "done:" };
    println!(
        "{how} {} steps of {}; checkpoint {}",
        outcome.steps_done,
        outcome.total_steps,
        outcome.checkpoint.display()
    );
    Ok(())
}

/// The records a load left out, each with its file and line (the first few), and their count.
fn report_bad_records(path: &Path, report: &DataReport) {
    const LISTED: usize = 20;
    if report.bad.is_empty() {
        return;
    }
    eprintln!("skipped {} bad record(s) of {}:", report.bad.len(), path.display());
    for bad in report.bad.iter().take(LISTED) {
        eprintln!("  {bad}");
    }
    if report.bad.len() > LISTED {
        eprintln!("  ... and {} more", report.bad.len() - LISTED);
    }
}
