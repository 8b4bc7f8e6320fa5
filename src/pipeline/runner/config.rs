//! The pipeline's config file (TOML): what each stage runs on and how. Unknown keys are refused (a misspelt option
//! would otherwise be silently ignored); paths are relative to the config file's folder; [`super::Plan::new`]
//! names every bad value by its key before any stage runs. The README's "Pipeline" section documents each key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::judge::GenerationConfig;
use crate::model::files::read_text;
use crate::ops::preference::{DpoConfig, TrlDpoOptions};
use crate::pipeline::filter::Strategy;
use crate::pipeline::sample::SampleOptions;
use crate::runtime::{DType, Device};
use crate::train::data::{BadRecordPolicy, DEFAULT_VIDEO_FRAMES};
use crate::train::optim::ScheduleKind;
use crate::train::run::{frozen_fragments, TrainOptions};
use crate::{Error, Result};

/// The largest config file read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The whole pipeline: where its outputs go, the models and data of each stage, and the stages' options.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Every stage writes under `out/<stage>/`.
    pub out: PathBuf,
    /// `cpu`, `cuda` or `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
    /// The compute dtype of the sampler, the filter's judge and the evaluations: `f32`, `bf16` or `f16` (the
    /// trainers train in f32).
    #[serde(default = "default_dtype")]
    pub dtype: String,
    pub judge: JudgeConfig,
    pub policy: PolicyConfig,
    /// `[sample]`: the sampler's options, `unireward sample`'s defaults for keys left out.
    #[serde(default)]
    pub sample: SampleOptions,
    #[serde(default)]
    pub filter: FilterConfig,
    #[serde(default)]
    pub dpo: DpoSection,
    /// Only read by an online run (`--online`).
    #[serde(default)]
    pub online: Option<OnlineConfig>,
}

fn default_device() -> String {
    "cpu".into()
}

fn default_dtype() -> String {
    "f32".into()
}

/// `[judge]`: the judge of the filter, optionally fine-tuned first and evaluated on a benchmark file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeConfig {
    /// The judge checkpoint (a UnifiedReward-style Qwen2 or LLaVA-OneVision checkpoint).
    pub model: PathBuf,
    /// Conversations to fine-tune the judge on first (`unireward train-judge`'s `--data`); none: the judge as is.
    pub train: Option<PathBuf>,
    /// `[judge.training]`: the options of that fine-tuning.
    pub training: Option<TrainConfig>,
    /// A pairwise benchmark file (`unireward eval`'s `--data`); none: no judge-eval stage.
    pub eval: Option<PathBuf>,
    /// Judgments scored per model batch in the evaluation and the filter.
    #[serde(default = "default_judge_batch")]
    pub batch: usize,
    /// Frames sampled from each video in training (judging samples as its templates say).
    #[serde(default = "default_video_frames")]
    pub video_frames: usize,
}

fn default_judge_batch() -> usize {
    32
}

fn default_video_frames() -> usize {
    DEFAULT_VIDEO_FRAMES
}

/// `[policy]`: the policy aligned, optionally fine-tuned first, its sampler prompts and held-out questions.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    pub model: PathBuf,
    /// Conversations to fine-tune the policy on first; none: the policy as is.
    pub sft: Option<PathBuf>,
    /// `[policy.training]`: the options of that fine-tuning.
    pub training: Option<TrainConfig>,
    /// The sampler's prompts (`unireward sample`'s `--prompts`); media paths relative to this file's folder.
    pub prompts: PathBuf,
    /// Held-out questions with known answers; none: no policy evaluation stages.
    pub held_out: Option<PathBuf>,
    /// The most tokens a held-out answer generates.
    #[serde(default = "default_eval_tokens")]
    pub eval_max_new_tokens: usize,
    /// Frames sampled from each video (training and evaluation).
    #[serde(default = "default_video_frames")]
    pub video_frames: usize,
}

fn default_eval_tokens() -> usize {
    32
}

/// `[filter]`: the strategy, and how the judge answers (one-pass verdicts, batched by `[judge] batch`, or reasoned
/// judgments, as `unireward filter --reasoned`) — in the filter and in the judge-eval stage alike (`unireward eval
/// --reasoned`), since a judge trained to reason before its verdict is only measured that way.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterConfig {
    /// pair-rank+point-sift, pair-rank, point-sift, round-robin or bradley-terry.
    pub strategy: String,
    /// Generate each judgment's answer (greedy) and parse it instead of reading one-pass verdicts.
    pub reasoned: bool,
    /// The most tokens a reasoned judgment generates.
    pub max_new_tokens: usize,
}

impl Default for FilterConfig {
    fn default() -> Self {
        FilterConfig { strategy: Strategy::PairRankPointSift.name().into(), reasoned: false, max_new_tokens: 512 }
    }
}

impl FilterConfig {
    /// The reasoned judgments' generation, `None` for one-pass verdicts.
    pub fn reasoned_generation(&self) -> Result<Option<GenerationConfig>> {
        if !self.reasoned {
            return Ok(None);
        }
        let generation = GenerationConfig { max_new_tokens: self.max_new_tokens, ..GenerationConfig::default() };
        generation.validate().map_err(|e| Error::InvalidArgument(format!("`[filter] max_new_tokens`: {e}")))?;
        Ok(Some(generation))
    }
}

/// `[dpo]`: the loss (as `unireward dpo`'s flags) and `[dpo.training]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DpoSection {
    pub beta: f32,
    /// One TRL loss type or several, comma-separated (weighted by `loss_weights`).
    pub loss_type: String,
    pub loss_weights: Option<Vec<f32>>,
    pub label_smoothing: f32,
    pub reference_free: bool,
    pub rpo_alpha: Option<f32>,
    /// LD-DPO's α in [0, 1] (`unireward dpo --ld-alpha`).
    pub ld_alpha: Option<f32>,
    /// WPO (`unireward dpo --use-weighting`).
    pub use_weighting: bool,
    pub f_divergence: String,
    pub f_alpha_divergence_coef: f32,
    pub simpo_gamma: f32,
    pub discopop_tau: f32,
    pub training: TrainConfig,
}

impl Default for DpoSection {
    fn default() -> Self {
        let t = TrlDpoOptions::default();
        DpoSection {
            beta: t.beta,
            loss_type: t.loss_type,
            loss_weights: t.loss_weights,
            label_smoothing: t.label_smoothing,
            reference_free: t.reference_free,
            rpo_alpha: t.rpo_alpha,
            ld_alpha: t.ld_alpha,
            use_weighting: t.use_weighting,
            f_divergence: t.f_divergence,
            f_alpha_divergence_coef: t.f_alpha_divergence_coef,
            simpo_gamma: t.simpo_gamma,
            discopop_tau: t.discopop_tau,
            training: TrainConfig::default(),
        }
    }
}

/// `[online]`: rounds of sample → filter → DPO → evaluation from the current policy.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OnlineConfig {
    pub rounds: usize,
    /// Each round's prompts: the next this many of the prompts file, cycling.
    pub prompts_per_round: usize,
    /// Epochs of DPO over a round's pairs (default `[dpo.training] epochs`).
    pub dpo_epochs: Option<usize>,
    /// Optimizer steps of DPO per round, in place of `dpo_epochs` (default `[dpo.training] max_steps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpo_max_steps: Option<usize>,
    /// The reference of a round's DPO: the policy the round starts from (true) or the initial policy (false).
    #[serde(default)]
    pub refresh_reference: bool,
}

/// A trainer's options (`[judge.training]`, `[policy.training]`, `[dpo.training]`), with the training commands'
/// defaults and flag names (without the dashes).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub epochs: usize,
    /// `--max-steps`: optimizer steps in place of `epochs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<usize>,
    pub lr: f64,
    pub weight_decay: f64,
    /// 0: no clipping.
    pub max_grad_norm: f64,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub max_len: usize,
    pub warmup_ratio: f64,
    /// constant, linear or cosine.
    pub schedule: String,
    pub seed: u64,
    /// Also the resume points of a killed run (0: a killed training restarts from the beginning).
    pub save_every: usize,
    pub freeze: Vec<String>,
    pub refuse_bad_records: bool,
    /// false: `--no-group-by-length`.
    pub group_by_length: bool,
    /// `--task-weight`: a table of task = weight.
    pub task_weights: BTreeMap<String, f64>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        let o = TrainOptions::default();
        TrainConfig {
            epochs: o.epochs,
            max_steps: o.max_steps,
            lr: o.lr,
            weight_decay: o.weight_decay,
            max_grad_norm: o.max_grad_norm.unwrap_or(0.0),
            batch_size: o.batch_size,
            grad_accum: o.grad_accum,
            max_len: o.max_len,
            warmup_ratio: o.warmup_ratio,
            schedule: "cosine".into(),
            seed: o.seed,
            save_every: o.save_every,
            freeze: Vec::new(),
            refuse_bad_records: false,
            group_by_length: o.group_by_length,
            task_weights: BTreeMap::new(),
        }
    }
}

impl TrainConfig {
    /// The trainer's options on `device` (a schedule of no known name is an error naming `key`, the section).
    pub fn options(&self, key: &str, device: Device) -> Result<TrainOptions> {
        let schedule = ScheduleKind::from_name(&self.schedule)
            .map_err(|e| Error::InvalidArgument(format!("`[{key}] schedule`: {e}")))?;
        let options = TrainOptions {
            epochs: self.epochs,
            max_steps: self.max_steps,
            lr: self.lr,
            weight_decay: self.weight_decay,
            max_grad_norm: (self.max_grad_norm > 0.0).then_some(self.max_grad_norm),
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            max_len: self.max_len,
            warmup_ratio: self.warmup_ratio,
            schedule,
            seed: self.seed,
            save_every: self.save_every,
            resume: false,
            frozen: frozen_fragments(&self.freeze),
            bad_records: if self.refuse_bad_records { BadRecordPolicy::Refuse } else { BadRecordPolicy::Skip },
            group_by_length: self.group_by_length,
            task_weights: self.task_weights.iter().map(|(task, &weight)| (task.clone(), weight)).collect(),
            device,
        };
        // The trainers' checks name the command-line flag (`--lr`); here the key is `[section] lr`.
        options.check().map_err(|e| rename_flags(e, key))?;
        Ok(options)
    }
}

/// An error naming `--some-flag` renamed to the config key `[section] some_flag`.
fn rename_flags(e: Error, section: &str) -> Error {
    let message = match e {
        Error::InvalidArgument(m) => m,
        other => other.to_string(),
    };
    let mut out = String::new();
    let mut rest = message.as_str();
    while let Some(at) = rest.find("--") {
        out.push_str(&rest[..at]);
        let flag: String = rest[at + 2..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
        out.push_str(&format!("[{section}] {}", flag.replace('-', "_")));
        rest = &rest[at + 2 + flag.len()..];
    }
    out.push_str(rest);
    Error::InvalidArgument(out)
}

impl PipelineConfig {
    /// Reads `path`, its relative paths resolved against its folder. The values are checked by [`super::Plan::new`].
    pub fn from_file(path: &Path) -> Result<PipelineConfig> {
        let text = read_text(path, MAX_CONFIG_BYTES)?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml(&text, base).map_err(|e| match e {
            Error::InvalidArgument(m) => Error::InvalidArgument(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parses a config, its relative paths resolved against `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<PipelineConfig> {
        let mut config: PipelineConfig = toml::from_str(text).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut config.out);
        resolve(&mut config.judge.model);
        resolve(&mut config.policy.model);
        resolve(&mut config.policy.prompts);
        let optional =
            [&mut config.judge.train, &mut config.judge.eval, &mut config.policy.sft, &mut config.policy.held_out];
        optional.into_iter().flatten().for_each(resolve);
        Ok(config)
    }

    pub fn device(&self) -> Result<Device> {
        Device::parse(&self.device).map_err(|e| Error::InvalidArgument(format!("`device`: {e}")))
    }

    pub fn dtype(&self) -> Result<DType> {
        DType::parse_float(&self.dtype).map_err(|e| Error::InvalidArgument(format!("`dtype`: {e}")))
    }

    pub fn strategy(&self) -> Result<Strategy> {
        self.filter.strategy.parse().map_err(|e| Error::InvalidArgument(format!("`[filter] strategy`: {e}")))
    }

    /// `[dpo]`'s loss, every key checked.
    pub fn dpo_loss(&self) -> Result<DpoConfig> {
        let d = &self.dpo;
        let options = TrlDpoOptions {
            loss_type: d.loss_type.clone(),
            loss_weights: d.loss_weights.clone(),
            beta: d.beta,
            label_smoothing: d.label_smoothing,
            reference_free: d.reference_free,
            rpo_alpha: d.rpo_alpha,
            ld_alpha: d.ld_alpha,
            use_weighting: d.use_weighting,
            f_divergence: d.f_divergence.clone(),
            f_alpha_divergence_coef: d.f_alpha_divergence_coef,
            simpo_gamma: d.simpo_gamma,
            discopop_tau: d.discopop_tau,
        };
        DpoConfig::from_trl(&options, |key| format!("`[dpo] {key}`"))
    }

    /// The sampler's options, checked (`[sample] k` ...).
    pub fn sample_options(&self) -> Result<SampleOptions> {
        self.sample.validate().map_err(|e| rename_flags(e, "sample"))?;
        Ok(self.sample.clone())
    }
}
