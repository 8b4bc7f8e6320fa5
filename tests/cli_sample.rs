//! `unireward sample` (the binary) and the library's sampler with the tiny LLaVA-OneVision checkpoint of
//! tests/judge_checkpoint as the policy: the K prefix-shared samples equal K separate generations with the same
//! seeds, the output is a candidates file the filter runs on, runs are deterministic, a child killed mid-run and
//! resumed writes the bytes of an uninterrupted run, and bad input is one clear error with nothing written.

mod judge_checkpoint;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use judge_checkpoint::{image, judge_dir};
use rand::Rng;
use unireward::judge::{GenerationConfig, MediaPixels};
use unireward::model::llava::MediaInput;
use unireward::pipeline::filter::{read_candidates, read_prompts};
use unireward::pipeline::sample::{Policy, PolicyModel, SampleOptions};
use unireward::{DType, Device};

/// A temporary directory with a prompts file, removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

const IMAGES: [&str; 2] = ["two_images_0.png", "anyres_0.png"];

/// Four understanding prompts, one of them about two images.
fn scratch(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("unireward-cli-sample-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
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
    Scratch(dir)
}

impl Scratch {
    fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_string()
    }

    fn sample(&self, policy: &std::path::Path, out: &str, extra: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_unireward"));
        command.args(["sample", "--policy", policy.to_str().unwrap(), "--prompts", &self.path("prompts.jsonl")]);
        command.args(["--out", &self.path(out), "--max-new-tokens", "4", "--seed", "7"]).args(extra);
        if !extra.contains(&"--k") {
            command.args(["--k", "3"]);
        }
        command
    }
}

fn succeed(output: Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "unireward failed: {stderr}");
    String::from_utf8(output.stdout).unwrap()
}

fn fail(output: Output) -> String {
    assert!(!output.status.success(), "unireward succeeded: {}", String::from_utf8_lossy(&output.stdout));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let first = stderr.lines().next().unwrap_or_default().to_string();
    assert!(first.starts_with("error: "), "an error line first: {stderr}");
    first
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
    let dir = s.0.join("qwen2");
    std::fs::create_dir_all(&dir).unwrap();
    let fixtures = judge_checkpoint::fixtures().join("qwen2");
    let files = ["chat_tied/config.json", "chat_tied/model.safetensors", "tokenizer/tokenizer.json"];
    for f in files.into_iter().chain(["tokenizer/tokenizer_config.json", "tokenizer/chat_template.jinja"]) {
        std::fs::copy(fixtures.join(f), dir.join(std::path::Path::new(f).file_name().unwrap())).unwrap();
    }
    let policy = Policy::load(&dir, DType::F32, Device::Cpu).unwrap();
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
    succeed(s.sample(&dir.0, "straight.jsonl", &[]).output().unwrap());
    succeed(s.sample(&dir.0, "again.jsonl", &[]).output().unwrap());
    let straight = std::fs::read(s.0.join("straight.jsonl")).unwrap();
    assert!(straight == std::fs::read(s.0.join("again.jsonl")).unwrap(), "two runs differ");

    let candidates = read_candidates(&s.0.join("straight.jsonl"), &s.0).unwrap();
    assert!(candidates.invalid.is_empty(), "{:?}", candidates.invalid);
    assert_eq!(candidates.prompts.len(), 4);
    let prompts = read_prompts(&s.0.join("prompts.jsonl"), &s.0).unwrap();
    for (c, p) in candidates.prompts.iter().zip(&prompts.prompts) {
        assert_eq!((c.written.len(), &c.id, &c.context, &c.context_media), (3, &p.id, &p.context, &p.context_media));
    }
    let out = succeed(
        Command::new(env!("CARGO_BIN_EXE_unireward"))
            .args(["filter", "--judge", dir.0.to_str().unwrap(), "--candidates", &s.path("straight.jsonl")])
            .args(["--out", &s.path("pairs.jsonl"), "--json", "--skip-invalid"])
            .output()
            .unwrap(),
    );
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    // The judge's understanding templates take one image: the two-image prompt is skipped.
    assert_eq!((summary["prompts"].as_u64(), summary["skipped"].as_u64()), (Some(3), Some(1)));

    // Killed after a random number of finished prompts, then resumed; a torn last line is cut too.
    let kill_after = rand::thread_rng().gen_range(1..4);
    let mut child = s
        .sample(&dir.0, "killed.jsonl", &[])
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let killed = s.0.join("killed.jsonl");
    let status = loop {
        if std::fs::read_to_string(&killed).map_or(0, |t| t.lines().count()) >= kill_after {
            child.kill().unwrap();
            break child.wait().unwrap();
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    eprintln!("killed after {kill_after} prompts: {status}");
    let mut torn = std::fs::read(&killed).unwrap();
    torn.extend_from_slice(b"{\"id\": \"q");
    std::fs::write(&killed, torn).unwrap();
    succeed(s.sample(&dir.0, "killed.jsonl", &["--resume"]).output().unwrap());
    assert!(std::fs::read(&killed).unwrap() == straight, "killed after {kill_after}, resumed: files differ");
    // A finished run resumed writes nothing more.
    succeed(s.sample(&dir.0, "killed.jsonl", &["--resume"]).output().unwrap());
    assert!(std::fs::read(&killed).unwrap() == straight);
}

#[test]
fn bad_input_is_one_clear_error_and_nothing_is_written() {
    let dir = judge_dir("sample-bad");
    let s = scratch("bad");
    let err = fail(s.sample(&dir.0, "out.jsonl", &["--k", "1"]).output().unwrap());
    assert!(err.contains("--k 1") && err.contains("between 2 and"), "{err}");
    let err = fail(s.sample(&dir.0, "out.jsonl", &["--temperature", "0"]).output().unwrap());
    assert!(err.contains("--temperature 0"), "{err}");
    let err = fail(s.sample(&dir.0, "out.jsonl", &["--resume"]).output().unwrap());
    assert!(err.contains("--resume") && err.contains("does not exist"), "{err}");
    assert!(!s.0.join("out.jsonl").exists());

    // The output of another prompts file is not continued.
    std::fs::write(s.0.join("other.jsonl"), "{\"id\": \"zz\"}\n").unwrap();
    let err = fail(s.sample(&dir.0, "other.jsonl", &["--resume"]).output().unwrap());
    assert!(err.contains("another run's output"), "{err}");

    let prompts = s.0.join("prompts.jsonl");
    let mut text = std::fs::read_to_string(&prompts).unwrap();
    text += "{\"id\": \"g\", \"task\": \"image_generation\", \"context\": {\"caption\": \"a cat\"}}\n";
    text += "{\"id\": \"m\", \"task\": \"image_understanding\", \"context\": {\"question\": \"?\", \"image\": \"gone.png\"}}\n";
    text += "{\"id\": \"c\", \"task\": \"image_understanding\", \"context\": {\"question\": \"?\", \"image\": \"anyres_0.png\"}, \"candidates\": [\"a\", \"b\"]}\n";
    std::fs::write(&prompts, text).unwrap();
    let err = fail(s.sample(&dir.0, "out.jsonl", &[]).output().unwrap());
    assert!(err.contains("3 invalid prompts"), "{err}");
    assert!(err.contains("line 5") && err.contains("generation task"), "{err}");
    assert!(err.contains("line 6") && err.contains("gone.png does not exist"), "{err}");
    assert!(err.contains("line 7") && err.contains("lists none"), "{err}");
    assert!(!s.0.join("out.jsonl").exists());
}
