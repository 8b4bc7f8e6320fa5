//! `unireward eval` on a small benchmark file judged by the tiny LLaVA-OneVision judge of tests/judge_checkpoint: the
//! summary must be the metrics of the printed per-pair verdicts, and a bad line must fail naming its line and field.

mod judge_checkpoint;

use std::process::{Command, Output};

use judge_checkpoint::{image, judge_dir};

fn unireward(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_unireward")).arg("eval").args(args).output().expect("run unireward")
}

#[test]
fn summary_is_the_metrics_of_the_verdicts() {
    let dir = judge_dir("eval");
    let (a, b, c) = (image("two_images_0.png"), image("two_images_1.png"), image("anyres_0.png"));
    let (a, b, c) = (a.to_str().unwrap(), b.to_str().unwrap(), c.to_str().unwrap());
    let lines = [
        format!(r#"{{"task": "image-generation", "caption": "red", "candidates": ["{a}", "{b}"], "label": "A"}}"#),
        format!(r#"{{"task": "image-generation", "caption": "blue", "candidates": ["{b}", "{a}"], "label": "tie"}}"#),
        format!(r#"{{"task": "image-generation", "caption": "red", "candidates": ["{b}", "{c}"], "label": "B"}}"#),
        format!(
            r#"{{"task": "image-understanding", "question": "q", "media": "{c}", "candidates": ["x", "y"], "label": "B", "subset": "povid"}}"#
        ),
    ];
    let data = dir.0.join("bench.jsonl");
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    let out =
        unireward(&["--model", dir.0.to_str().unwrap(), "--data", data.to_str().unwrap(), "--batch", "3", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pairs = got["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), 4);
    let verdicts: Vec<&str> = pairs.iter().map(|p| p["verdict"].as_str().unwrap()).collect();
    let truths = ["A", "tie", "B"];
    let correct = (0..3).filter(|&i| verdicts[i] == truths[i]).count();
    let summary = &got["summary"];
    assert_eq!(summary["image_generation.pairs"], 3);
    assert!((summary["image_generation.tau"].as_f64().unwrap() - correct as f64 / 3.0).abs() < 1e-12);
    let correct_non_tie = [0, 2].iter().filter(|&&i| verdicts[i] == truths[i]).count();
    assert!((summary["image_generation.diff"].as_f64().unwrap() - correct_non_tie as f64 / 2.0).abs() < 1e-12);
    let vl = if verdicts[3] == "B" { 1.0 } else { 0.0 };
    assert_eq!(summary["vl_reward_bench.hallucination"].as_f64().unwrap(), vl);
    assert!(summary["vl_reward_bench.general"].is_null() && summary["vl_reward_bench.macro"].is_null());
    let consistent = pairs.iter().filter(|p| p["position_consistent"] == true).count();
    assert!((summary["position_consistency"].as_f64().unwrap() - consistent as f64 / 4.0).abs() < 1e-12);
    let ece = summary["ece"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&ece));
}

#[test]
fn bad_lines_fail_naming_line_and_field() {
    let dir = judge_dir("eval-bad");
    let model = dir.0.to_str().unwrap();
    let fails = |line: &str, needle: &str| {
        let data = dir.0.join("bad.jsonl");
        std::fs::write(&data, format!("\n{line}\n")).unwrap();
        let out = unireward(&["--model", model, "--data", data.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("line 2") && err.contains(needle), "`{needle}` in: {err}");
    };
    fails(r#"{"task": "image-generation", "candidates": ["a", "b"], "label": "A"}"#, "`caption` is missing");
    fails(r#"{"task": "image-generation", "caption": "c", "candidates": ["a"], "label": "A"}"#, "`candidates`");
    fails(r#"{"task": "image-generation", "caption": "c", "candidates": ["a", "b"], "label": "C"}"#, "`label`");
    fails(r#"{"task": "image-gen", "caption": "c", "candidates": ["a", "b"], "label": "A"}"#, "unknown task");
    fails(r#"{"task": "image-generation", "caption": "c", "candidates": ["a", "b"], "lable": "A"}"#, "lable");
}
