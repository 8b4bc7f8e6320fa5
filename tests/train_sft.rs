//! The SFT trainer: 10 steps with gradient accumulation against PyTorch (`tests/reference/train_sft.py`: a float64
//! transformers model + AdamW + clip_grad_norm_ + the cosine warm-up schedule), a toy task it learns, and clear
//! errors on bad batches.

use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;
use unireward::model::Qwen2Model;
use unireward::train::data::{SequenceBatch, IGNORE_INDEX};
use unireward::train::optim::{AdamWConfig, ParamGroup, Schedule, ScheduleKind};
use unireward::train::sft::{SftConfig, SftTrainer};
use unireward::{DType, Device};

mod common;
use common::reference::{assert_close, fixture, values_f64, ReferenceBatch};

#[derive(Deserialize)]
struct Config {
    lr: f64,
    betas: (f64, f64),
    eps: f64,
    weight_decay: f64,
    max_grad_norm: f64,
    warmup_ratio: f64,
    total_steps: usize,
    tasks: usize,
    /// Parameters the reference does not train (their gradient is rounding noise).
    frozen: String,
}

#[derive(Deserialize)]
struct Step {
    loss: f64,
    tokens: usize,
    grad_norm: f64,
    lr: f64,
    task_loss: Vec<Option<f64>>,
}

#[derive(Deserialize)]
struct Steps {
    config: Config,
    batches: Vec<Vec<ReferenceBatch>>,
    steps: Vec<Step>,
}

fn tiny_model() -> Qwen2Model {
    Qwen2Model::load(&fixture("qwen2/mha_tied"), DType::F32, Device::Cpu).unwrap()
}

#[test]
fn ten_sft_steps_with_accumulation_match_pytorch() {
    let text = std::fs::read_to_string(fixture("train_sft/steps.json")).unwrap();
    let Steps { config: c, batches, steps } = serde_json::from_str(&text).unwrap();
    let optimizer = AdamWConfig {
        lr: c.lr,
        betas: c.betas,
        eps: c.eps,
        weight_decay: c.weight_decay,
        max_grad_norm: Some(c.max_grad_norm),
        schedule: Schedule::with_warmup_ratio(ScheduleKind::Cosine, c.total_steps, c.warmup_ratio).unwrap(),
        ..AdamWConfig::default()
    };
    let groups = vec![ParamGroup::new("frozen", &[&c.frozen]).frozen()];
    let config = SftConfig { optimizer, groups, tasks: c.tasks, ..SftConfig::default() };
    let mut trainer = SftTrainer::new(tiny_model(), config).unwrap();
    for (k, (micro, want)) in batches.into_iter().zip(&steps).enumerate() {
        let micro: Vec<SequenceBatch> = micro.iter().map(ReferenceBatch::sequence_batch).collect();
        let got = trainer.step(&micro).unwrap();
        assert_eq!(got.step, k as u64 + 1);
        assert_eq!(got.tokens, want.tokens, "step {k} tokens");
        assert_close(&format!("step {k} loss"), got.loss, want.loss, 1e-5, 1e-3);
        assert_close(&format!("step {k} grad norm"), got.grad_norm.unwrap(), want.grad_norm, 1e-5, 1e-3);
        assert_close(&format!("step {k} lr"), got.lr, want.lr, 1e-12, 1e-3);
        assert_eq!(got.task_loss.len(), want.task_loss.len());
        for (t, (g, w)) in got.task_loss.iter().zip(&want.task_loss).enumerate() {
            match (g, w) {
                (Some(g), Some(w)) => assert_close(&format!("step {k} task {t} loss"), *g, *w, 1e-5, 1e-3),
                (g, w) => assert_eq!(g.is_some(), w.is_some(), "step {k} task {t}: {g:?} vs {w:?}"),
            }
        }
    }
    let bytes = std::fs::read(fixture("train_sft/final.safetensors")).unwrap();
    let expected = SafeTensors::deserialize(&bytes).unwrap();
    let model = trainer.into_model();
    let named = model.named_parameters();
    assert_eq!(named.len(), expected.len());
    let mut worst: f64 = 0.0;
    for (name, got) in named {
        let view = expected.tensor(&name).unwrap();
        assert_eq!((view.dtype(), view.shape()), (Dtype::F64, got.shape()), "`{name}`");
        let want: Vec<f64> = view.data().chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect();
        // The f32 rounding of the float64 reference is exact to 1e-7 relative, far inside the tolerance.
        for (i, (g, w)) in values_f64(got).iter().zip(&want).enumerate() {
            let err = (g - w).abs() / w.abs().max(1e-2);
            worst = worst.max(err);
            assert!(err <= 1e-5, "`{name}`[{i}]: got {g}, want {w}");
        }
    }
    eprintln!("worst relative error of the final parameters: {worst:e}");
}

/// Four fixed question/answer sequences: the answers (labelled) are a function of the questions (not labelled).
fn toy_batch() -> SequenceBatch {
    let rows: [[i64; 6]; 4] =
        [[5, 6, 7, 40, 41, 42], [8, 9, 10, 50, 51, 52], [11, 12, 13, 60, 61, 62], [14, 15, 16, 70, 71, 72]];
    let ids: Vec<i64> = rows.iter().flatten().copied().collect();
    let labels =
        rows.iter().flat_map(|r| r.iter().enumerate().map(|(i, &id)| if i >= 3 { id } else { IGNORE_INDEX })).collect();
    SequenceBatch {
        rows: 4,
        len: 6,
        mask: vec![1; ids.len()],
        ids,
        labels,
        tasks: vec![0, 1, 0, 1],
        media: vec![Vec::new(); 4],
    }
}

#[test]
fn the_loss_falls_on_a_learnable_toy_task() {
    let steps = 60;
    let optimizer = AdamWConfig {
        lr: 3e-2,
        weight_decay: 0.0,
        max_grad_norm: Some(1.0),
        schedule: Schedule::with_warmup_ratio(ScheduleKind::Cosine, steps, 0.03).unwrap(),
        ..AdamWConfig::default()
    };
    let mut trainer = SftTrainer::new(tiny_model(), SftConfig { optimizer, tasks: 2, ..SftConfig::default() }).unwrap();
    let batch = toy_batch();
    let first = trainer.step(std::slice::from_ref(&batch)).unwrap();
    let mut last = first.clone();
    for _ in 1..steps {
        last = trainer.step(std::slice::from_ref(&batch)).unwrap();
    }
    assert_eq!(first.tokens, 12);
    assert!(last.loss < 0.1 * first.loss, "loss {} → {}", first.loss, last.loss);
    assert!(last.task_loss.iter().all(|l| l.unwrap() < 0.1 * first.loss), "{:?}", last.task_loss);
}

#[test]
fn bad_batches_are_clear_errors() {
    let mut trainer = SftTrainer::new(tiny_model(), SftConfig { tasks: 2, ..SftConfig::default() }).unwrap();
    let before = values_f64(trainer.model().language_model().weights.head());
    let mut message =
        |batches: &[SequenceBatch]| trainer.step(batches).expect_err("a bad batch must be refused").to_string();
    assert!(message(&[]).contains("at least one micro-batch"));
    let mut wrong_task = toy_batch();
    wrong_task.tasks[2] = 2;
    assert!(message(&[wrong_task]).contains("task 2"));
    let mut unlabelled = toy_batch();
    unlabelled.labels.fill(IGNORE_INDEX);
    assert!(message(&[unlabelled]).contains("micro-batch 0: no labelled token"));
    let mut short_labels = toy_batch();
    short_labels.labels.pop();
    assert!(message(&[short_labels]).contains("`labels`"));
    let mut out_of_vocab = toy_batch();
    out_of_vocab.labels[5] = 1000;
    assert!(message(&[toy_batch(), out_of_vocab]).contains("micro-batch 1: label 1000"));
    let mut bad_id = toy_batch();
    bad_id.ids[0] = -3;
    assert!(message(&[bad_id]).contains("token id -3"));
    assert_eq!(
        values_f64(trainer.model().language_model().weights.head()),
        before,
        "a failed step wrote the parameters"
    );
}
