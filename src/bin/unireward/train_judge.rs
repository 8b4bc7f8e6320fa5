//! `unireward train-judge`: supervised fine-tuning of a (text-only, Qwen2) judge on a conversation file, with
//! checkpoints in `--out` every `--save-every` steps and at the end, `--resume` from the latest, and one JSON line
//! of metrics per step appended to `--out/metrics.jsonl`, plotted at the end (and after Ctrl-C) into `--out/*.png`.
//! Progress (step, loss, tokens/s, ETA) is a bar on a terminal, one line per step otherwise. Ctrl-C stops after the
//! current step with a checkpoint.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use unireward::train::sft::SftRun;

use crate::train_options::{report_end, TrainArgs, TrainProgress};

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
    #[command(flatten)]
    train: TrainArgs,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let run = SftRun {
        model: args.model.clone(),
        data: args.data.clone(),
        out: args.out.clone(),
        train: args.train.options(),
    };
    static STOP: AtomicBool = AtomicBool::new(false);
    ctrlc::set_handler(|| STOP.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
    let mut progress = TrainProgress::new(&args.out)?;
    let outcome = run.run(&STOP, |m, total| {
        let line = serde_json::json!({
            "step": m.step, "loss": m.loss, "tokens": m.tokens, "grad_norm": m.grad_norm, "lr": m.lr,
            "task_loss": m.task_loss,
        });
        progress.step(m.step, total, m.tokens, &format!("loss {:.4}", m.loss), line);
    })?;
    progress.finish()?;
    let o = &outcome;
    report_end(o.data.bad.len(), &args.data, o.interrupted, o.steps_done, o.total_steps, &o.checkpoint);
    Ok(())
}
