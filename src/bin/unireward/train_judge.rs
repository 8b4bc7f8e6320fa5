//! `unireward train-judge`: supervised fine-tuning of a (text-only, Qwen2) judge on a conversation file, with
//! checkpoints in `--out` every `--save-every` steps and at the end, `--resume` from the latest, and one JSON line
//! of metrics per step appended to `--out/metrics.jsonl`, plotted at the end (and after Ctrl-C) into `--out/*.png`.
//! Progress (step, loss, tokens/s, ETA) is a bar on a terminal, one line per step otherwise. Ctrl-C stops after the
//! current step with a checkpoint.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use unireward::train::plots::write_metric_plots;
use unireward::train::sft::SftRun;
use unireward::Device;

#[derive(clap::Args)]
pub struct Args {
    /// The checkpoint to train: config.json, safetensors weights, tokenizer.json and a chat template.
    #[arg(long)]
    model: PathBuf,
    /// Conversations in LLaVA's JSONL format (text-only for now).
    #[arg(long)]
    data: PathBuf,
    /// Where checkpoints (`checkpoint-<step>/`), `metrics.jsonl` and its plots (`loss.png`, `lr.png`, ...) go.
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
    /// Parameters to leave untrained, by name fragment (repeatable; `vision` is the LLaVA tower's prefix).
    #[arg(long)]
    freeze: Vec<String>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", value_parser = crate::parse_device)]
    device: Device,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating --out {}", args.out.display()))?;
    let log_path = args.out.join("metrics.jsonl");
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let frozen =
        args.freeze.iter().map(|f| if f == "vision" { "vision_tower".to_string() } else { f.clone() }).collect();
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
    let mut log_error = None;
    let outcome = run.run(&STOP, |m, total| {
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
        let line = serde_json::json!({
            "step": m.step, "loss": m.loss, "tokens": m.tokens, "grad_norm": m.grad_norm, "lr": m.lr,
            "task_loss": m.task_loss,
        });
        if let Err(e) = writeln!(log, "{line}") {
            log_error.get_or_insert(e);
        }
    })?;
    bar.finish_and_clear();
    if let Some(e) = log_error {
        return Err(e).with_context(|| format!("writing {}", log_path.display()));
    }
    drop(log);
    // The checkpoint is safe whatever happens here: a plot that cannot be drawn is a warning, not a failed run.
    match write_metric_plots(&log_path, &args.out) {
        Ok(report) => crate::plot::print_report(&report, &log_path),
        Err(e) => eprintln!("warning: no plots of {}: {e}", log_path.display()),
    }
    let skipped = outcome.data.bad.len();
    if skipped > 0 {
        eprintln!("skipped {skipped} bad records of {}", args.data.display());
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
