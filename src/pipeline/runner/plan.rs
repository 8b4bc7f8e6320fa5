//! The config checked and turned into what the stages run: every value parsed, every input file read, and the
//! judge asked whether it can judge each prompt's task — all before any stage writes anything. The problems found
//! are reported together, each named by its config key.

use std::path::{Path, PathBuf};

use super::config::{OnlineConfig, PipelineConfig, TrainConfig};
use crate::judge::bench::{read_bench_file, BenchPair};
use crate::judge::{Candidate, GenerationConfig, Judge};
use crate::ops::preference::DpoConfig;
use crate::pipeline::filter::{read_prompts, CandidateFile, JudgeJudgments, Judgments, Strategy};
use crate::pipeline::policy_eval::{read_policy_questions, PolicyQuestion};
use crate::pipeline::sample::SampleOptions;
use crate::runtime::{DType, Device};
use crate::train::run::TrainOptions;
use crate::{Error, Result};

/// A training stage's data and options.
#[derive(Clone, Debug)]
pub struct TrainPlan {
    pub data: PathBuf,
    pub options: TrainOptions,
    /// The config's table, recorded as the stage's options.
    pub config: TrainConfig,
}

/// The online rounds' settings, checked.
#[derive(Clone, Debug)]
pub struct OnlinePlan {
    pub rounds: usize,
    pub prompts_per_round: usize,
    pub dpo: TrainOptions,
    pub refresh_reference: bool,
}

/// What a run does, checked.
#[derive(Debug)]
pub struct Plan {
    pub config: PipelineConfig,
    pub device: Device,
    pub dtype: DType,
    pub judge_train: Option<TrainPlan>,
    pub policy_sft: Option<TrainPlan>,
    pub sample: SampleOptions,
    pub strategy: Strategy,
    /// `[filter] reasoned`: the reasoned judgments' generation (`None`: one-pass verdicts).
    pub reasoned: Option<GenerationConfig>,
    pub dpo_loss: DpoConfig,
    pub dpo_train: TrainOptions,
    /// The sampler's prompts (read and checked).
    pub prompts: CandidateFile,
    /// The folder the prompts' media paths are relative to (and so the candidates' and the pairs').
    pub media_folder: PathBuf,
    pub online: Option<OnlinePlan>,
    /// `[judge] eval`'s pairs.
    pub bench: Option<Vec<BenchPair>>,
    /// `[policy] held_out`'s questions.
    pub held_out: Option<Vec<PolicyQuestion>>,
}

/// Collects the problems of a config, each a line naming its key.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn take<T>(&mut self, result: Result<T>) -> Option<T> {
        result.map_err(|e| self.0.push(message(e))).ok()
    }

    fn push(&mut self, problem: String) {
        self.0.push(problem);
    }
}

/// An error's message without its kind.
fn message(e: Error) -> String {
    match e {
        Error::InvalidArgument(m) => m,
        other => other.to_string(),
    }
}

/// `e` as a problem of config key `key`.
fn keyed(key: &str, e: Error) -> Error {
    Error::InvalidArgument(format!("`{key}`: {}", message(e)))
}

/// The folder a file's media paths are relative to: its own.
fn folder_of(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

/// `Ok` when `path` is a file (`what` names its key).
fn file(key: &str, path: &Path) -> Result<()> {
    if path.is_file() {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!("`{key}`: {} is not a file", path.display())))
    }
}

/// `Ok` when `path` is a checkpoint folder.
fn checkpoint(key: &str, path: &Path) -> Result<()> {
    if path.join("config.json").is_file() {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!("`{key}`: {} is not a checkpoint folder (no config.json)", path.display())))
    }
}

/// A training stage's plan from `[section] data_key` (its data file) and `[section.training]` (its options): the
/// file given (the options default), or neither.
fn train_plan(
    problems: &mut Problems,
    (section, data_key): (&str, &str),
    data: &Option<PathBuf>,
    config: &Option<TrainConfig>,
    device: Device,
) -> Option<TrainPlan> {
    match (data, config) {
        (None, None) => None,
        (None, Some(_)) => {
            problems.push(format!("`[{section}.training]` is given but `[{section}] {data_key}` is not"));
            None
        }
        (Some(data), config) => {
            let config = config.clone().unwrap_or_default();
            problems.take(file(&format!("[{section}] {data_key}"), data));
            let options = problems.take(config.options(&format!("{section}.training"), device))?;
            Some(TrainPlan { data: data.clone(), options, config })
        }
    }
}

impl Plan {
    /// Checks `config` (and `[online]` when `online`) and reads its inputs; every problem found is in the error.
    pub fn new(config: PipelineConfig, online: bool) -> Result<Plan> {
        let mut problems = Problems::default();
        let device = problems.take(config.device());
        let dtype = problems.take(config.dtype());
        let strategy = problems.take(config.strategy());
        let reasoned = problems.take(config.filter.reasoned_generation());
        let dpo_loss = problems.take(config.dpo_loss());
        let sample = problems.take(config.sample_options());
        let train_device = device.unwrap_or_default();
        let dpo_train = problems.take(config.dpo.training.options("dpo.training", train_device));
        let judge_train =
            train_plan(&mut problems, ("judge", "train"), &config.judge.train, &config.judge.training, train_device);
        let policy_sft =
            train_plan(&mut problems, ("policy", "sft"), &config.policy.sft, &config.policy.training, train_device);
        for (key, value) in [
            ("[judge] batch", config.judge.batch),
            ("[judge] video_frames", config.judge.video_frames),
            ("[policy] video_frames", config.policy.video_frames),
            ("[policy] eval_max_new_tokens", config.policy.eval_max_new_tokens),
        ] {
            if value == 0 {
                problems.push(format!("`{key}` must be at least 1"));
            }
        }
        problems.take(checkpoint("[judge] model", &config.judge.model));
        problems.take(checkpoint("[policy] model", &config.policy.model));
        let bench = config.judge.eval.as_ref().and_then(|path| {
            problems.take(
                file("[judge] eval", path)
                    .and_then(|()| read_bench_file(path, folder_of(path)).map_err(|e| keyed("[judge] eval", e))),
            )
        });
        let held_out =
            config.policy.held_out.as_ref().and_then(|path| {
                problems.take(file("[policy] held_out", path).and_then(|()| {
                    read_policy_questions(path, folder_of(path)).map_err(|e| keyed("[policy] held_out", e))
                }))
            });
        let online_plan = match (online, &config.online) {
            (false, _) => None,
            (true, None) => {
                problems.push("`--online` needs an `[online]` section".into());
                None
            }
            (true, Some(o)) => dpo_train.as_ref().and_then(|t| problems.take(online_plan(o, t))),
        };
        let media_folder = folder_of(&config.policy.prompts).to_path_buf();
        let prompts = problems.take(read_checked_prompts(&config.policy.prompts, &media_folder));
        if let (Some(online), Some(prompts)) = (&online_plan, &prompts) {
            if online.prompts_per_round > prompts.prompts.len() {
                problems.push(format!(
                    "`[online] prompts_per_round` is {}, but `[policy] prompts` holds only {} prompts",
                    online.prompts_per_round,
                    prompts.prompts.len()
                ));
            }
        }
        if let (Some(prompts), Some(strategy), Some(dtype), Some(device)) = (&prompts, strategy, dtype, device) {
            if config.judge.model.join("config.json").is_file() {
                problems.take(check_judge(&config.judge.model, prompts, strategy, dtype, device));
            }
        }
        if !problems.0.is_empty() {
            return Err(Error::InvalidArgument(format!("the pipeline config:\n  {}", problems.0.join("\n  "))));
        }
        let unwrap = "every value is Some when no problem was found";
        Ok(Plan {
            device: device.expect(unwrap),
            dtype: dtype.expect(unwrap),
            judge_train,
            policy_sft,
            sample: sample.expect(unwrap),
            strategy: strategy.expect(unwrap),
            reasoned: reasoned.expect(unwrap),
            dpo_loss: dpo_loss.expect(unwrap),
            dpo_train: dpo_train.expect(unwrap),
            prompts: prompts.expect(unwrap),
            media_folder,
            online: online_plan,
            bench,
            held_out,
            config,
        })
    }
}

fn online_plan(o: &OnlineConfig, dpo: &TrainOptions) -> Result<OnlinePlan> {
    for (key, value) in [("rounds", o.rounds), ("prompts_per_round", o.prompts_per_round)] {
        if value == 0 {
            return Err(Error::InvalidArgument(format!("`[online] {key}` must be at least 1")));
        }
    }
    let epochs = o.dpo_epochs.unwrap_or(dpo.epochs);
    if epochs == 0 {
        return Err(Error::InvalidArgument("`[online] dpo_epochs` must be at least 1".into()));
    }
    let max_steps = match (o.dpo_epochs, o.dpo_max_steps) {
        (Some(_), Some(_)) => {
            return Err(Error::InvalidArgument(
                "`[online]` sets both `dpo_epochs` and `dpo_max_steps`: a round's DPO is counted in one".into(),
            ))
        }
        (_, Some(0)) => return Err(Error::InvalidArgument("`[online] dpo_max_steps` must be at least 1".into())),
        (Some(_), None) => None,
        (None, steps) => steps.or(dpo.max_steps),
    };
    Ok(OnlinePlan {
        rounds: o.rounds,
        prompts_per_round: o.prompts_per_round,
        dpo: TrainOptions { epochs, max_steps, ..dpo.clone() },
        refresh_reference: o.refresh_reference,
    })
}

/// The prompts file, refused when it holds a bad line, no prompt, or a generation task (a policy answers questions).
fn read_checked_prompts(path: &Path, media_folder: &Path) -> Result<CandidateFile> {
    let key = |e: Error| keyed("[policy] prompts", e);
    let file = read_prompts(path, media_folder).map_err(key)?;
    if let Some(bad) = file.invalid.first() {
        return Err(key(Error::InvalidArgument(format!("{} line {}: {}", path.display(), bad.line, bad.reason))));
    }
    if file.prompts.is_empty() {
        return Err(key(Error::InvalidArgument(format!("{} holds no prompts", path.display()))));
    }
    if let Some(p) = file.prompts.iter().find(|p| p.is_generation()) {
        return Err(key(Error::InvalidArgument(format!(
            "{} line {}: {} is a generation task; a policy answers understanding questions",
            path.display(),
            p.line,
            p.task
        ))));
    }
    Ok(file)
}

/// Asks the judge whether it can judge each prompt's candidates the way `strategy` does (its templates, its media),
/// with two stand-in text candidates.
fn check_judge(dir: &Path, prompts: &CandidateFile, strategy: Strategy, dtype: DType, device: Device) -> Result<()> {
    let judge = Judge::load(dir, dtype, device).map_err(|e| keyed("[judge] model", e))?;
    let judgments = JudgeJudgments { judge: &judge, reasoned: None, batch: 1 };
    for prompt in &prompts.prompts {
        let mut with_candidates = prompt.clone();
        with_candidates.candidates = vec![Candidate::Text("a".into()), Candidate::Text("b".into())];
        judgments.check(&with_candidates, strategy.modes()).map_err(|e| {
            Error::InvalidArgument(format!(
                "`[judge] model` cannot judge `[policy] prompts` line {} ({}): {}",
                prompt.line,
                prompt.task,
                message(e)
            ))
        })?;
    }
    Ok(())
}
