//! `unireward::pipeline::policy_eval` and `unireward eval-policy`: a policy's greedy answers equal a plain greedy
//! loop over the model's full forward (no KV cache), its log-probabilities of the answers equal a float64 log-softmax
//! of that forward's logits, and the accuracies are the counts of those references — on a tiny LLaVA-OneVision
//! checkpoint made from nothing (image and video questions about the demo world) and on the text-only Qwen2 fixture;
//! bad lines are one error naming each line.

mod common;

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use unireward::judge::tokenizer::{DEFAULT_SYSTEM_PROMPT, IM_END};
use unireward::judge::MediaPixels;
use unireward::model::llava::{LlavaBatch, MediaInput};
use unireward::model::ForwardOptions;
use unireward::pipeline::policy_eval::{
    evaluate_policy, normalise_answer, read_policy_questions, PolicyEvalOptions, PolicyEvaluation, PolicyQuestion,
};
use unireward::pipeline::sample::{Policy, PolicyModel, SampleOptions};
use unireward::pipeline::world::{question, render, render_frames, word_level_tokenizer, Motion, Scene, TinyLlava};
use unireward::runtime::Tensor;
use unireward::{DType, Device};

/// An image of the fixtures (a question needs its media to exist; the text-only model does not see it).
fn fixture_image() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llava/images/anyres_0.png")
}

/// A temporary directory, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("unireward-policy-eval-{name}-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// The logits `[T, V]` of one full forward over `ids` (no cache), as f64.
fn full_logits(policy: &Policy, ids: &[i64], pixels: &[MediaPixels]) -> Vec<Vec<f64>> {
    let t = Tensor::from_slice(ids, &[1, ids.len()], Device::Cpu).unwrap();
    let mask = Tensor::from_slice(&vec![1i64; ids.len()], &[1, ids.len()], Device::Cpu).unwrap();
    let logits = match &policy.model {
        PolicyModel::Text(m) => m.logits(&m.forward(&t, &mask, ForwardOptions::default()).unwrap()).unwrap(),
        PolicyModel::Llava(m) => {
            let media: Vec<MediaInput<'_>> = pixels.iter().map(MediaPixels::input).collect();
            let pass = m.forward(&LlavaBatch { ids: &t, mask: &mask, media: &media }, ForwardOptions::default());
            m.logits(&pass.unwrap()).unwrap()
        }
    };
    let v = *logits.shape().last().unwrap();
    let flat = logits.to_vec::<f32>().unwrap();
    flat.chunks(v).map(|row| row.iter().map(|&x| f64::from(x)).collect()).collect()
}

fn log_softmax_at(row: &[f64], token: usize) -> f64 {
    let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = row.iter().map(|x| (x - max).exp()).sum();
    row[token] - max - sum.ln()
}

/// The greedy answer by a plain loop: the whole sequence run again for every token, the first largest logit taken.
fn reference_greedy(policy: &Policy, ids: &[i64], pixels: &[MediaPixels], max_new_tokens: usize) -> String {
    let stops = policy.stop_tokens();
    // A LLaVA policy never generates its media placeholders.
    let suppressed: Vec<usize> = match &policy.model {
        PolicyModel::Llava(m) => [m.placeholders().image, m.placeholders().video].map(|id| id as usize).to_vec(),
        PolicyModel::Text(_) => Vec::new(),
    };
    let mut sequence = ids.to_vec();
    let mut new = Vec::new();
    for _ in 0..max_new_tokens {
        let logits = full_logits(policy, &sequence, pixels);
        let last = logits.last().unwrap();
        let allowed = (0..last.len()).filter(|i| !suppressed.contains(i));
        let best = allowed.clone().fold(allowed.min().unwrap(), |b, i| if last[i] > last[b] { i } else { b }) as u32;
        new.push(best);
        sequence.push(i64::from(best));
        if stops.contains(&best) {
            break;
        }
    }
    policy.tokenizer.decode(&new, true).unwrap()
}

/// log p(answer, then `<|im_end|>` | prompt) from one full forward, summed in f64.
fn reference_log_prob(policy: &Policy, ids: &[i64], pixels: &[MediaPixels], answer: &str) -> f64 {
    let mut sequence = ids.to_vec();
    let end = policy.tokenizer.token_to_id(IM_END);
    sequence.extend(policy.tokenizer.encode(answer).unwrap().into_iter().chain(end).map(i64::from));
    let logits = full_logits(policy, &sequence, pixels);
    (ids.len()..sequence.len()).map(|j| log_softmax_at(&logits[j - 1], sequence[j] as usize)).sum()
}

/// Checks `evaluation` of `questions` against the references, and its accuracies against their counts.
fn check_against_references(policy: &Policy, questions: &[PolicyQuestion], options: &PolicyEvalOptions) {
    let evaluation = evaluate_policy(policy, questions, options).unwrap();
    assert_eq!(evaluation.answers.len(), questions.len());
    let inputs = SampleOptions { frames: options.frames, ..SampleOptions::default() };
    let (mut correct, mut preferred) = (0, 0);
    for (q, got) in questions.iter().zip(&evaluation.answers) {
        let (ids, pixels) = policy.prompt_inputs(&q.prompt, &inputs).unwrap();
        let greedy = reference_greedy(policy, &ids, &pixels, options.max_new_tokens);
        assert_eq!(got.greedy, greedy, "{}", q.prompt.id);
        assert_eq!(got.correct, normalise_answer(&greedy) == normalise_answer(&q.answer), "{}", q.prompt.id);
        correct += usize::from(got.correct);
        let answer = reference_log_prob(policy, &ids, &pixels, &q.answer);
        assert!(
            (got.answer_log_prob - answer).abs() < 1e-3 * answer.abs().max(1.0),
            "{}: {got:?} vs {answer}",
            q.prompt.id
        );
        assert_eq!(got.wrong_log_probs.len(), q.wrong_answers.len());
        for (w, lp) in q.wrong_answers.iter().zip(&got.wrong_log_probs) {
            let want = reference_log_prob(policy, &ids, &pixels, w);
            assert!((lp - want).abs() < 1e-3 * want.abs().max(1.0), "{} `{w}`: {lp} vs {want}", q.prompt.id);
        }
        assert_eq!(got.preferred, got.wrong_log_probs.iter().all(|&w| got.answer_log_prob > w));
        preferred += usize::from(got.preferred);
    }
    let n = questions.len() as f64;
    assert_eq!(evaluation.questions, questions.len());
    assert!((evaluation.accuracy - correct as f64 / n).abs() < 1e-12);
    assert!((evaluation.preference_accuracy - preferred as f64 / n).abs() < 1e-12);
    let counted: usize = evaluation.per_task.values().map(|t| t.questions).sum();
    assert_eq!(counted, questions.len());
    for (task, t) in &evaluation.per_task {
        let of: Vec<_> = evaluation.answers.iter().filter(|a| &a.task == task).collect();
        assert_eq!(t.questions, of.len());
        assert_eq!(t.correct, of.iter().filter(|a| a.correct).count());
        assert_eq!(t.preferred, of.iter().filter(|a| a.preferred).count());
        assert!((t.accuracy - t.correct as f64 / t.questions as f64).abs() < 1e-12);
        assert!((t.preference_accuracy - t.preferred as f64 / t.questions as f64).abs() < 1e-12);
    }
}

/// Image and video questions about the demo world beside a tiny LLaVA-OneVision checkpoint `policy/` made from
/// nothing; returns the questions file.
fn world(dir: &Path, seed: u64) -> PathBuf {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut lines, mut corpus) = (String::new(), vec![DEFAULT_SYSTEM_PROMPT.to_string()]);
    for i in 0..3 {
        let scene = Scene::random(&mut rng, 4);
        let q = question(&scene, 4, &mut rng);
        render(&scene, 48).save(dir.join(format!("scene-{i}.png"))).unwrap();
        let line = serde_json::json!({"id": format!("image-{i}"), "task": "image-understanding",
            "context": {"question": q.text, "image": format!("scene-{i}.png")},
            "answer": q.answer, "wrong_answers": [q.wrong_answer]});
        lines += &format!("{line}\n");
        corpus.extend([q.text, q.answer, q.wrong_answer]);
    }
    let motion = Motion::random(&mut rng);
    let q = motion.question(&mut rng);
    std::fs::create_dir_all(dir.join("video")).unwrap();
    for (f, frame) in render_frames(&motion, 48, 4).iter().enumerate() {
        frame.save(dir.join(format!("video/frame-{f:02}.png"))).unwrap();
    }
    let line = serde_json::json!({"id": "video-0", "task": "video_understanding",
        "context": {"question": q.text, "video": "video"}, "answer": q.answer, "wrong_answers": [q.wrong_answer]});
    lines += &format!("{line}\n");
    corpus.extend([q.text, q.answer, q.wrong_answer]);
    let tokenizer = word_level_tokenizer(corpus.iter().map(String::as_str)).unwrap();
    TinyLlava::default().write(&dir.join("policy"), &tokenizer, seed).unwrap();
    let path = dir.join("questions.jsonl");
    std::fs::write(&path, lines).unwrap();
    path
}

#[test]
fn a_tiny_llava_policy_is_evaluated_as_the_plain_references_say() {
    let dir = Dir::new("llava");
    let seed = rand::Rng::gen_range(&mut rand::thread_rng(), 0..1000);
    let path = world(&dir.0, seed);
    let policy = Policy::load(&dir.0.join("policy"), DType::F32, Device::Cpu).unwrap();
    let mut questions = read_policy_questions(&path, &dir.0).unwrap();
    assert_eq!(questions.len(), 4);
    let options = PolicyEvalOptions { max_new_tokens: 3, frames: 4 };
    // One answer is the policy's own greedy answer, spelt in capitals with a full stop: normalised, it matches.
    let first = evaluate_policy(&policy, &questions[..1], &options).unwrap();
    questions[0].answer = format!("  {}. ", first.answers[0].greedy.to_uppercase());
    questions[0].wrong_answers = vec!["zzz".into()];
    check_against_references(&policy, &questions, &options);
    let evaluation = evaluate_policy(&policy, &questions, &options).unwrap();
    assert!(evaluation.answers[0].correct, "{:?}", evaluation.answers[0]);
    assert_eq!(evaluation.per_task.keys().collect::<Vec<_>>(), ["image_understanding", "video_understanding"]);
    assert_eq!(evaluation.per_task["video_understanding"].questions, 1);
}

#[test]
fn a_text_only_qwen2_policy_is_evaluated_as_the_plain_references_say() {
    let s = common::Scratch::new("policy-eval-text");
    std::fs::copy(fixture_image(), s.path("x.png")).unwrap();
    let lines = [
        serde_json::json!({"id": "a", "task": "image_understanding", "context": {"question": "How many?", "image": "x.png"},
            "answer": "3", "wrong_answers": ["4", "33", "three"]}),
        serde_json::json!({"id": "b", "task": "image_understanding", "context": {"question": "Colour?", "image": "x.png"},
            "answer": "red", "wrong_answers": ["blue"]}),
    ];
    std::fs::write(s.path("q.jsonl"), lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let policy = Policy::load(&s.path("model"), DType::F32, Device::Cpu).unwrap();
    let questions = read_policy_questions(&s.path("q.jsonl"), &s.0).unwrap();
    check_against_references(&policy, &questions, &PolicyEvalOptions { max_new_tokens: 4, frames: 8 });

    // The command prints the library's evaluation.
    let out = common::succeed(
        std::process::Command::new(env!("CARGO_BIN_EXE_unireward"))
            .args(["eval-policy", "--policy"])
            .arg(s.path("model"))
            .arg("--data")
            .arg(s.path("q.jsonl"))
            .args(["--json", "--max-new-tokens", "4"])
            .output()
            .unwrap(),
    );
    let printed: PolicyEvaluation = serde_json::from_str(&out).unwrap();
    let evaluation = evaluate_policy(&policy, &questions, &PolicyEvalOptions { max_new_tokens: 4, frames: 8 }).unwrap();
    assert_eq!(printed, evaluation);
}

#[test]
fn bad_question_lines_are_one_error_naming_each_line() {
    let dir = Dir::new("bad");
    std::fs::copy(fixture_image(), dir.0.join("x.png")).unwrap();
    let good = r#"{"id": "ok", "task": "image_understanding", "context": {"question": "q", "image": "x.png"}, "answer": "1", "wrong_answers": ["2"]}"#;
    let lines = [
        good,
        r#"{"id": "a", "task": "image_understanding", "context": {"question": "q", "image": "x.png"}, "answer": "1"}"#,
        "",
        r#"{"id": "b", "task": "image_understanding", "context": {"question": "q", "image": "x.png"}, "answer": "Yes", "wrong_answers": ["yes."]}"#,
        r#"{"id": "c", "task": "image_generation", "context": {"caption": "c"}, "answer": "1", "wrong_answers": ["2"]}"#,
        r#"{"id": "d", "task": "image_understanding", "context": {"question": "q", "image": "missing.png"}, "answer": "1", "wrong_answers": ["2"]}"#,
        r#"{"id": "e", "task": "image_understanding", "context": {"question": "q", "image": "x.png"}, "answer": " . ", "wrong_answers": ["2"]}"#,
        r#"{"id": "f", "task": "image_understanding", "context": {"question": "q", "image": "x.png"}, "answer": "1", "wrong_answers": []}"#,
        good,
    ];
    let path = dir.0.join("q.jsonl");
    std::fs::write(&path, lines.join("\n")).unwrap();
    let err = read_policy_questions(&path, &dir.0).unwrap_err().to_string();
    for (line, needle) in [
        (2, "wrong_answers"),
        (4, "is the answer"),
        (5, "generation task"),
        (6, "does not exist"),
        (7, "`answer` is empty"),
        (8, "between 1 and"),
        (9, "repeats line 1"),
    ] {
        let at = format!("line {line}: ");
        let found = err.split("; ").find(|part| part.contains(&at));
        assert!(found.is_some_and(|p| p.contains(needle)), "line {line} `{needle}` in: {err}");
    }
    assert!(!err.contains("line 1:"), "{err}");
    std::fs::write(&path, "\n\n").unwrap();
    let err = read_policy_questions(&path, &dir.0).unwrap_err().to_string();
    assert!(err.contains("holds no questions"), "{err}");
}
