//! `unireward train-judge`: supervised fine-tuning of a judge (a Qwen2 or a LLaVA-OneVision checkpoint, whose
//! records' images and videos are decoded and preprocessed with its image processor) on a conversation file, with
//! checkpoints in `--out` every `--save-every` steps and at the end, `--resume` from the latest, and one JSON line
//! of metrics per step appended to `--out/metrics.jsonl` (plus one per evaluation of `--eval`, keys `eval/...`, and
//! of `--eval-bench`, keys `eval/bench/...`), plotted at the end (and after Ctrl-C) into `--out/*.png`. Progress
//! (step, loss, tokens/s, ETA) is a bar on a terminal, one line per step otherwise. Ctrl-C stops after the current
//! step with a checkpoint (an evaluation under way ends unreported).

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use unireward::judge::bench::BenchSummary;
use unireward::train::sft::{SftEvaluation, SftRun, SftStepMetrics};

use crate::train_options::{report_bad_records, report_end, MediaArgs, TrainArgs, TrainProgress};

#[derive(clap::Args)]
pub struct Args {
    /// The checkpoint to train: config.json, safetensors weights, tokenizer.json and a chat template (and the
    /// preprocessor_config.json of a LLaVA-OneVision checkpoint).
    #[arg(long)]
    model: PathBuf,
    /// Conversations in LLaVA's JSONL format (`image` / `video` fields for a LLaVA-OneVision checkpoint).
    #[arg(long)]
    data: PathBuf,
    /// Where checkpoints (`checkpoint-<step>/`), `metrics.jsonl` and its plots (`loss.png`, `lr.png`, ...) go.
    #[arg(long)]
    out: PathBuf,
    /// A held-out conversation file: mean loss and token accuracy per task, every --eval-every steps and at the end.
    #[arg(long)]
    eval: Option<PathBuf>,
    /// A pairwise benchmark file (`unireward eval`'s --data; media relative to its folder, or --media-folder): the
    /// judge's one-pass accuracy with the model being trained, every --eval-every steps and at the end.
    #[arg(long)]
    eval_bench: Option<PathBuf>,
    /// Evaluate (--eval, --eval-bench) every this many steps (0: only at the end).
    #[arg(long, default_value_t = 0)]
    eval_every: usize,
    /// Train this many of a step's --grad-accum micro-batches at once, on the threads of the pool (each with its
    /// own copy of the gradients): for a model too small to keep the cores busy inside one micro-batch. The steps
    /// are the same to the bit as with 1.
    #[arg(long, default_value_t = 1)]
    data_parallel: usize,
    #[command(flatten)]
    media: MediaArgs,
    #[command(flatten)]
    train: TrainArgs,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let run = SftRun {
        model: args.model.clone(),
        data: args.data.clone(),
        out: args.out.clone(),
        train: args.train.options(),
        media_folder: args.media.media_folder.clone(),
        video_frames: args.media.video_frames,
        eval: args.eval.clone(),
        eval_bench: args.eval_bench.clone(),
        eval_every: args.eval_every,
        data_parallel: args.data_parallel,
    };
    static STOP: AtomicBool = AtomicBool::new(false);
    ctrlc::set_handler(|| STOP.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
    // Both callbacks report through the one progress bar and log.
    let progress = RefCell::new(TrainProgress::new(&args.out)?);
    let on_step = |m: &SftStepMetrics, total: usize| {
        progress.borrow_mut().step(m.step, total, m.tokens, &format!("loss {:.4}", m.loss), m.log_line());
    };
    let on_eval = |e: &SftEvaluation| {
        let mut message = format!("step {}", e.step);
        if let Some(m) = &e.held_out {
            message += &format!("  eval loss {:.4}  accuracy {:.4}", m.loss, m.accuracy);
        }
        if let Some(summary) = &e.bench {
            message += &bench_message(summary);
        }
        progress.borrow_mut().note(&message, e.log_line());
    };
    let outcome = run.run_with_eval(&STOP, on_step, on_eval)?;
    progress.into_inner().finish()?;
    if let (Some(path), Some(report)) = (&args.eval, &outcome.eval_data) {
        report_bad_records(path, &report.bad);
    }
    let o = &outcome;
    report_end(&o.data.bad, &args.data, o.interrupted, o.steps_done, o.total_steps, &o.checkpoint);
    Ok(())
}

/// The benchmark's accuracy per task (GenAI-Bench's tau, VL-RewardBench's accuracy) and position consistency.
fn bench_message(summary: &BenchSummary) -> String {
    let rate = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
    let mut message = String::from("  bench");
    for task in unireward::judge::Task::ALL {
        if summary.metrics.contains_key(&format!("{task}.pairs")) {
            message += &format!("  {task} {}", rate(summary.task_accuracy(task)));
        }
    }
    message + &format!("  position consistency {}", rate(summary.get("position_consistency")))
}
