//! The demo's sizes and options, and the pipeline config it writes.

use std::path::Path;

use crate::judge::Task;
use crate::pipeline::runner::{DpoSection, FilterConfig, JudgeConfig, PipelineConfig, PolicyConfig, TrainConfig};
use crate::pipeline::sample::SampleOptions;
use crate::pipeline::world::{DemoFiles, DemoSizes, TinyLlava, FRAMES};
use crate::{Error, Result};

/// Everything the demo runs with.
#[derive(Clone, Debug)]
pub struct DemoConfig {
    pub sizes: DemoSizes,
    pub model: TinyLlava,
    /// The world's and the models' seed.
    pub seed: u64,
    /// The base model's pretraining on described answers, before the judge and the policy are made from it.
    pub base_training: TrainConfig,
    /// The judge's fine-tuning (jointly on the four tasks, and each single-task judge alike).
    pub judge_training: TrainConfig,
    /// The policy's brief supervised fine-tuning.
    pub policy_training: TrainConfig,
    pub sample: SampleOptions,
    /// How the judge answers in the filter and in every evaluation of a judge.
    pub filter: FilterConfig,
    pub dpo: DpoSection,
}

fn training(epochs: usize, lr: f64, warmup_ratio: f64) -> TrainConfig {
    TrainConfig { epochs, lr, batch_size: 8, warmup_ratio, ..TrainConfig::default() }
}

impl DemoConfig {
    /// The demo `unireward demo` runs: sizes at which a judge trained for a few minutes on two cores judges image
    /// questions well above chance (BENCHMARKS.md has its figures).
    pub fn full(seed: u64) -> DemoConfig {
        DemoConfig {
            sizes: DemoSizes {
                base_answers: 4000,
                judge_train: 1000,
                judge_held_out: 100,
                // The policy fine-tuned briefly, to the answers' form: fine-tuned on 4,096 true answers it had
                // nothing left for a hundred pairs to teach, and DPO lowered it (BENCHMARKS.md). It learns the rest
                // from the judge's pairs on many prompts.
                policy_sft: 256,
                prompts: 2048,
                policy_held_out: 512,
            },
            model: TinyLlava::default(),
            seed,
            // 40 epochs of the described answers, 20,000 steps: the base's reading forms between 10,000 and 20,000
            // (BENCHMARKS.md), and the judge and the policy start from it.
            base_training: training(40, 3e-3, 0.05),
            // 16 epochs of the judgments, the generation tasks' at a quarter (the understanding verdicts need the
            // steps, and the demo's policy answers questions): 20,000 steps of 8.
            judge_training: TrainConfig {
                save_every: 2500,
                task_weights: [Task::ImageGeneration, Task::VideoGeneration]
                    .into_iter()
                    .map(|t| (t.name().to_string(), 0.25))
                    .collect(),
                ..training(16, 3e-3, 0.03)
            },
            // 128 steps.
            policy_training: training(4, 1e-3, 0.05),
            sample: SampleOptions { k: 4, temperature: 0.7, top_p: 0.95, seed, max_new_tokens: 4, frames: FRAMES },
            // Reasoned: the judge writes what it sees and the true answer before its verdict (the world's
            // rationale, a dozen tokens), and is read after them.
            filter: FilterConfig { reasoned: true, max_new_tokens: 24, ..FilterConfig::default() },
            // With an SFT term on the chosen answers (RPO, alpha 1) so that the answers keep their form (without
            // it DPO taught a policy that did not read the pairs' answer frequencies), at 3e-4: at 1e-3 DPO undid
            // the reading of a policy fine-tuned on 4,096 answers (BENCHMARKS.md).
            dpo: DpoSection { training: training(4, 3e-4, 0.05), rpo_alpha: Some(1.0), ..DpoSection::default() },
        }
    }

    /// Every stage on a handful of examples, one epoch each: the plumbing in seconds (what the tests run), not
    /// a judge that has learned anything.
    pub fn smoke(seed: u64) -> DemoConfig {
        let full = DemoConfig::full(seed);
        DemoConfig {
            sizes: DemoSizes {
                base_answers: 3,
                judge_train: 3,
                judge_held_out: 2,
                policy_sft: 4,
                prompts: 4,
                policy_held_out: 4,
            },
            base_training: training(1, 3e-3, 0.0),
            judge_training: training(1, 3e-3, 0.0),
            policy_training: training(1, 3e-3, 0.0),
            sample: SampleOptions { k: 2, ..full.sample },
            dpo: DpoSection { training: training(1, 1e-3, 0.0), ..full.dpo },
            ..full
        }
    }

    /// The pipeline over the data set `files` with the judge and the policy made from the checkpoint `model` (the
    /// pretrained base), its stages' outputs under `out`, every path written relative to `folder` when inside it
    /// (the folder of the config file: a config that moves with its folder).
    pub fn pipeline_config(&self, files: &DemoFiles, model: &Path, out: &Path, folder: &Path) -> PipelineConfig {
        let rel = |p: &Path| p.strip_prefix(folder).unwrap_or(p).to_path_buf();
        PipelineConfig {
            out: rel(out),
            device: "cpu".into(),
            dtype: "f32".into(),
            judge: JudgeConfig {
                model: rel(model),
                train: Some(rel(&files.judge_train)),
                training: Some(self.judge_training.clone()),
                eval: Some(rel(&files.judge_held_out)),
                batch: 32,
                video_frames: FRAMES,
            },
            policy: PolicyConfig {
                model: rel(model),
                sft: Some(rel(&files.policy_sft)),
                training: Some(self.policy_training.clone()),
                prompts: rel(&files.prompts),
                held_out: Some(rel(&files.policy_held_out)),
                eval_max_new_tokens: self.sample.max_new_tokens,
                video_frames: FRAMES,
            },
            sample: self.sample.clone(),
            filter: self.filter.clone(),
            dpo: self.dpo.clone(),
            online: None,
        }
    }
}

/// Writes `config` as TOML to `path`: the file `unireward pipeline --config` reruns the demo's pipeline from.
pub fn write_pipeline_config(config: &PipelineConfig, path: &Path) -> Result<()> {
    let text = toml::to_string_pretty(config)
        .map_err(|e| Error::InvalidArgument(format!("the demo's pipeline config as TOML: {e}")))?;
    std::fs::write(path, text).map_err(|e| Error::InvalidArgument(format!("writing {}: {e}", path.display())))
}
