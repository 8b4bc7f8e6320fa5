//! The stages in order, each with the record of what it runs on: judge-train → judge-eval → policy-sft →
//! policy-eval-before → (offline) sample → filter → dpo → policy-eval-after, or (online) rounds of sample →
//! filter → dpo → eval under `online/round-N/` → report. Stages whose inputs the config leaves out are left out.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::data_stages::{filter_stage, pairs_file, sample_stage, FilterSettings, CANDIDATES_FILE};
use super::evals::{judge_eval_stage, policy_eval_stage, JudgeSettings, BASE_JUDGE_SUMMARY_FILE, JUDGE_SUMMARY_FILE};
use super::executor::{Executor, Flow};
use super::plan::{OnlinePlan, Plan, TrainPlan};
use super::record::{Hashes, StageRecord};
use super::train_stage::{dpo_stage, final_checkpoint, policy_after_dpo, sft_stage};
use crate::pipeline::filter::CandidateFile;
use crate::pipeline::policy_eval::PolicyEvalOptions;
use crate::train::dpo::DpoRun;
use crate::train::run::TrainOptions;
use crate::train::sft::SftRun;
use crate::Result;

pub const JUDGE_TRAIN: &str = "judge-train";
pub const JUDGE_EVAL: &str = "judge-eval";
pub const POLICY_SFT: &str = "policy-sft";
pub const POLICY_EVAL_BEFORE: &str = "policy-eval-before";
pub const SAMPLE: &str = "sample";
pub const FILTER: &str = "filter";
pub const DPO: &str = "dpo";
pub const POLICY_EVAL_AFTER: &str = "policy-eval-after";
pub const REPORT: &str = "report";

/// The folder of online round `round` (from 1).
pub fn round_dir(round: usize) -> String {
    format!("online/round-{round}")
}

/// The stages a run of `plan` has, in order.
pub fn stage_names(plan: &Plan) -> Vec<String> {
    let mut names = Vec::new();
    let mut add = |name: &str, present: bool| {
        if present {
            names.push(name.to_string());
        }
    };
    let held_out = plan.held_out.is_some();
    add(JUDGE_TRAIN, plan.judge_train.is_some());
    add(JUDGE_EVAL, plan.bench.is_some());
    add(POLICY_SFT, plan.policy_sft.is_some());
    add(POLICY_EVAL_BEFORE, held_out);
    match &plan.online {
        None => {
            for name in [SAMPLE, FILTER, DPO] {
                add(name, true);
            }
            add(POLICY_EVAL_AFTER, held_out);
        }
        Some(online) => {
            for round in 1..=online.rounds {
                for name in [SAMPLE, FILTER, DPO] {
                    add(&format!("{}/{name}", round_dir(round)), true);
                }
                add(&format!("{}/eval", round_dir(round)), held_out);
            }
        }
    }
    add(REPORT, true);
    names
}

/// Where the models are as the stages go.
pub struct Models {
    pub judge: PathBuf,
    /// True when `judge` is the config's (not fine-tuned here).
    pub judge_external: bool,
    pub policy: PathBuf,
    pub policy_external: bool,
}

/// Runs the stages before the report; `Flow::Stopped` when the stop flag ended one.
pub fn run_stages(plan: &Plan, ex: &mut Executor<'_>, hashes: &mut Hashes) -> Result<Flow> {
    let c = &plan.config;
    let mut models = Models {
        judge: c.judge.model.clone(),
        judge_external: true,
        policy: c.policy.model.clone(),
        policy_external: true,
    };
    if let Some(t) = &plan.judge_train {
        let Some(trained) = sft(ex, hashes, JUDGE_TRAIN, &c.judge.model, t, c.judge.video_frames)? else {
            return Ok(Flow::Stopped);
        };
        models.judge = trained;
        models.judge_external = false;
    }
    if let (Some(pairs), Some(bench)) = (&plan.bench, &c.judge.eval) {
        let mut options = json!({"batch": c.judge.batch, "dtype": c.dtype, "device": c.device});
        if let Some(generation) = &plan.reasoned {
            options["reasoned_max_new_tokens"] = json!(generation.max_new_tokens);
        }
        let record = judge_input(StageRecord::new(JUDGE_EVAL, ex.upstream(), options), &models, hashes)?
            .input("eval", bench, hashes)?;
        let mut judges = vec![(JUDGE_SUMMARY_FILE, models.judge.as_path())];
        if !models.judge_external {
            judges.insert(0, (BASE_JUDGE_SUMMARY_FILE, c.judge.model.as_path()));
        }
        // The judge answers here as in the filter: a judge trained to reason is measured reasoned.
        let how = JudgeSettings {
            batch: c.judge.batch,
            reasoned: plan.reasoned.clone(),
            dtype: plan.dtype,
            device: plan.device,
        };
        if ex.stage(JUDGE_EVAL, record, |cx| judge_eval_stage(cx, &judges, pairs, &how))? == Flow::Stopped {
            return Ok(Flow::Stopped);
        }
    }
    if let Some(t) = &plan.policy_sft {
        let Some(trained) = sft(ex, hashes, POLICY_SFT, &c.policy.model, t, c.policy.video_frames)? else {
            return Ok(Flow::Stopped);
        };
        models.policy = trained;
        models.policy_external = false;
    }
    if policy_eval(plan, ex, hashes, POLICY_EVAL_BEFORE, &models)? == Flow::Stopped {
        return Ok(Flow::Stopped);
    }
    match &plan.online {
        None => {
            let rounds = Round {
                dir: String::new(),
                prompts: &plan.prompts,
                seed: plan.sample.seed,
                train: &plan.dpo_train,
                reference: None,
            };
            if align(plan, ex, hashes, &rounds, &mut models)? == Flow::Stopped {
                return Ok(Flow::Stopped);
            }
            policy_eval(plan, ex, hashes, POLICY_EVAL_AFTER, &models)
        }
        Some(online) => online_rounds(plan, online, ex, hashes, &mut models),
    }
}

/// The SFT stage `name` of the checkpoint `model` on `t`: the checkpoint it ends with (`None`: stopped early).
fn sft(
    ex: &mut Executor<'_>,
    hashes: &mut Hashes,
    name: &str,
    model: &Path,
    t: &TrainPlan,
    video_frames: usize,
) -> Result<Option<PathBuf>> {
    let options = json!({"training": t.config, "video_frames": video_frames});
    let record =
        StageRecord::new(name, ex.upstream(), options).input("model", model, hashes)?.input("data", &t.data, hashes)?;
    let run = SftRun {
        model: model.to_path_buf(),
        data: t.data.clone(),
        out: PathBuf::new(),
        train: t.options.clone(),
        media_folder: None,
        video_frames,
        eval: None,
        eval_bench: None,
        eval_every: 0,
        data_parallel: 1,
    };
    if ex.stage(name, record, |cx| sft_stage(cx, run))? == Flow::Stopped {
        return Ok(None);
    }
    final_checkpoint(&ex.dir(name)).map(Some)
}

/// `record` with the judge's hash when the judge is the config's (a fine-tuned one is the upstream stage's).
fn judge_input(record: StageRecord, models: &Models, hashes: &mut Hashes) -> Result<StageRecord> {
    if models.judge_external {
        record.input("judge", &models.judge, hashes)
    } else {
        Ok(record)
    }
}

fn policy_input(record: StageRecord, models: &Models, hashes: &mut Hashes) -> Result<StageRecord> {
    if models.policy_external {
        record.input("policy", &models.policy, hashes)
    } else {
        Ok(record)
    }
}

/// A policy-eval stage `name` of the current policy, when there are held-out questions.
fn policy_eval(plan: &Plan, ex: &mut Executor<'_>, hashes: &mut Hashes, name: &str, models: &Models) -> Result<Flow> {
    let (Some(questions), Some(held_out)) = (&plan.held_out, &plan.config.policy.held_out) else {
        return Ok(Flow::Done);
    };
    let c = &plan.config;
    let options = PolicyEvalOptions { max_new_tokens: c.policy.eval_max_new_tokens, frames: c.policy.video_frames };
    let recorded = json!({"max_new_tokens": options.max_new_tokens, "frames": options.frames, "dtype": c.dtype, "device": c.device});
    let record = policy_input(StageRecord::new(name, ex.upstream(), recorded), models, hashes)?
        .input("held_out", held_out, hashes)?;
    let policy = models.policy.clone();
    ex.stage(name, record, |cx| policy_eval_stage(cx, &policy, questions, &options, plan.dtype, plan.device))
}

/// One pass of sample → filter → DPO: the offline run's (`dir` empty) or an online round's.
struct Round<'a> {
    /// The folder the stages go under (`online/round-N`), empty for the offline stages.
    dir: String,
    prompts: &'a CandidateFile,
    seed: u64,
    train: &'a TrainOptions,
    /// DPO's reference (`None`: the policy the pass starts from).
    reference: Option<PathBuf>,
}

impl Round<'_> {
    fn name(&self, stage: &str) -> String {
        if self.dir.is_empty() {
            stage.to_string()
        } else {
            format!("{}/{stage}", self.dir)
        }
    }
}

/// Sample → filter → DPO from the current policy, which becomes DPO's result.
fn align(
    plan: &Plan,
    ex: &mut Executor<'_>,
    hashes: &mut Hashes,
    round: &Round<'_>,
    models: &mut Models,
) -> Result<Flow> {
    let c = &plan.config;
    let sample = plan.sample.clone();
    let sample = crate::pipeline::sample::SampleOptions { seed: round.seed, ..sample };
    let (sample_name, filter_name, dpo_name) = (round.name(SAMPLE), round.name(FILTER), round.name(DPO));
    let ids: Vec<&str> = round.prompts.prompts.iter().map(|p| p.id.as_str()).collect();
    let options = json!({"sample": c.sample, "seed": round.seed, "prompts": ids, "dtype": c.dtype, "device": c.device});
    let record = policy_input(StageRecord::new(&sample_name, ex.upstream(), options), models, hashes)?.input(
        "prompts",
        &c.policy.prompts,
        hashes,
    )?;
    let policy = models.policy.clone();
    let (prompts, dtype, device) = (round.prompts, plan.dtype, plan.device);
    if ex.stage(&sample_name, record, |cx| sample_stage(cx, prompts, &policy, &sample, dtype, device))? == Flow::Stopped
    {
        return Ok(Flow::Stopped);
    }
    let candidates = ex.dir(&sample_name).join(CANDIDATES_FILE);
    let mut options =
        json!({"strategy": plan.strategy.name(), "batch": c.judge.batch, "dtype": c.dtype, "device": c.device});
    if let Some(generation) = &plan.reasoned {
        options["reasoned_max_new_tokens"] = json!(generation.max_new_tokens);
    }
    let record = judge_input(StageRecord::new(&filter_name, ex.upstream(), options), models, hashes)?;
    let settings = FilterSettings {
        judge: &models.judge,
        strategy: plan.strategy,
        reasoned: plan.reasoned.clone(),
        batch: c.judge.batch,
        dtype: plan.dtype,
        device: plan.device,
    };
    if ex.stage(&filter_name, record, |cx| filter_stage(cx, &candidates, &plan.media_folder, &settings))?
        == Flow::Stopped
    {
        return Ok(Flow::Stopped);
    }
    let mut options = json!({
        "beta": c.dpo.beta, "loss_type": c.dpo.loss_type, "label_smoothing": c.dpo.label_smoothing,
        "reference_free": c.dpo.reference_free, "training": c.dpo.training, "epochs": round.train.epochs,
        "video_frames": c.policy.video_frames, "refresh_reference": round.reference.is_none(),
    });
    if let Some(steps) = round.train.max_steps {
        options["max_steps"] = steps.into();
    }
    let record = policy_input(StageRecord::new(&dpo_name, ex.upstream(), options), models, hashes)?;
    let run = DpoRun {
        policy: models.policy.clone(),
        pairs: pairs_file(&ex.dir(&filter_name)),
        out: PathBuf::new(),
        reference: round.reference.clone(),
        reference_on_the_fly: false,
        media_folder: Some(plan.media_folder.clone()),
        video_frames: c.policy.video_frames,
        loss: plan.dpo_loss,
        train: round.train.clone(),
    };
    if ex.stage(&dpo_name, record, |cx| dpo_stage(cx, run))? == Flow::Stopped {
        return Ok(Flow::Stopped);
    }
    models.policy = policy_after_dpo(&ex.dir(&dpo_name), &models.policy);
    models.policy_external = false;
    Ok(Flow::Done)
}

/// The online rounds: each samples its prompts from the current policy, filters, trains a few DPO steps from it
/// and evaluates the result.
fn online_rounds(
    plan: &Plan,
    online: &OnlinePlan,
    ex: &mut Executor<'_>,
    hashes: &mut Hashes,
    models: &mut Models,
) -> Result<Flow> {
    let initial = models.policy.clone();
    let all = &plan.prompts.prompts;
    for round in 1..=online.rounds {
        let start = (round - 1) * online.prompts_per_round;
        let prompts = CandidateFile {
            prompts: (start..start + online.prompts_per_round).map(|i| all[i % all.len()].clone()).collect(),
            ..plan.prompts.clone()
        };
        let pass = Round {
            dir: round_dir(round),
            prompts: &prompts,
            seed: plan.sample.seed.wrapping_add(round as u64),
            train: &online.dpo,
            reference: (!online.refresh_reference).then(|| initial.clone()),
        };
        if align(plan, ex, hashes, &pass, models)? == Flow::Stopped {
            return Ok(Flow::Stopped);
        }
        if policy_eval(plan, ex, hashes, &format!("{}/eval", round_dir(round)), models)? == Flow::Stopped {
            return Ok(Flow::Stopped);
        }
    }
    Ok(Flow::Done)
}
