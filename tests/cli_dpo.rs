//! `unireward dpo` (the binary) on the scratch chat checkpoint and a generated pair file: it trains, logs TRL's
//! metric names and writes a checkpoint that loads; a run killed at a random step and resumed ends with parameters
//! bitwise equal to an uninterrupted run's; bad options and bad pair files are one clear error line with nothing
//! written.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{pairs, Scratch};
use rand::Rng;
use unireward::model::Qwen2Model;
use unireward::train::run::latest_checkpoint;
use unireward::{DType, Device};

fn scratch(name: &str) -> Scratch {
    let scratch = Scratch::new(&format!("cli-dpo-{name}"));
    std::fs::write(scratch.path("pairs.jsonl"), pairs(12)).unwrap();
    scratch
}

fn command(scratch: &Scratch, out: &str, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_unireward"));
    let path = |p: &str| scratch.path(p).to_str().unwrap().to_string();
    command.args(["dpo", "--policy", &path("model"), "--pairs", &path("pairs.jsonl"), "--out", &path(out)]);
    let defaults = [
        ("--epochs", "3"),
        ("--batch-size", "2"),
        ("--grad-accum", "2"),
        ("--lr", "1e-3"),
        ("--beta", "0.5"),
        ("--save-every", "1"),
        ("--seed", "5"),
    ];
    for (flag, value) in defaults.into_iter().filter(|(flag, _)| !extra.contains(flag)) {
        command.args([flag, value]);
    }
    command.args(extra);
    command
}

fn succeed(output: Output) -> (String, String) {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "unireward failed: {stderr}");
    (String::from_utf8_lossy(&output.stdout).into_owned(), stderr)
}

/// The last checkpoint's weights, after `steps`.
fn final_weights(dir: &Path, steps: u64) -> Vec<u8> {
    let (step, checkpoint) = latest_checkpoint(dir).expect("a checkpoint");
    assert_eq!(step, steps);
    std::fs::read(checkpoint.join("model.safetensors")).unwrap()
}

#[test]
fn dpo_trains_logs_trl_metrics_and_writes_a_checkpoint_that_loads() {
    let scratch = scratch("smoke");
    let (stdout, stderr) = succeed(command(&scratch, "out", &["--save-every", "0"]).output().unwrap());
    // 12 pairs in micro-batches of 2, 2 per step: 3 steps an epoch.
    assert!(stdout.contains("done: 9 steps of 9") && stderr.contains("step 9/9"), "{stdout}{stderr}");
    assert!(stderr.contains("reference log-probabilities: Computed"), "{stderr}");
    let log = std::fs::read_to_string(scratch.path("out/metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 9);
    for key in [
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
        "grad_norm",
        "lr",
        "tokens",
    ] {
        assert!(lines.iter().all(|l| l[key].is_number()), "`{key}` missing: {log}");
    }
    assert!((lines[0]["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-5, "{}", lines[0]);
    assert!(lines[8]["loss"].as_f64().unwrap() < lines[0]["loss"].as_f64().unwrap(), "{log}");
    for plot in ["loss.png", "rewards.png", "logps.png", "lr.png"] {
        let image = image::open(scratch.path("out").join(plot)).unwrap_or_else(|e| panic!("{plot}: {e}"));
        assert!(image.width() > 0 && stdout.contains(plot), "{plot}: {stdout}");
    }
    let (_, checkpoint) = latest_checkpoint(&scratch.path("out")).unwrap();
    let trained = Qwen2Model::load(&checkpoint, DType::F32, Device::Cpu).unwrap();
    let initial = Qwen2Model::load(&scratch.path("model"), DType::F32, Device::Cpu).unwrap();
    let embed = |m: &Qwen2Model| m.weights.embed_tokens.to_vec::<f32>().unwrap();
    assert_ne!(embed(&trained), embed(&initial));
    let (_, stderr) = succeed(command(&scratch, "out", &["--save-every", "0"]).output().unwrap());
    assert!(stderr.contains("reference log-probabilities: Cached"), "{stderr}");
}

#[test]
fn a_run_killed_at_a_random_step_resumes_to_bitwise_equal_parameters() {
    let scratch = scratch("resume");
    let steps = 9;
    succeed(command(&scratch, "straight", &[]).output().unwrap());
    let straight = final_weights(&scratch.path("straight"), steps);
    let kill_after = rand::thread_rng().gen_range(1..steps - 1);
    let out = scratch.path("killed");
    let mut child = command(&scratch, "killed", &[]).stderr(std::process::Stdio::null()).spawn().unwrap();
    let killed = loop {
        if latest_checkpoint(&out).is_some_and(|(step, _)| step >= kill_after) {
            child.kill().unwrap();
            break child.wait().unwrap();
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    let (at, _) = latest_checkpoint(&out).unwrap();
    eprintln!("kill after {kill_after}: latest checkpoint {at}, child {killed}");
    if killed.success() {
        // The child outran the poll: drop the checkpoints after `kill_after`, as a kill there would have left them.
        for step in kill_after + 1..=steps {
            std::fs::remove_dir_all(out.join(format!("checkpoint-{step}"))).unwrap();
        }
    } else {
        assert!(at < steps, "killed after the last checkpoint");
    }
    let (_, stderr) = succeed(command(&scratch, "killed", &["--resume"]).output().unwrap());
    assert!(!stderr.contains("step 1/9"), "the resumed run started over: {stderr}");
    assert!(final_weights(&out, steps) == straight, "resumed from step {at} (kill after {kill_after}): weights differ");
}

#[test]
fn bad_options_and_pair_files_are_one_clear_error_with_nothing_written() {
    let scratch = scratch("errors");
    let refused = |extra: &[&str], what: &str| {
        let output = command(&scratch, "out", extra).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.lines().count() == 1 && stderr.contains(what), "{stderr}");
        assert!(!scratch.path("out").exists(), "--out was written for: {stderr}");
    };
    refused(&["--loss-type", "sigmoidd"], "unknown DPO loss type `sigmoidd`");
    refused(&["--beta", "0"], "`--beta` must be finite and > 0");
    refused(&["--beta", "-0.1"], "`--beta` must be finite and > 0");
    refused(&["--label-smoothing", "0.5"], "`--label-smoothing`");
    refused(&["--loss-type", "sigmoid,nope"], "`--loss-type` is refused: unknown DPO loss type `nope`");
    refused(&["--loss-type", "sigmoid,sigmoid"], "`--loss-type` is refused: the sigmoid loss is listed twice");
    refused(&["--loss-type", "sigmoid,simpo"], "`--loss-type` is refused: the simpo loss cannot be mixed");
    refused(&["--loss-type", "sigmoid,hinge", "--loss-weights", "0.5"], "`--loss-weights` has 1 weights for 2");
    refused(&["--loss-type", "sigmoid,hinge", "--loss-weights", "0.5,nan"], "`--loss-weights` holds NaN");
    refused(&["--rpo-alpha", "-1"], "`--rpo-alpha` must be finite and >= 0, got -1");
    refused(&["--ld-alpha", "-0.5"], "`--ld-alpha` must be in [0, 1], got -0.5");
    refused(&["--ld-alpha", "0.5", "--reference-free"], "`--ld-alpha` needs a reference");
    refused(&["--ld-alpha", "0.5", "--loss-type", "ipo"], "`--ld-alpha` does not go with ipo");
    refused(&["--f-divergence", "kl"], "`--f-divergence` is refused: unknown f-divergence `kl`");
    refused(&["--f-divergence", "alpha_divergence", "--f-alpha-divergence-coef", "0"], "`--f-alpha-divergence-coef`");
    refused(&["--simpo-gamma", "inf"], "`--simpo-gamma` must be finite");
    refused(&["--discopop-tau", "0"], "`--discopop-tau` must be finite and > 0");
    // clap's own errors add a line pointing to --help.
    let output = command(&scratch, "out", &["--schedule", "cubic"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("unknown schedule `cubic`; known: constant, linear, cosine")
    );
    assert!(!output.status.success() && !scratch.path("out").exists());
    std::fs::write(scratch.path("pairs.jsonl"), "{\"prompt\": \"Q\", \"rejected\": \"B\"}\n").unwrap();
    refused(&[], "line 1: no `chosen` field");
    std::fs::write(
        scratch.path("pairs.jsonl"),
        pairs(4) + "{\"prompt\": \"Q\", \"chosen\": \"\", \"rejected\": \"B\"}\n",
    )
    .unwrap();
    refused(&["--refuse-bad-records"], "line 5: `chosen` is empty");
}
