//! `unireward dpo`: DPO of a Qwen2 or LLaVA-OneVision policy on a preference-pair file (`prompt`, `chosen`,
//! `rejected`, and the prompt's `image` / `video` for LLaVA),
//! against the reference log-probabilities of the initial policy (or `--ref DIR`) computed once and cached in
//! `--out/ref_logps.json` (or from a frozen copy with `--ref-on-the-fly`). Checkpoints, `--resume`, Ctrl-C and
//! `metrics.jsonl` (TRL's metric names) with its PNG plots as for `train-judge`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use unireward::ops::preference::{DpoConfig, TrlDpoOptions};
use unireward::train::dpo::DpoRun;

use crate::train_options::{report_end, MediaArgs, TrainArgs, TrainProgress};

#[derive(clap::Args)]
pub struct Args {
    /// The policy to train: config.json, safetensors weights, tokenizer.json and a chat template.
    #[arg(long)]
    policy: PathBuf,
    /// Preference pairs, one JSON object a line: `prompt`, `chosen`, `rejected` (and, for a LLaVA-OneVision policy,
    /// the prompt's `image` / `video` paths).
    #[arg(long)]
    pairs: PathBuf,
    /// Where checkpoints (`checkpoint-<step>/`), `ref_logps.json` and `metrics.jsonl` go.
    #[arg(long)]
    out: PathBuf,
    /// The reference checkpoint (default: the policy as it starts).
    #[arg(long = "ref")]
    reference: Option<PathBuf>,
    /// Run a frozen reference beside the policy instead of caching its log-probabilities up front.
    #[arg(long)]
    ref_on_the_fly: bool,
    /// DPO's β (IPO's τ).
    #[arg(long, default_value_t = 0.1, allow_negative_numbers = true)]
    beta: f32,
    /// TRL's loss type: sigmoid, hinge, ipo, robust, bco_pair, exo_pair, nca_pair, sppo_hard, apo_zero, apo_down,
    /// simpo, orpo, aot, aot_pair, discopop; several comma-separated for their weighted sum (e.g. sigmoid,bco_pair).
    #[arg(long, default_value = "sigmoid")]
    loss_type: String,
    /// One weight per `--loss-type`, comma-separated (TRL's loss_weights; default 1 each).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    loss_weights: Option<Vec<f32>>,
    /// RPO: adds α times the NLL of the chosen completions to the loss.
    #[arg(long, allow_negative_numbers = true)]
    rpo_alpha: Option<f32>,
    /// LD-DPO: weight α in [0, 1] of each completion's tokens past the shorter completion's length of its pair
    /// (policy and reference alike).
    #[arg(long, allow_negative_numbers = true)]
    ld_alpha: Option<f32>,
    /// WPO: weight each pair's loss by the policy's own (detached) probability of both completions, normalised by
    /// length (TRL's use_weighting).
    #[arg(long)]
    use_weighting: bool,
    /// TRL's f_divergence_type: reverse_kl, js_divergence, alpha_divergence, forward_kl.
    #[arg(long, default_value = "reverse_kl")]
    f_divergence: String,
    /// α of `--f-divergence alpha_divergence` (nonzero).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    f_alpha_divergence_coef: f32,
    /// SimPO's target margin γ.
    #[arg(long, default_value_t = 0.5, allow_negative_numbers = true)]
    simpo_gamma: f32,
    /// DiscoPOP's τ > 0.
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
    discopop_tau: f32,
    /// Label smoothing ε in [0, 0.5) (cDPO, robust, EXO).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    label_smoothing: f32,
    /// Leave the reference out of the loss (no reference pass; its log-probabilities taken as 0).
    #[arg(long)]
    reference_free: bool,
    #[command(flatten)]
    media: MediaArgs,
    #[command(flatten)]
    train: TrainArgs,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let options = TrlDpoOptions {
        loss_type: args.loss_type.clone(),
        loss_weights: args.loss_weights.clone(),
        beta: args.beta,
        label_smoothing: args.label_smoothing,
        reference_free: args.reference_free,
        rpo_alpha: args.rpo_alpha,
        ld_alpha: args.ld_alpha,
        use_weighting: args.use_weighting,
        f_divergence: args.f_divergence.clone(),
        f_alpha_divergence_coef: args.f_alpha_divergence_coef,
        simpo_gamma: args.simpo_gamma,
        discopop_tau: args.discopop_tau,
    };
    let loss = DpoConfig::from_trl(&options, |key| format!("`--{}`", key.replace('_', "-")))?;
    let run = DpoRun {
        policy: args.policy.clone(),
        pairs: args.pairs.clone(),
        out: args.out.clone(),
        reference: args.reference.clone(),
        reference_on_the_fly: args.ref_on_the_fly,
        media_folder: args.media.media_folder.clone(),
        video_frames: args.media.video_frames,
        loss,
        train: args.train.options(),
    };
    static STOP: AtomicBool = AtomicBool::new(false);
    ctrlc::set_handler(|| STOP.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
    let mut progress = TrainProgress::new(&args.out)?;
    let outcome = run.run(&STOP, |s, total| {
        let message = format!("loss {:.4}  reward acc {:.2}", s.loss, s.metrics.rewards_accuracies);
        progress.step(s.step, total, s.tokens, &message, s.log_line());
    })?;
    progress.finish()?;
    let o = &outcome;
    eprintln!("reference log-probabilities: {:?}", o.reference);
    report_end(&o.data.bad, &args.pairs, o.interrupted, o.steps_done, o.total_steps, &o.checkpoint);
    Ok(())
}
