//! One-pass verdicts against the float64 teacher-forced reference of tests/reference/judge_one_pass.py (each whole
//! sequence run alone through transformers), on the tiny Qwen2 checkpoint (text only) and the tiny LLaVA-OneVision
//! with an anyres image; prefix-shared scoring equal to scoring each prompt alone and each sequence alone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;
use unireward::judge::metrics::swapped;
use unireward::judge::{
    one_pass, AnswerClasses, ClassProbabilities, JudgeModel, Mode, PairVerdict, ScoredSequence, Task, TaskTemplate,
    Tokenizer,
};
use unireward::model::llava::{LlavaOnevisionModel, MediaInput};
use unireward::model::Qwen2Model;
use unireward::{DType, Device, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[derive(Deserialize)]
struct Case {
    name: String,
    prompts: Vec<Vec<i64>>,
    answers: Vec<Vec<u32>>,
    values: Option<Vec<f32>>,
    log_probs: Vec<Vec<f64>>,
    probs: Vec<Vec<f64>>,
    expected: Option<Vec<f64>>,
}

fn cases(model: &str) -> Vec<Case> {
    let text = std::fs::read_to_string(fixtures().join("judge/one_pass.json")).unwrap();
    let mut all: BTreeMap<String, Vec<Case>> = serde_json::from_str(&text).unwrap();
    all.remove(model).unwrap()
}

/// The anyres image of the LLaVA reference: its tiles `[tiles,3,S,S]` and original size.
fn llava_image() -> (Tensor, (usize, usize)) {
    let bytes = std::fs::read(fixtures().join("llava/reference.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let read = |name: &str| -> (Vec<usize>, Vec<f64>) {
        let view = file.tensor(name).unwrap();
        let values = match view.dtype() {
            Dtype::F32 => {
                view.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64).collect()
            }
            Dtype::I64 => {
                view.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64).collect()
            }
            other => panic!("{name}: {other:?}"),
        };
        (view.shape().to_vec(), values)
    };
    let tiles = read("image_tiles").1[0] as usize;
    let (mut shape, pixels) = read("pixel_values");
    let per_tile: usize = shape[1..].iter().product();
    shape[0] = tiles;
    let pixels: Vec<f32> = pixels[..tiles * per_tile].iter().map(|&v| v as f32).collect();
    let sizes = read("image_sizes").1;
    (Tensor::from_slice(&pixels, &shape, Device::Cpu).unwrap(), (sizes[0] as usize, sizes[1] as usize))
}

fn qwen2_on(device: Device) -> JudgeModel {
    JudgeModel::Text(Box::new(Qwen2Model::load(&fixtures().join("qwen2/gqa_untied"), DType::F32, device).unwrap()))
}

fn llava_on(device: Device) -> JudgeModel {
    JudgeModel::Llava(Box::new(LlavaOnevisionModel::load(&fixtures().join("llava/hf"), DType::F32, device).unwrap()))
}

fn qwen2() -> JudgeModel {
    qwen2_on(Device::Cpu)
}

fn llava() -> JudgeModel {
    llava_on(Device::Cpu)
}

fn classes(case: &Case) -> AnswerClasses {
    AnswerClasses::from_tokens(&case.answers, case.values.clone()).unwrap()
}

fn assert_close(what: &str, got: f32, want: f64, tol: f64) {
    let err = (f64::from(got) - want).abs();
    assert!(err <= tol * want.abs().max(1.0), "{what}: {got} vs {want} (error {err:.2e})");
}

fn check_against_reference(model: &JudgeModel, media: &[MediaInput<'_>], model_name: &str, tol: f64) {
    for case in cases(model_name) {
        let answers = classes(&case);
        let (got, scores) = one_pass(model, &case.prompts, media, &answers).unwrap();
        assert_eq!(got.len(), case.prompts.len());
        for (k, row) in got.iter().enumerate() {
            for c in 0..answers.num_classes() {
                let what = format!("{model_name} {} prompt {k} class {c}", case.name);
                assert_close(&format!("{what} log-prob"), row.log_probs[c], case.log_probs[k][c], tol);
                assert_close(&format!("{what} prob"), row.probs[c], case.probs[k][c], tol);
            }
            let best = (0..row.probs.len()).fold(0, |b, i| if case.probs[k][i] > case.probs[k][b] { i } else { b });
            assert_eq!(row.argmax, best);
            match (&case.expected, row.expected) {
                (Some(want), Some(got)) => assert_close("expected score", got, want[k], tol),
                (None, None) => {}
                other => panic!("expected score presence differs: {other:?}"),
            }
        }
        // The prefix is run once: every other sequence saves its length.
        let sequences = case.prompts.len() * answers.num_classes();
        assert_eq!(scores.prefill_tokens_saved, (sequences - 1) * scores.shared_prefix);
        assert!(scores.shared_prefix >= case.prompts.iter().map(Vec::len).min().unwrap().min(1));
    }
}

/// Scoring K prompts together (one shared prefix) equals scoring each prompt alone, and each whole sequence alone.
fn check_forked_equals_alone(model: &JudgeModel, media: &[MediaInput<'_>], model_name: &str) {
    for case in cases(model_name) {
        let answers = classes(&case);
        let (together, _) = one_pass(model, &case.prompts, media, &answers).unwrap();
        for (k, prompt) in case.prompts.iter().enumerate() {
            let (alone, _) = one_pass(model, std::slice::from_ref(prompt), media, &answers).unwrap();
            for c in 0..answers.num_classes() {
                let (a, b) = (together[k].log_probs[c], alone[0].log_probs[c]);
                assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{} prompt {k} class {c}: {a} vs {b}", case.name);
                let ids: Vec<i64> = prompt
                    .iter()
                    .copied()
                    .chain(answers.prefix.iter().chain(&answers.continuations[c]).map(|&t| i64::from(t)))
                    .collect();
                let one = ScoredSequence { ids, scored_from: prompt.len() + answers.prefix.len() };
                let single = model.score(&[one], media).unwrap();
                assert_eq!(single.prefill_tokens_saved, 0);
                let s = single.log_probs[0];
                assert!((a - s).abs() <= 1e-5 * a.abs().max(1.0), "{} sequence alone: {a} vs {s}", case.name);
            }
        }
    }
}

#[test]
fn qwen2_one_pass_equals_float64_reference() {
    check_against_reference(&qwen2(), &[], "qwen2_gqa_untied", 2e-5);
}

#[test]
fn qwen2_prefix_forked_equals_alone() {
    check_forked_equals_alone(&qwen2(), &[], "qwen2_gqa_untied");
}

#[test]
fn llava_one_pass_equals_float64_reference() {
    let (pixel_values, size) = llava_image();
    let media = [MediaInput::Image { pixel_values: &pixel_values, size }];
    check_against_reference(&llava(), &media, "llava_hf_anyres", 2e-5);
}

#[test]
fn llava_prefix_forked_equals_alone() {
    let (pixel_values, size) = llava_image();
    check_forked_equals_alone(&llava(), &[MediaInput::Image { pixel_values: &pixel_values, size }], "llava_hf_anyres");
}

#[test]
#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
fn cuda_one_pass_equals_float64_reference() {
    let cuda = Device::Cuda(0);
    check_against_reference(&qwen2_on(cuda), &[], "qwen2_gqa_untied", 1e-4);
    check_forked_equals_alone(&qwen2_on(cuda), &[], "qwen2_gqa_untied");
    let (pixel_values, size) = llava_image();
    let media = [MediaInput::Image { pixel_values: &pixel_values, size }];
    check_against_reference(&llava_on(cuda), &media, "llava_hf_anyres", 1e-4);
    check_forked_equals_alone(&llava_on(cuda), &media, "llava_hf_anyres");
}

fn probabilities(probs: &[f32]) -> ClassProbabilities {
    let argmax = (0..probs.len()).fold(0, |b, i| if probs[i] > probs[b] { i } else { b });
    ClassProbabilities {
        log_probs: probs.iter().map(|p| p.ln()).collect(),
        probs: probs.to_vec(),
        argmax,
        expected: None,
    }
}

#[test]
fn pair_verdict_debiases_and_checks_position_consistency() {
    // Forward order: A first. Swapped order: B first, so its "first" is B.
    let forward = probabilities(&[0.6, 0.3, 0.1]);
    let swapped_order = probabilities(&[0.2, 0.7, 0.1]);
    let pair = PairVerdict::from_orders(&forward, &swapped_order);
    assert_eq!(pair.swapped, [0.7, 0.2, 0.1]);
    for (got, want) in pair.debiased.iter().zip([0.65, 0.25, 0.1]) {
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }
    assert_eq!(pair.verdict, unireward::judge::answer::Verdict::First);
    assert!(pair.position_consistent);
    // A judge that always prefers the first position: inconsistent, and the debiased verdict is a near-tie.
    let biased = PairVerdict::from_orders(&probabilities(&[0.8, 0.2]), &probabilities(&[0.8, 0.2]));
    assert!(!biased.position_consistent);
    assert_eq!(biased.debiased, [0.5, 0.5, 0.0]);
    assert_eq!(swapped(unireward::judge::answer::Verdict::Tie), unireward::judge::answer::Verdict::Tie);
}

#[test]
fn bad_scoring_input_is_refused_by_name() {
    let model = qwen2();
    let err = AnswerClasses::from_tokens(&[vec![1, 2], vec![1, 2, 3]], None).unwrap_err().to_string();
    assert!(err.contains("prefix of another"), "{err}");
    let err = AnswerClasses::from_tokens(&[vec![1], vec![2]], Some(vec![1.0])).unwrap_err().to_string();
    assert!(err.contains("class values"), "{err}");
    let answers = AnswerClasses::from_tokens(&[vec![1], vec![2]], None).unwrap();
    let err = one_pass(&model, &[vec![5, 500]], &[], &answers).unwrap_err().to_string();
    assert!(err.contains("500"), "{err}");
    let err = one_pass(&model, &[vec![3; 70]], &[], &answers).unwrap_err().to_string();
    assert!(err.contains("max_position_embeddings"), "{err}");
    let err = model.score(&[ScoredSequence { ids: vec![1, 2], scored_from: 2 }], &[]).unwrap_err().to_string();
    assert!(err.contains("scored_from"), "{err}");
    let lm = model.language_model();
    let mut cache = lm.new_cache(1, 8).unwrap();
    let err = lm.extend_logits_at(&mut cache, &[&[1, 2, 3]], &[vec![3]]).unwrap_err().to_string();
    assert!(err.contains("new position 3"), "{err}");
    let err = lm.extend_logits_at(&mut cache, &[&[1, 2, 3]], &[vec![]]).unwrap_err().to_string();
    assert!(err.contains("at least one position"), "{err}");
    assert_eq!(cache.lengths(), &[0], "a refused step leaves the cache as it was");
}

#[test]
fn answer_classes_follow_the_templates_grammar() {
    let tokenizer = Tokenizer::from_file(&fixtures().join("qwen2/tokenizer")).unwrap();
    let pair = TaskTemplate::built_in(Task::ImageGeneration, Mode::Pairwise).unwrap();
    let classes = AnswerClasses::for_grammar(&pair.answer, &tokenizer).unwrap();
    assert_eq!(
        classes.labels,
        ["Image 1 is better than Image 2", "Image 2 is better than Image 1", "Both images are equally good"]
    );
    assert!(classes.values.is_none());
    for (c, label) in classes.labels.iter().enumerate() {
        let whole: Vec<u32> = classes.prefix.iter().chain(&classes.continuations[c]).copied().collect();
        assert_eq!(whole, tokenizer.encode(label).unwrap());
    }
    // 0..=100: "1" begins "10", so every score answer ends the turn.
    let point = TaskTemplate::built_in(Task::ImageUnderstanding, Mode::Pointwise).unwrap();
    let classes = AnswerClasses::for_grammar(&point.answer, &tokenizer).unwrap();
    assert_eq!(classes.num_classes(), 101);
    assert_eq!(classes.values.as_ref().unwrap()[100], 100.0);
    let end = tokenizer.token_to_id("<|im_end|>").unwrap();
    assert!(classes.continuations.iter().all(|c| c.last() == Some(&end)));
    let prefix = tokenizer.encode("Final Score:").unwrap();
    assert!(classes.prefix.starts_with(&prefix), "{:?}", classes.prefix);
    // 1..=5: single digits, no end needed.
    let point = TaskTemplate::built_in(Task::ImageGeneration, Mode::Pointwise).unwrap();
    let classes = AnswerClasses::for_grammar(&point.answer, &tokenizer).unwrap();
    assert!(classes.continuations.iter().all(|c| c.last() != Some(&end)));
}
