//! `unireward filter` and `filter-merge` (the binary) with the tiny LLaVA-OneVision judge of tests/judge_checkpoint
//! on image-generation and image-understanding prompts: the audit holds the library Judge's own judgments, a child
//! killed mid-run and resumed writes the bytes of an uninterrupted run, shards merged equal the unsharded run, and
//! bad input is one clear error line.

mod judge_checkpoint;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use judge_checkpoint::{image, judge_dir};
use rand::Rng;
use unireward::judge::{Candidate, Context, Judge, MediaFile, Task};
use unireward::{DType, Device};

/// A temporary directory with a candidates file, removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

const IMAGES: [&str; 4] = ["two_images_0.png", "two_images_1.png", "anyres_0.png", "downsampled_0.png"];

/// Six prompts: generation ones over the fixture images, understanding ones about one of them (K = 2 to 4).
fn scratch(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("unireward-cli-filter-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    for f in IMAGES {
        std::fs::copy(image(f), dir.join(f)).unwrap();
    }
    let mut lines = Vec::new();
    for (i, asked_about) in IMAGES.iter().take(3).enumerate() {
        let candidates: Vec<&str> = IMAGES.iter().copied().take(2 + i).collect();
        lines.push(serde_json::json!({"id": format!("g{i}"), "task": "image_generation",
            "context": {"caption": format!("a red square number {i}")}, "candidates": candidates}));
        let responses: Vec<String> = (0..4 - i).map(|c| format!("It shows {c} shapes.")).collect();
        lines.push(serde_json::json!({"id": format!("u{i}"), "task": "image-understanding",
            "context": {"question": "How many shapes?", "image": asked_about}, "candidates": responses}));
    }
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.join("candidates.jsonl"), text).unwrap();
    Scratch(dir)
}

impl Scratch {
    fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_string()
    }

    fn filter(&self, judge: &Path, out: &str, extra: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_unireward"));
        command.args(["filter", "--judge", judge.to_str().unwrap(), "--candidates", &self.path("candidates.jsonl")]);
        command.args(["--out", &self.path(out)]).args(extra);
        command
    }

    /// The pairs, audit and progress files of the run writing `out`.
    fn files(&self, out: &str) -> [Vec<u8>; 3] {
        [out.to_string(), format!("{out}.audit.jsonl"), format!("{out}.progress")]
            .map(|f| std::fs::read(self.0.join(f)).unwrap())
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
fn the_judge_filters_resumes_after_a_kill_and_merges_shards() {
    let judge = judge_dir("filter");
    let s = scratch("run");
    let summary: serde_json::Value =
        serde_json::from_str(&succeed(s.filter(&judge.0, "straight", &["--json"]).output().unwrap())).unwrap();
    assert_eq!(summary["prompts"], 6);
    assert_eq!(summary["interrupted"], false);
    let [pairs, audit, _] = s.files("straight");
    let pairs = String::from_utf8(pairs).unwrap();
    assert_eq!(pairs.lines().count() as u64, summary["pairs"].as_u64().unwrap());
    let audit: Vec<serde_json::Value> =
        String::from_utf8(audit).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    // Pair-rank + point-sift: K/2 pairs and K scores per prompt.
    assert_eq!(audit.len(), [2, 4, 3, 3, 4, 2].iter().map(|k| k / 2 + k).sum::<usize>());

    // The audit's first judgment is the library Judge's.
    let model = Judge::load(&judge.0, DType::F32, Device::Cpu).unwrap();
    let (a, b) = (s.0.join(IMAGES[0]), s.0.join(IMAGES[1]));
    let want = model
        .pairwise(
            Task::ImageGeneration,
            &Context::with_field("caption", "a red square number 0"),
            Candidate::Media(MediaFile::Image(a)),
            Candidate::Media(MediaFile::Image(b)),
        )
        .unwrap();
    let got: Vec<f32> = audit[0]["probs"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap() as f32).collect();
    assert_eq!(got, want.probs);
    let verdict = format!("{:?}", want.verdict.unwrap()).to_lowercase();
    assert_eq!(audit[0]["verdict"], verdict.as_str());
    for p in &pairs.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).collect::<Vec<_>>() {
        assert!(p["chosen_score"].as_f64().unwrap() > p["rejected_score"].as_f64().unwrap(), "{p}");
    }

    // Killed after a random number of finished prompts (a progress line each, after the header), then resumed.
    let kill_after = rand::thread_rng().gen_range(1..5);
    let mut child = s
        .filter(&judge.0, "killed", &[])
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let progress = s.0.join("killed.progress");
    let status = loop {
        let lines = std::fs::read_to_string(&progress).map_or(0, |t| t.lines().count());
        if lines > kill_after {
            child.kill().unwrap();
            break child.wait().unwrap();
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    eprintln!("killed after {kill_after} prompts: {status}");
    succeed(s.filter(&judge.0, "killed", &["--resume"]).output().unwrap());
    assert!(s.files("killed") == s.files("straight"), "killed after {kill_after}, resumed: files differ");

    // Two shards merged.
    succeed(s.filter(&judge.0, "shard1", &["--shard", "1/2"]).output().unwrap());
    succeed(s.filter(&judge.0, "shard0", &["--shard", "0/2"]).output().unwrap());
    let merged = s.path("merged");
    let out = succeed(
        Command::new(env!("CARGO_BIN_EXE_unireward"))
            .args(["filter-merge", "--shards", &s.path("shard1"), &s.path("shard0"), "--out", &merged, "--json"])
            .output()
            .unwrap(),
    );
    let merged_summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(merged_summary["pairs"], summary["pairs"]);
    let [straight_pairs, straight_audit, _] = s.files("straight");
    assert!(std::fs::read(&merged).unwrap() == straight_pairs);
    assert!(std::fs::read(format!("{merged}.audit.jsonl")).unwrap() == straight_audit);
}

#[test]
fn bad_input_is_one_clear_error_line() {
    let s = scratch("bad");
    // A text-only Qwen2 judge cannot see the prompts' images: every prompt is refused, by line, before any output.
    let text_judge = s.0.join("text-judge");
    std::fs::create_dir_all(&text_judge).unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2");
    for f in [
        "chat_tied/config.json",
        "chat_tied/model.safetensors",
        "tokenizer/tokenizer.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/chat_template.jinja",
    ] {
        std::fs::copy(fixtures.join(f), text_judge.join(Path::new(f).file_name().unwrap())).unwrap();
    }
    let err = fail(s.filter(&text_judge, "out", &[]).output().unwrap());
    assert!(err.contains("6 invalid prompts") && err.contains("line 1") && err.contains("text-only"), "{err}");
    assert!(!s.0.join("out").exists());

    let judge = judge_dir("filter-bad");
    let err = fail(s.filter(&judge.0, "out", &["--shard", "2/2"]).output().unwrap());
    assert!(err.contains("--shard `2/2`: expected i/n with 0 <= i < n"), "{err}");
    let err = fail(s.filter(&judge.0, "out", &["--batch", "0"]).output().unwrap());
    assert!(err.contains("--batch must be at least 1"), "{err}");
    let err = fail(s.filter(&judge.0, "out", &["--strategy", "best-of"]).output().unwrap());
    assert!(err.contains("unknown strategy `best-of`"), "{err}");
    let err = fail(s.filter(&judge.0, "out", &["--resume"]).output().unwrap());
    assert!(err.contains("--resume") && err.contains("does not exist"), "{err}");
    std::fs::write(s.0.join("candidates.jsonl"), "{\"id\": \"x\", \"task\": \"image_generation\", \"context\": {\"caption\": \"c\"}, \"candidates\": [\"gone.png\", \"two_images_0.png\"]}\n").unwrap();
    let err = fail(s.filter(&judge.0, "out", &[]).output().unwrap());
    assert!(err.contains("line 1") && err.contains("gone.png does not exist"), "{err}");
}

#[test]
fn reasoned_judgments_keep_their_answers_and_count_the_unparsable_ones() {
    let judge = judge_dir("filter-reasoned");
    let s = scratch("reasoned");
    let text = std::fs::read_to_string(s.0.join("candidates.jsonl")).unwrap();
    let first_two: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
    std::fs::write(s.0.join("candidates.jsonl"), first_two).unwrap();
    let args = ["--reasoned", "--max-new-tokens", "6", "--json"];
    let summary: serde_json::Value =
        serde_json::from_str(&succeed(s.filter(&judge.0, "out", &args).output().unwrap())).unwrap();
    let audit: Vec<serde_json::Value> = std::fs::read_to_string(s.0.join("out.audit.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(audit.len(), (1 + 2) + (2 + 4));
    let mut unparsable = 0;
    for a in &audit {
        assert!(a["answer"].is_string(), "{a}");
        let stated = if a["mode"] == "pairwise" { &a["verdict"] } else { &a["score"] };
        // Exactly one of a stated verdict or score, or the reason there is none.
        assert_ne!(stated.is_null(), a["unparsable"].is_null(), "{a}");
        unparsable += usize::from(a["unparsable"].is_string());
    }
    assert_eq!(summary["unparsable"].as_u64().unwrap() as usize, unparsable);
}

#[test]
fn every_strategy_runs_on_the_judge_in_small_batches() {
    let judge = judge_dir("filter-strategies");
    let s = scratch("strategies");
    for strategy in ["pair-rank", "point-sift", "round-robin", "bradley-terry"] {
        let args = ["--strategy", strategy, "--batch", "2", "--json"];
        let out = succeed(s.filter(&judge.0, strategy, &args).output().unwrap());
        let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(summary["prompts"], 6, "{strategy}");
        let [pairs, audit, _] = s.files(strategy);
        let pairs = String::from_utf8(pairs).unwrap();
        assert_eq!(pairs.lines().count() as u64, summary["pairs"].as_u64().unwrap(), "{strategy}");
        let ks = [2usize, 4, 3, 3, 4, 2];
        let judgments: usize = match strategy {
            "pair-rank" => ks.iter().map(|k| k / 2).sum(),
            "point-sift" => ks.iter().sum(),
            _ => ks.iter().map(|k| k * (k - 1) / 2).sum(),
        };
        assert_eq!(String::from_utf8(audit).unwrap().lines().count(), judgments, "{strategy}");
        for line in pairs.lines() {
            let p: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(p["strategy"], strategy);
            assert_ne!(p["chosen_index"], p["rejected_index"]);
        }
    }
}
