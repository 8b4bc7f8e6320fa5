//! `unireward judge` (the binary) on the tiny LLaVA-OneVision judge of tests/judge_checkpoint: its `--json` output
//! must be the library's Judge result for the same request, and bad arguments must fail naming the argument.

mod judge_checkpoint;

use std::process::{Command, Output};

use judge_checkpoint::{image, judge_dir};
use unireward::judge::{Candidate, Context, Judge, MediaFile, Task};
use unireward::{DType, Device};

fn unireward(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_unireward")).arg("judge").args(args).output().expect("run unireward")
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "unireward judge failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn assert_probs(got: &serde_json::Value, want: &[f32]) {
    let got = floats(got);
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!((g - f64::from(*w)).abs() <= 1e-6, "{got:?} vs {want:?}");
    }
}

#[test]
fn pair_and_point_print_the_library_result() {
    let dir = judge_dir("cli");
    let model = dir.0.to_str().unwrap();
    let (a, b) = (image("two_images_0.png"), image("two_images_1.png"));
    let (a_str, b_str) = (a.to_str().unwrap(), b.to_str().unwrap());
    let out = unireward(&[
        "--model",
        model,
        "--task",
        "image-generation",
        "--pair",
        a_str,
        b_str,
        "--caption",
        "a red square",
        "--json",
    ]);
    let got = json(&out);
    let judge = Judge::load(&dir.0, DType::F32, Device::Cpu).unwrap();
    let context = Context::with_field("caption", "a red square");
    let want = judge
        .pairwise(
            Task::ImageGeneration,
            &context,
            Candidate::Media(MediaFile::Image(a.clone())),
            Candidate::Media(MediaFile::Image(b)),
        )
        .unwrap();
    assert_eq!(got["task"], "image_generation");
    assert_eq!(got["mode"], "pairwise");
    assert_probs(&got["probs"], &want.probs);
    assert_probs(&got["forward"], &want.pair.as_ref().unwrap().forward);
    assert_eq!(got["prompt_tokens"], want.prompt_tokens);
    assert_eq!(got["position_consistent"], want.pair.as_ref().unwrap().position_consistent);
    assert!(["A", "B", "tie"].contains(&got["verdict"].as_str().unwrap()));

    let out =
        unireward(&["--model", model, "--task", "image-generation", "--point", a_str, "--caption", "x", "--json"]);
    let got = json(&out);
    let want = judge
        .pointwise(
            Task::ImageGeneration,
            &Context::with_field("caption", "x"),
            Candidate::Media(MediaFile::Image(a.clone())),
        )
        .unwrap();
    assert_probs(&got["probs"], &want.probs);
    assert!((got["score"].as_f64().unwrap() - f64::from(want.score.unwrap())).abs() <= 1e-6);

    // The table for people.
    let out = unireward(&["--model", model, "--task", "image-generation", "--pair", a_str, a_str, "--caption", "x"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("debiased") && text.contains("position consistent") && text.contains("verdict:"), "{text}");
}

#[test]
fn understanding_and_reasoned_judgments_run() {
    let dir = judge_dir("cli-understanding");
    let model = dir.0.to_str().unwrap();
    let img = image("anyres_0.png");
    let out = unireward(&[
        "--model",
        model,
        "--task",
        "image-understanding",
        "--pair",
        "It is red.",
        "It is blue.",
        "--question",
        "Which color?",
        "--image",
        img.to_str().unwrap(),
        "--json",
    ]);
    let got = json(&out);
    assert_eq!(floats(&got["probs"]).len(), 3);
    let out = unireward(&[
        "--model",
        model,
        "--task",
        "image-generation",
        "--point",
        img.to_str().unwrap(),
        "--caption",
        "x",
        "--reasoned",
        "--max-new-tokens",
        "4",
        "--json",
    ]);
    let got = json(&out);
    let generated = got["generated_tokens"].as_u64().unwrap();
    assert!((1..=4).contains(&generated), "{got}");
    // A random model's answer has no "Final Score": reported as unparsable, never as a score of 0.
    assert!(got.get("parse_error").is_some() || got.get("parsed_score").is_some(), "{got}");
    assert!(got["answer"].is_string());
}

#[test]
fn bad_arguments_fail_naming_them() {
    let dir = judge_dir("cli-bad");
    let model = dir.0.to_str().unwrap();
    let a = image("two_images_0.png");
    let a = a.to_str().unwrap();
    let fails = |args: &[&str], needle: &str| {
        let out = unireward(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(needle), "expected `{needle}` in: {err}");
    };
    fails(&["--model", model, "--task", "image-gen", "--point", a], "unknown task `image-gen`");
    fails(&["--model", model, "--task", "image-generation", "--point", a], "caption");
    fails(&["--model", model, "--task", "image-generation", "--point", "missing.png", "--caption", "x"], "missing.png");
    fails(&["--model", model, "--task", "image-generation", "--point", a, "--question", "q"], "--question");
    fails(
        &[
            "--model",
            model,
            "--task",
            "image-understanding",
            "--point",
            "r",
            "--question",
            "q",
            "--image",
            a,
            "--image",
            a,
        ],
        "1 image(s), 2 given",
    );
    fails(&["--model", model, "--task", "image-generation", "--caption", "x"], "--pair");
}
