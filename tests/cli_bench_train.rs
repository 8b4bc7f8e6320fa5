//! `unireward bench train` (the binary) at tiny sizes: the mechanics only — it steps the trainer on a random Qwen2
//! and on the tiny LLaVA-OneVision checkpoint of tests/fixtures/llava (its tower frozen) and prints its table and
//! memory line; bad arguments are one clear error. Times are printed, never asserted.

mod common;

use std::path::Path;
use std::process::Command;

use common::{fail, succeed};

fn bench_train(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_unireward")).args(["bench", "train"]).args(args).output().unwrap()
}

/// The loss of the table's `training step` row, checked to be finite (a training step at random weights).
fn step_loss(stdout: &str) -> f32 {
    let row = stdout.lines().find(|l| l.starts_with("training step")).unwrap_or_else(|| panic!("no row: {stdout}"));
    let fields: Vec<&str> = row.split_whitespace().collect();
    // training step | median value, unit | tokens/s | peak heap value, unit | loss | GFLOP/s
    let loss: f32 = fields[8].parse().unwrap_or_else(|_| panic!("no loss in `{row}`"));
    assert!(loss.is_finite() && loss > 0.0, "{row}");
    loss
}

#[test]
fn steps_a_random_qwen2_and_prints_its_table() {
    let out = succeed(bench_train(&["--layers", "1", "--vocab", "300", "--t", "16", "--n", "2", "--iters", "2"]));
    assert!(out.contains("N = 2, T = 16 (16 text tokens)"), "{out}");
    assert!(out.contains("pass") && out.contains("median") && out.contains("peak heap"), "{out}");
    step_loss(&out);
    assert!(out.contains("peak resident set during the steps"), "{out}");
}

#[test]
fn steps_a_llava_checkpoint_with_its_tower_frozen() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llava/hf");
    let model = model.to_str().unwrap();
    let args = ["--model", model, "--t", "40", "--image", "24x36", "--freeze", "vision", "--recompute", "--iters", "1"];
    let out = succeed(bench_train(&args));
    assert!(out.contains("LlavaOnevision") && out.contains("one 24×36 image per row, anyres"), "{out}");
    assert!(out.contains("(frozen: vision)") && out.contains("(40 text tokens") && out.contains("recompute"), "{out}");
    step_loss(&out);
}

#[test]
fn bad_arguments_are_one_clear_error() {
    assert!(fail(bench_train(&["--image", "0x5"])).contains("`0x5` is not HEIGHTxWIDTH"));
    assert!(fail(bench_train(&["--t", "1", "--vocab", "10", "--layers", "1"])).contains("--t must be at least 2"));
    assert!(fail(bench_train(&["--iters", "0", "--vocab", "10", "--layers", "1"])).contains("--iters"));
    let missing = fail(bench_train(&["--model", "/nonexistent/unireward-checkpoint"]));
    assert!(missing.contains("/nonexistent/unireward-checkpoint"), "{missing}");
}
