//! `unireward train-judge` (the binary) on a checkpoint assembled from fixtures (the Qwen2 model
//! `tests/fixtures/qwen2/chat_tied` with the tokenizer and chat template of `tests/fixtures/qwen2/tokenizer`) and a
//! generated conversation file: a run killed at a random step and resumed ends with parameters bitwise equal to an
//! uninterrupted run's; metrics are logged and plotted; bad options are one clear error line.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use rand::Rng;
use unireward::train::plots::{PLOT_HEIGHT, PLOT_WIDTH};
use unireward::train::sft::latest_checkpoint;

mod common;

use common::Scratch;

/// The scratch checkpoint and 24 conversations of two tasks.
fn scratch(name: &str) -> Scratch {
    let scratch = Scratch::new(&format!("train-judge-{name}"));
    let mut lines = String::new();
    for i in 0..24 {
        let (q, a) = (format!("Which is better, {i} or {}?", i + 1), format!("{} is better.", i % 3));
        let task = if i % 2 == 0 { "pair" } else { "score" };
        lines += &format!(
            r#"{{"task": "{task}", "conversations": [{{"from": "human", "value": "{q}"}}, {{"from": "gpt", "value": "{a}"}}]}}"#
        );
        lines.push('\n');
    }
    std::fs::write(scratch.path("data.jsonl"), lines).unwrap();
    scratch
}

fn command(scratch: &Scratch, out: &str, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_unireward"));
    let path = |p: &str| scratch.path(p).to_str().unwrap().to_string();
    command.args(["train-judge", "--model", &path("model"), "--data", &path("data.jsonl"), "--out", &path(out)]);
    let defaults = [
        ("--epochs", "3"),
        ("--batch-size", "2"),
        ("--grad-accum", "2"),
        ("--lr", "1e-3"),
        ("--save-every", "1"),
        ("--seed", "7"),
    ];
    for (flag, value) in defaults.into_iter().filter(|(flag, _)| !extra.contains(flag)) {
        command.args([flag, value]);
    }
    command.args(extra);
    command
}

fn succeed(output: Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "unireward failed: {stderr}");
    stderr
}

/// The last checkpoint's weights, after `steps` (epochs of 12 micro-batches, 2 per step).
fn final_weights(dir: &Path, steps: u64) -> Vec<u8> {
    let (step, checkpoint) = latest_checkpoint(dir).expect("a checkpoint");
    assert_eq!(step, steps);
    std::fs::read(checkpoint.join("model.safetensors")).unwrap()
}

#[test]
fn a_run_killed_at_a_random_step_resumes_to_bitwise_equal_parameters() {
    let scratch = scratch("resume");
    let steps = 18;
    let stderr = succeed(command(&scratch, "straight", &[]).output().unwrap());
    assert!(stderr.contains("step 18/18"), "{stderr}");
    let straight = final_weights(&scratch.0.join("straight"), steps);
    let log = std::fs::read_to_string(scratch.0.join("straight/metrics.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 18);
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert!(first["loss"].as_f64().unwrap() > 0.0 && first["task_loss"].as_array().unwrap().len() == 2, "{first}");
    for plot in ["loss.png", "lr.png", "grad_norm.png", "tokens.png"] {
        let image = image::open(scratch.0.join("straight").join(plot)).unwrap_or_else(|e| panic!("{plot}: {e}"));
        assert_eq!((image.width(), image.height()), (PLOT_WIDTH, PLOT_HEIGHT), "{plot}");
    }

    let kill_after = rand::thread_rng().gen_range(1..17);
    let out = scratch.0.join("killed");
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
        for step in kill_after + 1..=18 {
            std::fs::remove_dir_all(out.join(format!("checkpoint-{step}"))).unwrap();
        }
    } else {
        assert!(at < 18, "killed after the last checkpoint");
    }
    let stderr = succeed(command(&scratch, "killed", &["--resume"]).output().unwrap());
    assert!(!stderr.contains("step 1/18"), "the resumed run started over: {stderr}");
    assert!(final_weights(&out, steps) == straight, "resumed from step {at} (kill after {kill_after}): weights differ");
}

#[test]
fn ctrl_c_saves_a_checkpoint_and_exits_cleanly() {
    let scratch = scratch("sigint");
    let (epochs, steps) = ("30", 180);
    succeed(command(&scratch, "straight", &["--epochs", epochs]).output().unwrap());
    let straight = final_weights(&scratch.0.join("straight"), steps);
    let out = scratch.0.join("stopped");
    // Checkpoints only at the end: the one found after the interrupt is the interrupt's own.
    let mut stopped = command(&scratch, "stopped", &["--save-every", "0", "--epochs", epochs]);
    let child = stopped.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    // The handler is in place once the first step is logged; the interrupt then lands at a random later step.
    let log = out.join("metrics.jsonl");
    while std::fs::read_to_string(&log).map_or(true, |l| l.is_empty()) {
        std::thread::sleep(Duration::from_micros(200));
    }
    std::thread::sleep(Duration::from_millis(rand::thread_rng().gen_range(0..30)));
    let pid = child.id().to_string();
    let sent = Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(sent.success());
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let (step, _) = latest_checkpoint(&out).expect("a checkpoint at the interrupt");
    let ended = if step < steps { "interrupted after".to_string() } else { format!("done: {steps} steps") };
    assert!(stdout.contains(&ended), "{stdout}");
    eprintln!("interrupted at step {step}: {stdout}");
    assert!(out.join("loss.png").is_file() && stdout.contains("loss.png"), "no plots after the interrupt: {stdout}");
    succeed(command(&scratch, "stopped", &["--resume", "--epochs", epochs]).output().unwrap());
    assert!(final_weights(&out, steps) == straight, "resumed from the interrupt at step {step}: weights differ");
}

#[test]
fn bad_options_and_media_are_one_clear_error() {
    let scratch = scratch("errors");
    let output = command(&scratch, "out", &["--grad-accum", "0"]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("`--grad-accum` must be at least 1"));
    std::fs::write(
        scratch.0.join("data.jsonl"),
        r#"{"image": "a.png", "conversations": [{"from": "human", "value": "<image>\nRate"}, {"from": "gpt", "value": "4"}]}"#,
    )
    .unwrap();
    std::fs::write(scratch.0.join("a.png"), b"not read").unwrap();
    let output = command(&scratch, "out", &[]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.lines().count() == 1, "{stderr}");
}

#[test]
fn task_weights_and_length_grouping_reach_the_sampler() {
    let scratch = scratch("mixing");
    // `score` (the second task to appear, index 1) weighted 0: no step trains on it, every step on `pair`.
    succeed(command(&scratch, "weighted", &["--task-weight", "score=0", "--save-every", "0"]).output().unwrap());
    let log = std::fs::read_to_string(scratch.path("weighted/metrics.jsonl")).unwrap();
    let steps: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(steps.len(), 3 * 12 / 2 / 2, "12 `pair` conversations an epoch, 2 a micro-batch, 2 a step");
    for step in &steps {
        let tasks = step["task_loss"].as_array().unwrap();
        assert!(tasks[0].is_f64() && tasks[1].is_null(), "{step}");
    }

    // The batches' grouping is part of what a resumed run must share with the run it continues.
    succeed(command(&scratch, "grouped", &["--epochs", "1"]).output().unwrap());
    let output = command(&scratch, "grouped", &["--epochs", "1", "--resume", "--no-group-by-length"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a resume with other batches was accepted: {stderr}");

    for (weight, wanted) in [
        ("score", "`score` is not TASK=WEIGHT"),
        ("score=much", "the weight of `score`"),
        ("audio=1", "a task the data does not have"),
        ("score=-1", "weights are between 0 and"),
    ] {
        let output = command(&scratch, "bad", &["--task-weight", weight]).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(wanted), "--task-weight {weight}: {stderr}");
        assert!(!scratch.path("bad/metrics.jsonl").exists(), "--task-weight {weight} wrote a log");
    }
}

/// `--max-steps 8` over epochs of 6 steps runs into the second epoch: its steps are the first 8 of a two-epoch run
/// (a constant schedule, so the learning rates agree), logs and weights alike; 0 is refused.
#[test]
fn max_steps_counts_the_run_in_steps_across_epochs() {
    let scratch = scratch("max-steps");
    let flat = ["--schedule", "constant", "--warmup-ratio", "0"];
    let stderr = succeed(command(&scratch, "steps", &[&flat[..], &["--max-steps", "8"]].concat()).output().unwrap());
    assert!(stderr.contains("step 8/8"), "{stderr}");
    succeed(command(&scratch, "epochs", &[&flat[..], &["--epochs", "2"]].concat()).output().unwrap());
    let log = |run: &str| std::fs::read_to_string(scratch.0.join(run).join("metrics.jsonl")).unwrap();
    let (steps, epochs) = (log("steps"), log("epochs"));
    assert_eq!((steps.lines().count(), epochs.lines().count()), (8, 12));
    assert!(epochs.lines().take(8).eq(steps.lines()), "the first 8 steps differ:\n{steps}\n{epochs}");
    let weights = |run: &str| std::fs::read(scratch.0.join(run).join("checkpoint-8/model.safetensors")).unwrap();
    assert!(weights("steps") == weights("epochs"), "checkpoint-8 differs");

    let output = command(&scratch, "zero", &["--max-steps", "0"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("`--max-steps` must be at least 1"), "{stderr}");
}
