//! `unireward train-reward` (the binary) on the scratch chat checkpoint and generated pair files: it trains, logs
//! TRL's RewardTrainer names with the held-out evaluation under `eval/`, plots them and writes a checkpoint with the
//! head; bad options and data are one clear error line with nothing written.

mod common;

use std::process::{Command, Output};

use common::{pairs, Scratch};
use unireward::train::reward::load_score;
use unireward::train::run::latest_checkpoint;
use unireward::Device;

fn scratch(name: &str) -> Scratch {
    let scratch = Scratch::new(&format!("cli-reward-{name}"));
    std::fs::write(scratch.path("pairs.jsonl"), pairs(12)).unwrap();
    std::fs::write(scratch.path("held_out.jsonl"), pairs(16).lines().skip(12).collect::<Vec<_>>().join("\n")).unwrap();
    scratch
}

fn command(scratch: &Scratch, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_unireward"));
    let path = |p: &str| scratch.path(p).to_str().unwrap().to_string();
    command.args(["train-reward", "--model", &path("model"), "--out", &path("out")]);
    command.args(["--epochs", "2", "--batch-size", "2", "--grad-accum", "2", "--lr", "1e-3", "--seed", "5"]);
    command.args(extra);
    command
}

fn succeed(output: Output) -> (String, String) {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "unireward failed: {stderr}");
    (String::from_utf8_lossy(&output.stdout).into_owned(), stderr)
}

#[test]
fn train_reward_logs_trl_names_and_held_out_metrics_and_writes_the_head() {
    let scratch = scratch("smoke");
    let (pairs, held_out) = (scratch.path("pairs.jsonl"), scratch.path("held_out.jsonl"));
    let extra = ["--pairs", pairs.to_str().unwrap(), "--eval", held_out.to_str().unwrap(), "--eval-every", "2"];
    let (stdout, stderr) = succeed(command(&scratch, &extra).output().unwrap());
    // 12 pairs in micro-batches of 2, 2 per step: 3 steps an epoch.
    assert!(stdout.contains("done: 6 steps of 6") && stderr.contains("step 6/6"), "{stdout}{stderr}");
    let log = std::fs::read_to_string(scratch.path("out/metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 6);
    for key in ["loss", "accuracy", "rewards/chosen", "rewards/rejected", "margin", "grad_norm", "lr", "tokens"] {
        assert!(lines.iter().all(|l| l[key].is_number()), "`{key}` missing: {log}");
    }
    let evaluated: Vec<u64> =
        lines.iter().filter(|l| l["eval/loss"].is_number()).map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(evaluated, [2, 4, 6], "{log}");
    for key in ["eval/accuracy", "eval/rewards/chosen", "eval/rewards/rejected", "eval/margin"] {
        assert!(lines[5][key].is_number(), "`{key}` missing: {log}");
    }
    assert!(scratch.path("out/loss.png").is_file() && stdout.contains("loss.png"), "{stdout}");
    let (_, checkpoint) = latest_checkpoint(&scratch.path("out")).unwrap();
    assert!(load_score(&checkpoint, 16, Device::Cpu).unwrap().is_some());
}

#[test]
fn bad_options_and_files_are_one_clear_error_with_nothing_written() {
    let scratch = scratch("errors");
    let refused = |extra: &[&str], what: &str| {
        let output = command(&scratch, extra).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(what), "{stderr}");
        assert!(!scratch.path("out").exists(), "--out was written for: {stderr}");
    };
    let pairs = scratch.path("pairs.jsonl");
    let pairs = pairs.to_str().unwrap();
    refused(&[], "--pairs");
    refused(&["--pairs", pairs, "--rankings", pairs], "cannot be used with");
    refused(&["--pairs", pairs, "--loss", "listwise"], "unknown loss `listwise`");
    refused(&["--pairs", pairs, "--loss", "kwise", "--center-rewards-coefficient", "0.1"], "Bradley–Terry option");
    refused(&["--rankings", pairs, "--loss", "kwise"], "no usable record");
    refused(&["--pairs", pairs, "--warmup-ratio", "2"], "`--warmup-ratio` must be in [0, 1]");
}
