//! The pipeline runner on tiny checkpoints made from nothing and the demo world's data: the whole offline run writes
//! every stage's outputs and the report; a second run skips every stage; a changed DPO option reruns only DPO and
//! what follows; a run killed at several points and continued writes the bytes of an uninterrupted one; two online
//! rounds; and bad configs are refused, each problem named by its key, before anything is written.

mod common;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use unireward::ops::preference::{DpoLossType, FDivergence};
use unireward::pipeline::runner::{run_pipeline, PipelineConfig, PipelineOutcome, RunOptions, StageEvent};
use unireward::pipeline::world::{DemoSizes, TinyLlava};
use unireward::train::run::latest_checkpoint;

/// A folder with a tiny judge and policy, their data, and a config; removed on drop.
struct World(PathBuf);

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The config's stages, small: 3 prompts, K = 4, one or two steps each.
const CONFIG: &str = r#"
out = "out"

[judge]
model = "base-init"
train = "judge-train.jsonl"
eval = "judge-held-out.jsonl"
batch = 8
video_frames = 4

[judge.training]
batch_size = 4
lr = 1e-3
save_every = 1

[policy]
model = "base-init"
prompts = "prompts.jsonl"
held_out = "policy-held-out.jsonl"
eval_max_new_tokens = 3
video_frames = 4

[sample]
k = 4
max_new_tokens = 4
frames = 4
seed = 7

[filter]
strategy = "pair-rank"

[dpo]
beta = 0.1

[dpo.training]
batch_size = 2
lr = 5e-3
save_every = 1
warmup_ratio = 0.0

[online]
rounds = 2
prompts_per_round = 2
refresh_reference = true
"#;

impl World {
    /// The demo's data set, small: a judgment per task to train on and one held out, 2 supervised answers, 3 prompts
    /// and 2 held-out questions (images and videos).
    fn new(name: &str) -> World {
        let dir = std::env::temp_dir().join(format!("unireward-pipeline-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let sizes = DemoSizes {
            base_answers: 2,
            judge_train: 1,
            judge_held_out: 1,
            policy_sft: 2,
            prompts: 3,
            policy_held_out: 2,
        };
        sizes.write(&dir, &TinyLlava::default(), 41).unwrap();
        let world = World(dir);
        world.write_config(CONFIG);
        world
    }

    fn config_path(&self) -> PathBuf {
        self.0.join("pipeline.toml")
    }

    fn write_config(&self, text: &str) {
        std::fs::write(self.config_path(), text).unwrap();
    }

    fn out(&self) -> PathBuf {
        self.0.join("out")
    }

    /// Runs the pipeline in this process; the stages run and skipped, in order.
    fn run(&self, options: RunOptions) -> unireward::Result<(PipelineOutcome, Vec<String>, Vec<String>)> {
        let config = PipelineConfig::from_file(&self.config_path())?;
        let (mut ran, mut skipped) = (Vec::new(), Vec::new());
        let stop = AtomicBool::new(false);
        let outcome = run_pipeline(config, &options, &stop, &mut |e: StageEvent<'_>| match e {
            StageEvent::Finished { stage, .. } => ran.push(stage.to_string()),
            StageEvent::Skipped { stage } => skipped.push(stage.to_string()),
            _ => {}
        })?;
        Ok((outcome, ran, skipped))
    }

    /// `unireward pipeline --config` in a child process, aborted as a kill would after `abort_at` (`STAGE:N`).
    fn run_child(&self, abort_at: Option<&str>) -> std::process::Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_unireward"));
        command.args(["pipeline", "--config"]).arg(self.config_path());
        if let Some(at) = abort_at {
            command.env("UNIREWARD_PIPELINE_ABORT_AT", at);
        }
        command.output().unwrap()
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

const OFFLINE: [&str; 8] =
    ["judge-train", "judge-eval", "policy-eval-before", "sample", "filter", "dpo", "policy-eval-after", "report"];

#[test]
fn the_offline_pipeline_runs_every_stage_then_skips_them_and_reruns_what_a_changed_option_reaches() {
    let world = World::new("offline");
    let all = &OFFLINE;
    let (outcome, ran, skipped) = world.run(RunOptions::default()).unwrap();
    assert_eq!(ran, names(all));
    assert!(skipped.is_empty() && !outcome.interrupted);
    let out = world.out();
    let report = std::fs::read_to_string(outcome.report.unwrap()).unwrap();
    assert!(report.contains("Pipeline report"), "{report}");
    // Every stage's outputs, with a finished record naming the digest of the stage before it.
    let mut upstream = String::new();
    for stage in all {
        let record: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join(stage).join("record.json")).unwrap()).unwrap();
        assert_eq!(record["complete"], true, "{stage}");
        assert_eq!(record["upstream"], upstream.as_str(), "{stage}");
        upstream = digest_of(&out.join(stage));
    }
    assert!(out.join("judge-train/checkpoint-3/config.json").is_file());
    for file in ["judge-train/metrics.jsonl", "judge-eval/summary.json", "judge-eval/base-summary.json"] {
        assert!(out.join(file).is_file(), "{file}");
    }
    let candidates = std::fs::read_to_string(out.join("sample/candidates.jsonl")).unwrap();
    assert_eq!(candidates.lines().count(), 3);
    for line in candidates.lines() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(value["candidates"].as_array().unwrap().len(), 4, "{line}");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("filter/summary.json")).unwrap()).unwrap();
    let pairs = std::fs::read_to_string(out.join("filter/pairs.jsonl")).unwrap();
    assert_eq!(summary["pairs"], pairs.lines().count());
    assert!(!pairs.is_empty(), "pair-rank over 4 candidates gives pairs unless every verdict is a tie");
    assert!(unireward::train::run::latest_checkpoint(&out.join("dpo")).is_some());
    for stage in ["policy-eval-before", "policy-eval-after"] {
        let evaluation: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join(stage).join("evaluation.json")).unwrap()).unwrap();
        assert_eq!(evaluation["questions"], 2, "{stage}");
    }

    // Again: nothing to do.
    let (_, ran, skipped) = world.run(RunOptions::default()).unwrap();
    assert!(ran.is_empty(), "{ran:?}");
    assert_eq!(skipped, names(all));

    // A DPO option changed: DPO and the stages after it run again, the ones before are kept.
    let before = std::fs::read(out.join("sample/candidates.jsonl")).unwrap();
    world.write_config(&CONFIG.replace("beta = 0.1", "beta = 0.2"));
    let (_, ran, skipped) = world.run(RunOptions::default()).unwrap();
    assert_eq!(ran, names(&all[5..]));
    assert_eq!(skipped, names(&all[..5]));
    assert_eq!(std::fs::read(out.join("sample/candidates.jsonl")).unwrap(), before);

    // --rerun: the stage and every one after it.
    let options = RunOptions { rerun: Some("filter".into()), ..RunOptions::default() };
    let (_, ran, _) = world.run(options).unwrap();
    assert_eq!(ran, names(&all[4..]));
    // An input file changed (a prompt less): the stages from the first that reads it run again.
    let prompts = std::fs::read_to_string(world.0.join("prompts.jsonl")).unwrap();
    let fewer: String = prompts.lines().take(2).map(|l| format!("{l}\n")).collect();
    std::fs::write(world.0.join("prompts.jsonl"), fewer).unwrap();
    let (_, ran, skipped) = world.run(RunOptions::default()).unwrap();
    assert_eq!((ran, skipped), (names(&all[3..]), names(&all[..3])));
    assert_eq!(std::fs::read_to_string(out.join("sample/candidates.jsonl")).unwrap().lines().count(), 2);

    // A record that is not one is an error, until the stage is rerun.
    std::fs::write(out.join("filter/record.json"), "{\"stage\": ").unwrap();
    let err = world.run(RunOptions::default()).unwrap_err().to_string();
    assert!(err.contains("filter/record.json") && err.contains("not a stage record"), "{err}");
    let options = RunOptions { rerun: Some("filter".into()), ..RunOptions::default() };
    let (_, ran, _) = world.run(options).unwrap();
    assert_eq!(ran, names(&all[4..]));
    let options = RunOptions { rerun: Some("nope".into()), ..RunOptions::default() };
    let err = world.run(options).unwrap_err().to_string();
    assert!(err.contains("--rerun nope") && err.contains("judge-train, judge-eval"), "{err}");
}

/// The digest a stage's record has (what the next stage's record names as its upstream).
fn digest_of(dir: &Path) -> String {
    let record: unireward::pipeline::runner::record::StageRecord =
        serde_json::from_str(&std::fs::read_to_string(dir.join("record.json")).unwrap()).unwrap();
    record.digest()
}

/// Every file under `dir` but the report (its stage timings are this run's), by relative path.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut found = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let relative = path.strip_prefix(dir).unwrap().to_path_buf();
            if relative.starts_with("report") {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                found.insert(relative, std::fs::read(&path).unwrap());
            }
        }
    }
    found
}

#[test]
fn a_pipeline_killed_at_several_points_and_rerun_writes_the_bytes_of_an_uninterrupted_one() {
    let world = World::new("kill");
    let output = world.run_child(None);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let want = files(&world.out());
    // The same out folder (the paths the outputs name are the same), killed in four stages, then finished.
    std::fs::rename(world.out(), world.0.join("uninterrupted")).unwrap();
    for at in ["judge-train:2", "sample:2", "filter:1", "dpo:1"] {
        let output = world.run_child(Some(at));
        let log = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.signal(), Some(6), "{at}: the run was not killed where asked: {log}");
        let stage = at.split(':').next().unwrap();
        assert!(log.contains(&format!("{stage}: ")), "{log}");
    }
    let output = world.run_child(None);
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    eprintln!("{log}");
    assert!(log.contains("dpo: continuing") && log.contains("filter: up to date"), "{log}");
    let got = files(&world.out());
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    for (path, bytes) in &want {
        assert!(&got[path] == bytes, "{} differs from the uninterrupted run's", path.display());
    }
}

#[test]
fn two_online_rounds_sample_filter_train_and_evaluate_from_the_current_policy() {
    let world = World::new("online");
    // The judge as it is (no judge-train stage), the policy fine-tuned first.
    let config = CONFIG.replace("train = \"judge-train.jsonl\"\n", "");
    let config = config.replace("[sample]", "[policy.training]\nbatch_size = 2\nlr = 1e-3\n\n[sample]");
    let config =
        config.replace("prompts = \"prompts.jsonl\"", "sft = \"policy-sft.jsonl\"\nprompts = \"prompts.jsonl\"");
    let config = config.replace("prompts_per_round = 2\n", "prompts_per_round = 2\ndpo_max_steps = 3\n");
    world.write_config(&config.replace("[judge.training]\nbatch_size = 4\nlr = 1e-3\nsave_every = 1\n", ""));
    let online = RunOptions { online: true, ..RunOptions::default() };
    let (outcome, ran, _) = world.run(online.clone()).unwrap();
    let mut want = names(&["judge-eval", "policy-sft", "policy-eval-before"]);
    for round in 1..=2 {
        for stage in ["sample", "filter", "dpo", "eval"] {
            want.push(format!("online/round-{round}/{stage}"));
        }
    }
    want.push("report".into());
    assert_eq!(ran, want);
    let out = world.out();
    let ids = |round: usize| -> Vec<String> {
        let text = std::fs::read_to_string(out.join(format!("online/round-{round}/sample/candidates.jsonl"))).unwrap();
        text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].to_string()).collect()
    };
    assert_eq!(ids(1), ["\"prompt-0\"", "\"prompt-1\""]);
    assert_eq!(ids(2), ["\"prompt-2\"", "\"prompt-0\""], "the next prompts, cycling");
    assert!(out.join("policy-sft/checkpoint-1/config.json").is_file());
    for round in 1..=2 {
        let dpo = out.join(format!("online/round-{round}/dpo"));
        let last = latest_checkpoint(&dpo).map(|(step, _)| step);
        assert_eq!(last, Some(3), "round {round}: `dpo_max_steps = 3` (two pairs a batch: three epochs)");
    }
    // The policies are the stages' outputs (chained by the records), not the config's checkpoint.
    for stage in ["online/round-1/sample", "online/round-2/dpo"] {
        let record = std::fs::read_to_string(out.join(stage).join("record.json")).unwrap();
        assert!(!record.contains("\"policy\""), "{stage}: {record}");
    }
    let report = std::fs::read_to_string(outcome.report.unwrap()).unwrap();
    assert!(report.to_lowercase().contains("round"), "{report}");
    let (_, ran, skipped) = world.run(online.clone()).unwrap();
    assert!(ran.is_empty() && skipped == want, "{ran:?} {skipped:?}");

    // Stopped in round 2 and continued: the bytes of the uninterrupted rounds.
    let want = files(&out);
    std::fs::rename(&out, world.0.join("uninterrupted")).unwrap();
    for stage in ["online/round-1/dpo", "online/round-2/filter"] {
        assert!(run_stopped_at(&world, &online, stage).interrupted, "{stage}");
    }
    world.run(online).unwrap();
    assert!(files(&out) == want, "the continued rounds' files differ from the uninterrupted ones'");
}

/// Runs the pipeline, setting the stop flag when `stage` reports its first unit done; the stages it stopped.
fn run_stopped_at(world: &World, options: &RunOptions, stage: &str) -> PipelineOutcome {
    let config = PipelineConfig::from_file(&world.config_path()).unwrap();
    let stop = AtomicBool::new(false);
    let mut stopped = Vec::new();
    let outcome = run_pipeline(config, options, &stop, &mut |e: StageEvent<'_>| match e {
        StageEvent::Progress { stage: s, done: 1, .. } if s == stage => stop.store(true, Ordering::SeqCst),
        StageEvent::Interrupted { stage } => stopped.push(stage.to_string()),
        _ => {}
    })
    .unwrap();
    assert_eq!(stopped, [stage]);
    assert!(outcome.report.is_none());
    outcome
}

/// The error of a config with `replace` applied to the base config.
fn refused(world: &World, from: &str, to: &str) -> String {
    assert!(CONFIG.contains(from), "{from}");
    world.write_config(&CONFIG.replacen(from, to, 1));
    let err = world.run(RunOptions::default()).unwrap_err().to_string();
    assert!(!world.out().exists(), "{err}: nothing is written");
    err
}

#[test]
fn bad_configs_are_refused_by_key_before_anything_is_written() {
    let world = World::new("bad");
    let err = refused(&world, "k = 4", "k = 4\nkk = 3");
    assert!(err.contains("unknown field `kk`"), "{err}");
    let err = refused(&world, "k = 4", "k = 1");
    assert!(err.contains("[sample] k"), "{err}");
    let err = refused(&world, "prompts = \"prompts.jsonl\"", "prompts = \"missing.jsonl\"");
    assert!(err.contains("[policy] prompts") && err.contains("missing.jsonl"), "{err}");
    let err = refused(&world, "beta = 0.1", "beta = -1.0\nloss_type = \"nope\"");
    assert!(err.contains("[dpo] loss_type"), "{err}");
    let err = refused(&world, "strategy = \"pair-rank\"", "strategy = \"best-of\"");
    assert!(err.contains("[filter] strategy") && err.contains("best-of"), "{err}");
    let err =
        refused(&world, "strategy = \"pair-rank\"", "strategy = \"pair-rank\"\nreasoned = true\nmax_new_tokens = 0");
    assert!(err.contains("`[filter] max_new_tokens`") && err.contains("at least 1"), "{err}");
    let err = refused(&world, "train = \"judge-train.jsonl\"\n", "");
    assert!(err.contains("`[judge.training]` is given but `[judge] train` is not"), "{err}");
    let err = refused(
        &world,
        "rounds = 2\nprompts_per_round = 2",
        "rounds = 2\nprompts_per_round = 2\ndpo_epochs = 1\nfoo = 1",
    );
    assert!(err.contains("unknown field `foo`"), "{err}");
    let online = "rounds = 2\nprompts_per_round = 2";
    for (extra, want) in [
        ("dpo_epochs = 1\ndpo_max_steps = 2", "both `dpo_epochs` and `dpo_max_steps`"),
        ("dpo_max_steps = 0", "`[online] dpo_max_steps` must be at least 1"),
    ] {
        world.write_config(&CONFIG.replacen(online, &format!("{online}\n{extra}"), 1));
        let err = world.run(RunOptions { online: true, ..RunOptions::default() }).unwrap_err().to_string();
        assert!(err.contains(want) && !world.out().exists(), "{err}");
    }
    // Every problem at once, each by its key.
    world.write_config(&CONFIG.replace("lr = 5e-3", "lr = -1.0").replace("k = 4", "k = 1"));
    let err = world.run(RunOptions::default()).unwrap_err().to_string();
    assert!(err.contains("`[dpo.training] lr` must be finite") && err.contains("[sample] k 1"), "{err}");
    assert!(!world.out().exists());
    // A text-only judge cannot see the prompts' images.
    let text_judge = common::Scratch::new("pipeline-text-judge");
    let model = text_judge.0.join("model");
    let err = refused(&world, "model = \"base-init\"", &format!("model = {:?}", model.display().to_string()));
    assert!(err.contains("[judge] model") && err.contains("text-only"), "{err}");
    // The command prints the same, one `error:` line and its causes, and fails.
    world.write_config(&CONFIG.replace("k = 4", "k = 4\nkk = 3"));
    let output = world.run_child(None);
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && err.starts_with("error: ") && err.contains("`kk`"), "{err}");
    assert!(!world.out().exists());
    // --online without [online].
    let without_online = &CONFIG[..CONFIG.find("[online]").unwrap()];
    world.write_config(without_online);
    let err = world.run(RunOptions { online: true, ..RunOptions::default() }).unwrap_err().to_string();
    assert!(err.contains("`--online` needs an `[online]` section"), "{err}");
    assert!(!world.out().exists());
}

#[test]
fn a_stopped_pipeline_continues_to_the_bytes_of_an_uninterrupted_one() {
    let world = World::new("stop");
    world.run(RunOptions::default()).unwrap();
    let want = files(&world.out());
    std::fs::rename(world.out(), world.0.join("uninterrupted")).unwrap();
    for stage in ["judge-train", "sample", "filter", "dpo"] {
        assert!(run_stopped_at(&world, &RunOptions::default(), stage).interrupted, "{stage}");
    }
    let (outcome, ran, _) = world.run(RunOptions::default()).unwrap();
    assert!(!outcome.interrupted && ran.contains(&"report".to_string()));
    assert!(files(&world.out()) == want, "the continued run's files differ from the uninterrupted run's");
}

#[test]
fn the_example_config_is_the_readmes_and_parses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(root.join("examples/pipeline.toml")).unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(readme.contains(&format!("```toml\n{example}```")), "README's pipeline config is examples/pipeline.toml");
    let config = PipelineConfig::from_toml(&example, root).unwrap();
    assert_eq!(config.out, root.join("runs/pipeline"));
    assert_eq!(config.sample.k, 10);
    assert_eq!(config.online.unwrap().rounds, 3);
    config.judge.training.unwrap().options("judge.training", unireward::Device::Cpu).unwrap();

    let mixing = example
        .replace("group_by_length = true", "group_by_length = false")
        .replace("task_weights = {}", "task_weights = { video_generation = 0.5, image_generation = 2.0 }");
    let training = PipelineConfig::from_toml(&mixing, root).unwrap().judge.training.unwrap();
    let options = training.options("judge.training", unireward::Device::Cpu).unwrap();
    assert!(!options.group_by_length);
    assert_eq!(options.task_weights, [("image_generation".to_string(), 2.0), ("video_generation".to_string(), 0.5)]);
}

/// `[dpo]`'s loss keys reach the loss, survive a write and a read of the config (the demo writes its config), and a
/// bad value is refused by its key.
#[test]
fn dpo_loss_keys_reach_the_loss_round_trip_and_bad_values_are_refused_by_key() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(root.join("examples/pipeline.toml")).unwrap();
    let with = |keys: &str| example.replace("reference_free = false", &format!("reference_free = false\n{keys}"));
    let keys = "loss_weights = [0.8, 0.25]\nrpo_alpha = 0.5\nld_alpha = 0.25\nf_divergence = \"alpha_divergence\"\n\
                f_alpha_divergence_coef = 0.3\nsimpo_gamma = 0.7\ndiscopop_tau = 0.02";
    let text = with(keys).replace("loss_type = \"sigmoid\"", "loss_type = \"sigmoid,bco_pair\"");
    let config = PipelineConfig::from_toml(&text, root).unwrap();
    let loss = config.dpo_loss().unwrap();
    let terms = [(DpoLossType::Sigmoid, 0.8), (DpoLossType::BcoPair, 0.25)];
    assert_eq!(loss.losses().terms(), &terms);
    assert_eq!((loss.rpo_alpha, loss.f_divergence), (Some(0.5), FDivergence::AlphaDivergence(0.3)));
    assert_eq!((loss.simpo_gamma, loss.discopop_tau, loss.ld_alpha), (0.7, 0.02, Some(0.25)));
    let written = toml::to_string_pretty(&config).unwrap();
    let again = PipelineConfig::from_toml(&written, root).unwrap().dpo_loss().unwrap();
    assert_eq!(format!("{again:?}"), format!("{loss:?}"));
    for (keys, want) in [
        ("loss_weights = [1.0, 2.0]", "`[dpo] loss_weights` has 2 weights for 1 loss types"),
        ("rpo_alpha = -0.5", "`[dpo] rpo_alpha` must be finite and >= 0"),
        ("ld_alpha = 1.5", "`[dpo] ld_alpha` must be in [0, 1], got 1.5"),
        ("ld_alpha = nan", "`[dpo] ld_alpha` must be in [0, 1], got NaN"),
        ("f_divergence = \"kl\"", "`[dpo] f_divergence` is refused: unknown f-divergence `kl`"),
        ("f_divergence = \"alpha_divergence\"\nf_alpha_divergence_coef = 0.0", "`[dpo] f_alpha_divergence_coef`"),
        ("simpo_gamma = nan", "`[dpo] simpo_gamma` must be finite"),
        ("discopop_tau = -1.0", "`[dpo] discopop_tau` must be finite and > 0"),
        ("label_smoothing = 0.5", "duplicate key"),
    ] {
        let err = PipelineConfig::from_toml(&with(keys), root).and_then(|c| c.dpo_loss()).unwrap_err().to_string();
        assert!(err.contains(want), "{keys}: {err}");
    }
}

#[test]
fn without_pairs_dpo_trains_nothing_and_the_policy_stays_as_it_was() {
    let world = World::new("no-pairs");
    // Sampling from the most likely token alone (a nucleus of one) gives K equal answers; point sifting pairs none
    // of them (their scores are equal).
    let config = CONFIG.replace("strategy = \"pair-rank\"", "strategy = \"point-sift\"");
    world.write_config(&config.replace("seed = 7", "seed = 7\ntemperature = 1.0\ntop_p = 0.000001"));
    let (outcome, ran, _) = world.run(RunOptions::default()).unwrap();
    assert!(!outcome.interrupted && ran.contains(&"dpo".to_string()));
    let out = world.out();
    for line in std::fs::read_to_string(out.join("sample/candidates.jsonl")).unwrap().lines() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        let candidates = value["candidates"].as_array().unwrap();
        assert!(candidates.iter().all(|c| c == &candidates[0]), "{line}");
    }
    assert_eq!(std::fs::read(out.join("filter/pairs.jsonl")).unwrap(), b"");
    assert!(unireward::train::run::latest_checkpoint(&out.join("dpo")).is_none());
    let evaluation = |stage: &str| std::fs::read(out.join(stage).join("evaluation.json")).unwrap();
    assert_eq!(evaluation("policy-eval-before"), evaluation("policy-eval-after"));
}

/// `[filter] reasoned`: the filter stage generates and parses each judgment's answer — the pairs and audit of
/// `unireward filter --reasoned` on the same candidates with the same judge — the judge-eval stage judges reasoned
/// too (`unireward eval --reasoned`'s metrics), and a changed `max_new_tokens` reruns the stages from the judge-eval on.
#[test]
fn a_reasoned_filter_stage_is_the_filter_commands_reasoned_run() {
    let world = World::new("reasoned");
    let reasoned = |tokens: usize| {
        CONFIG.replacen(
            "strategy = \"pair-rank\"",
            &format!("strategy = \"pair-rank\"\nreasoned = true\nmax_new_tokens = {tokens}"),
            1,
        )
    };
    world.write_config(&reasoned(6));
    let (outcome, ran, _) = world.run(RunOptions::default()).unwrap();
    assert!(!outcome.interrupted && ran == names(&OFFLINE), "{ran:?}");
    let out = world.out();
    let audit = std::fs::read_to_string(out.join("filter/pairs.jsonl.audit.jsonl")).unwrap();
    assert!(!audit.is_empty() && audit.lines().all(|l| l.contains("\"answer\"")), "{audit}");

    let (_, judge) = unireward::train::run::latest_checkpoint(&out.join("judge-train")).unwrap();
    let by_hand = world.0.join("by-hand.jsonl");
    let output = Command::new(env!("CARGO_BIN_EXE_unireward"))
        .args(["filter", "--strategy", "pair-rank", "--reasoned", "--max-new-tokens", "6", "--batch", "8"])
        .arg("--judge")
        .arg(&judge)
        .arg("--candidates")
        .arg(out.join("sample/candidates.jsonl"))
        .arg("--media-folder")
        .arg(&world.0)
        .arg("--out")
        .arg(&by_hand)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let read = |p: &Path| std::fs::read_to_string(p).unwrap();
    assert_eq!(read(&out.join("filter/pairs.jsonl")), read(&by_hand));
    assert_eq!(audit, read(&world.0.join("by-hand.jsonl.audit.jsonl")));

    let eval = Command::new(env!("CARGO_BIN_EXE_unireward"))
        .args(["eval", "--reasoned", "--max-new-tokens", "6", "--batch", "8", "--json", "--model"])
        .arg(&judge)
        .arg("--data")
        .arg(world.0.join("judge-held-out.jsonl"))
        .output()
        .unwrap();
    assert!(eval.status.success(), "{}", String::from_utf8_lossy(&eval.stderr));
    let by_cli: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    let summary: serde_json::Value = serde_json::from_str(&read(&out.join("judge-eval/summary.json"))).unwrap();
    assert_eq!(summary, by_cli["summary"]);
    let results = read(&out.join("judge-eval/summary.results.jsonl"));
    assert!(!results.is_empty() && results.lines().all(|l| l.contains("\"reasoned_max_new_tokens\":6")), "{results}");

    world.write_config(&reasoned(5));
    let (_, ran, skipped) = world.run(RunOptions::default()).unwrap();
    // Every stage after a rerun one reruns (each record holds its upstream's).
    assert_eq!(ran, names(&OFFLINE[1..]));
    assert_eq!(skipped, names(&["judge-train"]));
}
