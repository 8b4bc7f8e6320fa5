//! `unireward eval` on a small benchmark file judged by the tiny LLaVA-OneVision judge of tests/judge_checkpoint: the
//! summary must be the metrics of the printed per-pair verdicts, a run killed mid-way and resumed writes the bytes
//! and reports the metrics of an uninterrupted one (a resume with another --batch is refused, the file untouched),
//! `--reasoned` judges as the library's reasoned benchmark run, and a bad line must fail naming its line and field.

mod common;
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
fn reasoned_runs_judge_as_the_library_does() {
    let dir = judge_dir("eval-reasoned");
    let c = image("anyres_0.png");
    let c = c.to_str().unwrap();
    let lines = [
        format!(
            r#"{{"task": "image-understanding", "question": "q", "media": "{c}", "candidates": ["x", "y"], "label": "B"}}"#
        ),
        format!(
            r#"{{"task": "image-understanding", "question": "r", "media": "{c}", "candidates": ["z", "x"], "label": "A"}}"#
        ),
    ];
    let data = dir.0.join("bench.jsonl");
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    let (model, data_arg) = (dir.0.to_str().unwrap(), data.to_str().unwrap());
    let out = unireward(&["--model", model, "--data", data_arg, "--reasoned", "--max-new-tokens", "3", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let judge = unireward::judge::Judge::load(&dir.0, unireward::DType::F32, unireward::Device::Cpu).unwrap();
    let pairs = unireward::judge::bench::read_bench_file(&data, &dir.0).unwrap();
    let cfg = unireward::judge::GenerationConfig { max_new_tokens: 3, ..Default::default() };
    let options = unireward::judge::bench::BenchOptions { reasoned: Some(cfg), ..Default::default() };
    let never = std::sync::atomic::AtomicBool::new(false);
    let expected = unireward::judge::bench::evaluate_bench(&judge, &pairs, &options, &never, |_, _| {}).unwrap();
    for (printed, result) in got["pairs"].as_array().unwrap().iter().zip(&expected.results) {
        assert_eq!(printed["verdict"], result.verdict.as_str());
        let probs: Vec<f64> = printed["probs"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap()).collect();
        assert_eq!(probs, result.probs);
    }
    assert_eq!(got["summary"], serde_json::to_value(&expected.summary).unwrap());

    let out = unireward(&["--model", model, "--data", data_arg, "--max-new-tokens", "3"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--reasoned"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn results_resume_after_a_kill_with_the_same_bytes_and_metrics() {
    let dir = judge_dir("eval-resume");
    let (a, b, c) = (image("two_images_0.png"), image("two_images_1.png"), image("anyres_0.png"));
    let (a, b, c) = (a.to_str().unwrap(), b.to_str().unwrap(), c.to_str().unwrap());
    let lines: Vec<String> = (0..11)
        .map(|i| match i % 3 {
            0 => format!(r#"{{"task": "image-generation", "caption": "red {i}", "candidates": ["{a}", "{b}"], "label": "A"}}"#),
            1 => format!(r#"{{"task": "image-generation", "caption": "blue {i}", "candidates": ["{c}", "{a}"], "label": "tie"}}"#),
            _ => format!(
                r#"{{"task": "image-understanding", "question": "q{i}", "media": "{c}", "candidates": ["x", "y"], "label": "B", "subset": "povid"}}"#
            ),
        })
        .collect();
    let data = dir.0.join("bench.jsonl");
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    let model = dir.0.to_str().unwrap();
    let run = |out: &str, extra: &[&str]| {
        let out = dir.0.join(out);
        let mut command = Command::new(env!("CARGO_BIN_EXE_unireward"));
        command.args(["eval", "--model", model, "--data", data.to_str().unwrap(), "--batch", "2", "--json"]);
        command.arg("--out").arg(out).args(extra);
        command
    };
    let summary = |out: Output| -> serde_json::Value {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let straight = summary(run("straight.jsonl", &[]).output().unwrap());
    let without_out =
        summary(unireward(&["--model", model, "--data", data.to_str().unwrap(), "--batch", "2", "--json"]));
    assert_eq!(straight, without_out);
    let written = std::fs::read_to_string(dir.0.join("straight.jsonl")).unwrap();
    assert_eq!(written.lines().count(), 11);

    let kill_after = rand::Rng::gen_range(&mut rand::thread_rng(), 1..9);
    let killed = dir.0.join("killed.jsonl");
    let status = common::kill_when_lines(&mut run("killed.jsonl", &[]), &killed, kill_after);
    eprintln!("killed after {kill_after} pairs: {status}");
    // A line cut short, as a kill during a write leaves it.
    let mut torn = std::fs::read(&killed).unwrap();
    torn.extend_from_slice(br#"{"index": 9"#);
    std::fs::write(&killed, torn).unwrap();
    let resumed = summary(run("killed.jsonl", &["--resume"]).output().unwrap());
    assert!(std::fs::read_to_string(&killed).unwrap() == written, "killed after {kill_after}: files differ");
    assert_eq!(resumed, straight);

    // Another benchmark's results are not continued.
    std::fs::write(dir.0.join("other.jsonl"), written.replace(r#""label":"A""#, r#""label":"B""#)).unwrap();
    let out = run("other.jsonl", &["--resume"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("another run's output"), "{err}");
    let out = run("straight.jsonl", &[]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("pass --resume"), "{err}");
}

#[test]
fn resuming_with_another_batch_is_refused_and_changes_nothing() {
    let dir = judge_dir("eval-batch");
    let a = image("two_images_0.png");
    let a = a.to_str().unwrap();
    let lines: Vec<String> = (0..5)
        .map(|i| {
            format!(
                r#"{{"task": "image-generation", "caption": "red {i}", "candidates": ["{a}", "{a}"], "label": "tie"}}"#
            )
        })
        .collect();
    let data = dir.0.join("bench.jsonl");
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    let (model, data, out) = (dir.0.to_str().unwrap(), data.to_str().unwrap(), dir.0.join("out.jsonl"));
    let out = out.to_str().unwrap();
    let first = unireward(&["--model", model, "--data", data, "--batch", "2", "--out", out]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    // As a kill after the first batch and a half leaves it.
    let written = std::fs::read_to_string(out).unwrap();
    let kept: String = written.lines().take(3).map(|l| format!("{l}\n")).collect();
    std::fs::write(out, &kept).unwrap();
    let resumed = unireward(&["--model", model, "--data", data, "--batch", "3", "--out", out, "--resume"]);
    let err = String::from_utf8_lossy(&resumed.stderr);
    assert!(!resumed.status.success() && err.contains("--batch 2") && err.contains("--batch 3"), "{err}");
    assert_eq!(std::fs::read_to_string(out).unwrap(), kept, "the refused resume changed the file");
    let resumed = unireward(&["--model", model, "--data", data, "--batch", "2", "--out", out, "--resume"]);
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    assert_eq!(std::fs::read_to_string(out).unwrap(), written);
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
