//! `unireward sample` (the binary) and the library's sampler with the tiny LLaVA-OneVision checkpoint of
//! tests/judge_checkpoint as the policy: the K prefix-shared samples equal K separate generations with the same
//! seeds, the output is a candidates file the filter runs on, runs are deterministic, a child killed mid-run and
//! resumed writes the bytes of an uninterrupted run, and bad input is one clear error with nothing written.

mod common;
mod judge_checkpoint;

use std::path::Path;
use std::process::Command;

use common::{fail, kill_when_lines, succeed, Scratch};
use judge_checkpoint::{image, judge_dir};
use rand::Rng;
use unireward::judge::{GenerationConfig, MediaPixels};
use unireward::model::llava::MediaInput;
use unireward::pipeline::filter::{read_candidates, read_prompts};
use unireward::pipeline::sample::{Policy, PolicyModel, SampleOptions};
use unireward::{DType, Device};

const IMAGES: [&str; 2] = ["two_images_0.png", "anyres_0.png"];

/// Four understanding prompts, one of them about two images, beside the Qwen2 chat checkpoint `model/`.
fn scratch(name: &str) -> Scratch {
    let s = Scratch::new(&format!("cli-sample-{name}"));
    let dir = &s.0;
    for f in IMAGES {
        std::fs::copy(image(f), dir.join(f)).unwrap();
    }
    let lines = [
        serde_json::json!({"id": "q0", "task": "image_understanding", "context": {"question": "How many shapes?", "image": IMAGES[0]}}),
        serde_json::json!({"id": "q1", "task": "image-understanding", "context": {"question": "What colour?", "image": IMAGES[1]}}),
        serde_json::json!({"id": "q2", "task": "image_understanding", "context": {"question": "Same?", "image": IMAGES}}),
        serde_json::json!({"id": "q3", "task": "image_understanding", "context": {"question": "Where?", "image": [IMAGES[1]]}}),
    ];
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.join("prompts.jsonl"), text).unwrap();
    s
}

/// `unireward sample` of `s`'s prompts into `out` (K = 3 unless `extra` says).
fn sample(s: &Scratch, policy: &Path, out: &str, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_unireward"));
    command.args(["sample", "--policy", policy.to_str().unwrap(), "--prompts"]).arg(s.path("prompts.jsonl"));
    command.arg("--out").arg(s.path(out)).args(["--max-new-tokens", "4", "--seed", "7"]).args(extra);
    if !extra.contains(&"--k") {
        command.args(["--k", "3"]);
    }
    command
}

#[test]
fn prefix_shared_samples_equal_separate_generations() {
    let dir = judge_dir("sample-exact");
    let s = scratch("exact");
    let policy = Policy::load(&dir.0, DType::F32, Device::Cpu).unwrap();
    let file = read_prompts(&s.0.join("prompts.jsonl"), &s.0).unwrap();
    assert!(file.invalid.is_empty(), "{:?}", file.invalid);
    let options = SampleOptions { k: 4, max_new_tokens: 5, seed: rand::thread_rng().gen(), ..SampleOptions::default() };
    let PolicyModel::Llava(model) = &policy.model else { panic!("the fixture is LLaVA-OneVision") };
    for prompt in &file.prompts[..3] {
        let samples = policy.sample(prompt, &options).unwrap();
        assert_eq!(samples.len(), 4);
        let (ids, pixels) = policy.prompt_inputs(prompt, &options).unwrap();
        let inputs: Vec<MediaInput<'_>> = pixels.iter().map(MediaPixels::input).collect();
        assert_eq!(inputs.len(), prompt.context.media.len());
        let cfg = policy.generation_config(&options, prompt);
        for (row, sample) in samples.iter().enumerate() {
            let alone = GenerationConfig { seed: cfg.seed.wrapping_add(row as u64), ..cfg.clone() };
            let tokens = model.generate(&ids, &inputs, &alone).unwrap();
            assert_eq!(&policy.tokenizer.decode(&tokens, true).unwrap(), sample, "{} row {row}", prompt.id);
        }
    }
    // Another prompt's id gives other draws from the same seed (the seeds are per prompt).
    let first = &file.prompts[1];
    let renamed = unireward::pipeline::filter::CandidatePrompt { id: "other".into(), ..first.clone() };
    assert_ne!(policy.generation_config(&options, first).seed, policy.generation_config(&options, &renamed).seed);
}

#[test]
fn a_text_only_policy_samples_exactly_from_the_prompt_text() {
    let s = scratch("text");
    let policy = Policy::load(&s.path("model"), DType::F32, Device::Cpu).unwrap();
    let PolicyModel::Text(model) = &policy.model else { panic!("the fixture is a Qwen2 decoder") };
    let file = read_prompts(&s.0.join("prompts.jsonl"), &s.0).unwrap();
    let options = SampleOptions { k: 3, max_new_tokens: 6, seed: rand::thread_rng().gen(), ..SampleOptions::default() };
    let prompt = &file.prompts[2];
    let (ids, pixels) = policy.prompt_inputs(prompt, &options).unwrap();
    assert!(pixels.is_empty());
    let text = policy.prompt_text(prompt).unwrap();
    assert!(text.contains("<image>\n<image>\nSame?"), "{text}");
    let want: Vec<i64> = policy.tokenizer.encode(&text).unwrap().into_iter().map(i64::from).collect();
    assert_eq!(ids, want);
    let samples = policy.sample(prompt, &options).unwrap();
    let cfg = policy.generation_config(&options, prompt);
    let prefix: Vec<u32> = ids.iter().map(|&id| id as u32).collect();
    for (row, sample) in samples.iter().enumerate() {
        let alone = GenerationConfig { seed: cfg.seed.wrapping_add(row as u64), ..cfg.clone() };
        let tokens = unireward::judge::generate(model, std::slice::from_ref(&prefix), &alone).unwrap().remove(0);
        assert_eq!(&policy.tokenizer.decode(&tokens, true).unwrap(), sample, "row {row}");
    }
}

#[test]
fn samples_feed_the_filter_deterministically_and_resume_after_a_kill() {
    let dir = judge_dir("sample-run");
    let s = scratch("run");
    succeed(sample(&s, &dir.0, "straight.jsonl", &[]).output().unwrap());
    succeed(sample(&s, &dir.0, "again.jsonl", &[]).output().unwrap());
    let straight = std::fs::read(s.path("straight.jsonl")).unwrap();
    assert!(straight == std::fs::read(s.path("again.jsonl")).unwrap(), "two runs differ");

    let candidates = read_candidates(&s.path("straight.jsonl"), &s.0).unwrap();
    assert!(candidates.invalid.is_empty(), "{:?}", candidates.invalid);
    assert_eq!(candidates.prompts.len(), 4);
    let prompts = read_prompts(&s.0.join("prompts.jsonl"), &s.0).unwrap();
    for (c, p) in candidates.prompts.iter().zip(&prompts.prompts) {
        assert_eq!((c.written.len(), &c.id, &c.context, &c.context_media), (3, &p.id, &p.context, &p.context_media));
    }
    let out = succeed(
        Command::new(env!("CARGO_BIN_EXE_unireward"))
            .args(["filter", "--judge", dir.0.to_str().unwrap(), "--candidates"])
            .arg(s.path("straight.jsonl"))
            .arg("--out")
            .arg(s.path("pairs.jsonl"))
            .args(["--json", "--skip-invalid"])
            .output()
            .unwrap(),
    );
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    // The judge's understanding templates take one image: the two-image prompt is skipped.
    assert_eq!((summary["prompts"].as_u64(), summary["skipped"].as_u64()), (Some(3), Some(1)));

    // Killed after a random number of finished prompts, then resumed; a torn last line is cut too.
    let kill_after = rand::thread_rng().gen_range(1..4);
    let killed = s.path("killed.jsonl");
    let status = kill_when_lines(&mut sample(&s, &dir.0, "killed.jsonl", &[]), &killed, kill_after);
    eprintln!("killed after {kill_after} prompts: {status}");
    let mut torn = std::fs::read(&killed).unwrap();
    torn.extend_from_slice(b"{\"id\": \"q");
    std::fs::write(&killed, torn).unwrap();
    succeed(sample(&s, &dir.0, "killed.jsonl", &["--resume"]).output().unwrap());
    assert!(std::fs::read(&killed).unwrap() == straight, "killed after {kill_after}, resumed: files differ");
    // A finished run resumed writes nothing more.
    succeed(sample(&s, &dir.0, "killed.jsonl", &["--resume"]).output().unwrap());
    assert!(std::fs::read(&killed).unwrap() == straight);
}

#[test]
fn bad_input_is_one_clear_error_and_nothing_is_written() {
    let dir = judge_dir("sample-bad");
    let s = scratch("bad");
    let err = fail(sample(&s, &dir.0, "out.jsonl", &["--k", "1"]).output().unwrap());
    assert!(err.contains("--k 1") && err.contains("between 2 and"), "{err}");
    let err = fail(sample(&s, &dir.0, "out.jsonl", &["--temperature", "0"]).output().unwrap());
    assert!(err.contains("--temperature 0"), "{err}");
    let err = fail(sample(&s, &dir.0, "out.jsonl", &["--resume"]).output().unwrap());
    assert!(err.contains("--resume") && err.contains("does not exist"), "{err}");
    assert!(!s.0.join("out.jsonl").exists());

    // The output of another prompts file is not continued.
    std::fs::write(s.0.join("other.jsonl"), "{\"id\": \"zz\"}\n").unwrap();
    let err = fail(sample(&s, &dir.0, "other.jsonl", &["--resume"]).output().unwrap());
    assert!(err.contains("another run's output"), "{err}");

    let prompts = s.0.join("prompts.jsonl");
    let mut text = std::fs::read_to_string(&prompts).unwrap();
    text += "{\"id\": \"g\", \"task\": \"image_generation\", \"context\": {\"caption\": \"a cat\"}}\n";
    text += "{\"id\": \"m\", \"task\": \"image_understanding\", \"context\": {\"question\": \"?\", \"image\": \"gone.png\"}}\n";
    text += "{\"id\": \"c\", \"task\": \"image_understanding\", \"context\": {\"question\": \"?\", \"image\": \"anyres_0.png\"}, \"candidates\": [\"a\", \"b\"]}\n";
    std::fs::write(&prompts, text).unwrap();
    let err = fail(sample(&s, &dir.0, "out.jsonl", &[]).output().unwrap());
    assert!(err.contains("3 invalid prompts"), "{err}");
    assert!(err.contains("line 5") && err.contains("generation task"), "{err}");
    assert!(err.contains("line 6") && err.contains("gone.png does not exist"), "{err}");
    assert!(err.contains("line 7") && err.contains("lists none"), "{err}");
    assert!(!s.0.join("out.jsonl").exists());
}
