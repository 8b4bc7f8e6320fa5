//! `unireward train-reward`: a scalar reward model (`score.weight` on a Qwen2 decoder, loaded by transformers as
//! `Qwen2ForSequenceClassification`, or on a LLaVA-OneVision model, whose records carry their prompts' `image` /
//! `video`) trained with Bradley–Terry on a pair file (`--pairs`) or with a K-wise loss on a ranked-list file
//! (`--rankings`), with a held-out file (`--eval`) evaluated every `--eval-every` steps and at the
//! end (logged as `eval/loss`, `eval/accuracy`, ...). Checkpoints, `--resume`, Ctrl-C and `metrics.jsonl` (TRL's
//! RewardTrainer names) with its PNG plots as for `train-judge`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use unireward::train::reward::{RewardData, RewardLoss, RewardMetrics, RewardRun};

use crate::train_options::{report_bad_records, report_end, MediaArgs, TrainArgs, TrainProgress};

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("data").required(true).args(["pairs", "rankings"])))]
pub struct Args {
    /// The checkpoint to train, Qwen2 or LLaVA-OneVision: config.json, safetensors weights (with `score.weight` to
    /// continue a reward model), tokenizer.json and a chat template (and preprocessor_config.json for LLaVA).
    #[arg(long)]
    model: PathBuf,
    /// Preference pairs, one JSON object a line: `prompt`, `chosen`, `rejected`, optional `margin` (and the
    /// prompt's `image` / `video` for LLaVA).
    #[arg(long)]
    pairs: Option<PathBuf>,
    /// Ranked lists, one JSON object a line: `prompt`, `responses` (best first, as many in every record), and for
    /// LLaVA the prompt's `image` / `video`.
    #[arg(long)]
    rankings: Option<PathBuf>,
    /// Where checkpoints (`checkpoint-<step>/`), `metrics.jsonl` and its plots go.
    #[arg(long)]
    out: PathBuf,
    /// bradley-terry (pairs), kwise (Plackett–Luce) or kwise-all-pairs.
    #[arg(long, default_value = "bradley-terry")]
    loss: String,
    /// TRL's `center_rewards_coefficient` (Bradley–Terry): adds c·mean((r_chosen + r_rejected)²).
    #[arg(long, allow_negative_numbers = true)]
    center_rewards_coefficient: Option<f32>,
    /// A held-out file in the training file's format.
    #[arg(long)]
    eval: Option<PathBuf>,
    /// Evaluate every this many steps (0: only at the end).
    #[arg(long, default_value_t = 0)]
    eval_every: usize,
    #[command(flatten)]
    media: MediaArgs,
    #[command(flatten)]
    train: TrainArgs,
}

/// TRL's RewardTrainer names, under `prefix`.
fn logged(prefix: &str, m: &RewardMetrics) -> [(String, f64); 5] {
    [
        (format!("{prefix}loss"), m.loss),
        (format!("{prefix}accuracy"), m.accuracy),
        (format!("{prefix}rewards/chosen"), m.rewards_chosen),
        (format!("{prefix}rewards/rejected"), m.rewards_rejected),
        (format!("{prefix}margin"), m.margin),
    ]
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let loss = RewardLoss::from_name(&args.loss, args.center_rewards_coefficient).context("--loss")?;
    let data = match (&args.pairs, &args.rankings) {
        (Some(pairs), None) => RewardData::Pairs(pairs.clone()),
        (None, Some(rankings)) => RewardData::Rankings(rankings.clone()),
        _ => anyhow::bail!("give one of --pairs and --rankings"),
    };
    let run = RewardRun {
        model: args.model.clone(),
        data,
        out: args.out.clone(),
        eval: args.eval.clone(),
        eval_every: args.eval_every,
        loss,
        train: args.train.options(),
        media_folder: args.media.media_folder.clone(),
        video_frames: args.media.video_frames,
    };
    static STOP: AtomicBool = AtomicBool::new(false);
    ctrlc::set_handler(|| STOP.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
    let mut progress = TrainProgress::new(&args.out)?;
    let outcome = run.run(&STOP, |s, total| {
        let mut line = serde_json::json!({
            "step": s.step, "grad_norm": s.grad_norm, "lr": s.lr, "tokens": s.tokens, "groups": s.groups,
        });
        let fields = line.as_object_mut().expect("a JSON object");
        let eval = s.eval.as_ref().map(|m| logged("eval/", m));
        for (name, value) in logged("", &s.metrics).into_iter().chain(eval.into_iter().flatten()) {
            fields.insert(name, value.into());
        }
        let mut message = format!("loss {:.4}  acc {:.2}", s.metrics.loss, s.metrics.accuracy);
        if let Some(m) = &s.eval {
            message += &format!("  eval loss {:.4}  eval acc {:.2}", m.loss, m.accuracy);
        }
        progress.step(s.step, total, s.tokens, &message, line);
    })?;
    progress.finish()?;
    let o = &outcome;
    if let (Some(path), Some(report)) = (&run.eval, &o.eval_data) {
        report_bad_records(path, &report.bad);
    }
    report_end(&o.data.bad, run.data.path(), o.interrupted, o.steps_done, o.total_steps, &o.checkpoint);
    Ok(())
}
