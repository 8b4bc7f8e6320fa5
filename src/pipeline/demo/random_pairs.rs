//! The policy claim's control: DPO on random pairs. The judge's pairs are set beside pairs of the same prompts'
//! candidates drawn at random (two different candidates, in a random order), trained from the same policy with the
//! same options and evaluated on the same held-out questions. A rise in the policy's held-out accuracy that random
//! pairs give as well is not the judge's doing.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use crate::model::files::read_text;
use crate::pipeline::policy_eval::{evaluate_policy, read_policy_questions, PolicyEvalOptions, PolicyEvaluation};
use crate::pipeline::runner::stages::{FILTER, POLICY_SFT, SAMPLE};
use crate::pipeline::runner::{pairs_file, PipelineConfig, CANDIDATES_FILE};
use crate::pipeline::sample::Policy;
use crate::pipeline::world::{DemoFiles, FRAMES};
use crate::runtime::{DType, Device};
use crate::train::dpo::DpoRun;
use crate::train::run::latest_checkpoint;
use crate::{Error, Result};

/// The largest candidates or pairs file read.
const MAX_FILE_BYTES: u64 = 256 << 20;

fn json_lines(path: &Path) -> Result<Vec<Value>> {
    let text = read_text(path, MAX_FILE_BYTES)?;
    let parse = |(i, line): (usize, &str)| {
        serde_json::from_str(line)
            .map_err(|e| Error::InvalidArgument(format!("{} line {}: {e}", path.display(), i + 1)))
    };
    text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).map(parse).collect()
}

/// The judge's pairs (`judge_pairs`, the filter's file) with each `chosen` / `rejected` replaced by two different
/// candidates of its prompt (from the sampler's `candidates` file) drawn from `seed`, in a random order: as many
/// pairs, on the same prompts, with preferences that know nothing.
pub fn random_pairs(judge_pairs: &Path, candidates: &Path, seed: u64) -> Result<String> {
    let mut by_id: HashMap<String, Vec<String>> = HashMap::new();
    for line in json_lines(candidates)? {
        let id = line["id"].as_str().unwrap_or_default().to_string();
        let answers = line["candidates"].as_array().into_iter().flatten().filter_map(Value::as_str);
        by_id.insert(id, answers.map(str::to_string).collect());
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = String::new();
    for mut pair in json_lines(judge_pairs)? {
        let id = pair["id"].as_str().unwrap_or_default();
        let answers = by_id.get(id).filter(|a| a.len() >= 2).ok_or_else(|| {
            Error::InvalidArgument(format!("{}: no two candidates for prompt {id:?}", candidates.display()))
        })?;
        // Two distinct indices in a random order (`sample` shuffles what it draws).
        let drawn = sample(&mut rng, answers.len(), 2);
        let (chosen, rejected) = (drawn.index(0), drawn.index(1));
        pair["chosen"] = Value::String(answers[chosen].clone());
        pair["rejected"] = Value::String(answers[rejected].clone());
        out.push_str(&format!("{pair}\n"));
    }
    Ok(out)
}

/// DPO on [`random_pairs`] of the demo's pipeline run in `run_dir` (its policy after supervised fine-tuning, its
/// `[dpo]` options, the same seed), into `out` (replaced), and the result on the held-out questions as the
/// policy-eval stages evaluate; `None` when `stop` ended the training.
pub fn dpo_on_random_pairs(
    pipeline: &PipelineConfig,
    files: &DemoFiles,
    run_dir: &Path,
    out: &Path,
    stop: &AtomicBool,
) -> Result<Option<PolicyEvaluation>> {
    let failed = |what: &str, e: std::io::Error| Error::InvalidArgument(format!("{what} {}: {e}", out.display()));
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| failed("clearing", e))?;
    }
    std::fs::create_dir_all(out).map_err(|e| failed("creating", e))?;
    let pairs = out.join("random-pairs.jsonl");
    let seed = pipeline.sample.seed;
    let candidates = run_dir.join(SAMPLE).join(CANDIDATES_FILE);
    let text = random_pairs(&pairs_file(&run_dir.join(FILTER)), &candidates, seed)?;
    let no_pairs = text.is_empty();
    std::fs::write(&pairs, text).map_err(|e| failed("writing pairs in", e))?;
    let policy = latest_checkpoint(&run_dir.join(POLICY_SFT)).map_or_else(|| pipeline.policy.model.clone(), |(_, p)| p);
    let questions = read_policy_questions(&files.policy_held_out, &files.dir)?;
    let options = PolicyEvalOptions { max_new_tokens: pipeline.policy.eval_max_new_tokens, frames: FRAMES };
    let evaluate = |dir: &Path| evaluate_policy(&Policy::load(dir, DType::F32, Device::Cpu)?, &questions, &options);
    if no_pairs {
        // As the pipeline's DPO stage: no pairs, no training, the policy as it was.
        return evaluate(&policy).map(Some);
    }
    let run = DpoRun {
        policy,
        pairs,
        out: out.join("dpo"),
        reference: None,
        reference_on_the_fly: false,
        media_folder: Some(files.dir.clone()),
        video_frames: FRAMES,
        loss: pipeline.dpo_loss()?,
        train: pipeline.dpo.training.options("dpo.training", Device::Cpu)?,
    };
    let outcome = run.run(stop, |_, _| {})?;
    if outcome.interrupted {
        return Ok(None);
    }
    evaluate(&outcome.checkpoint).map(Some)
}
