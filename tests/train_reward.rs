//! The reward-model trainer: 10 Bradley–Terry steps (margins, centring, accumulation, clipping) against PyTorch and
//! the K-wise (Plackett–Luce) loss and every gradient against a float64 reference (`tests/reference/train_reward.py`:
//! transformers' Qwen2ForSequenceClassification in float64, AdamW + clip_grad_norm_ + the cosine warm-up schedule)
//! and finite differences; a learnable toy preference task whose held-out accuracy rises; clear errors on bad
//! batches. The run over files (resume, evaluation, checkpoints, bad input) is in `train_reward_run.rs`.

use safetensors::SafeTensors;
use serde::Deserialize;
use unireward::model::Qwen2Model;
use unireward::ops::preference::KwiseMethod;
use unireward::train::data::{SequenceBatch, IGNORE_INDEX};
use unireward::train::optim::{AdamWConfig, ParamGroup, Schedule, ScheduleKind};
use unireward::train::reward::{
    init_score, RewardBatch, RewardLoss, RewardMetrics, RewardTrainer, RewardTrainerConfig, SCORE_WEIGHT,
};
use unireward::{DType, Device, Tensor};

mod common;
use common::reference::{assert_close, fixture, values_f64, ReferenceBatch};

#[derive(Deserialize)]
struct Config {
    lr: f64,
    betas: (f64, f64),
    eps: f64,
    weight_decay: f64,
    warmup_ratio: f64,
    total_steps: usize,
    frozen: String,
    max_grad_norm: f64,
    center_rewards_coefficient: f32,
}

#[derive(Deserialize)]
struct Step {
    loss: f64,
    accuracy: f64,
    rewards_chosen: f64,
    rewards_rejected: f64,
    margin: f64,
    grad_norm: f64,
    lr: f64,
    tokens: usize,
}

#[derive(Deserialize)]
struct Kwise {
    batch: ReferenceBatch,
    loss: f64,
    accuracy: f64,
}

#[derive(Deserialize)]
struct Fixture {
    config: Config,
    score: Vec<f32>,
    batches: Vec<Vec<ReferenceBatch>>,
    steps: Vec<Step>,
    kwise: Kwise,
}

fn load_fixture() -> Fixture {
    serde_json::from_str(&std::fs::read_to_string(fixture("train_reward/steps.json")).unwrap()).unwrap()
}

fn tiny_model() -> Qwen2Model {
    Qwen2Model::load(&fixture("qwen2/mha_tied"), DType::F32, Device::Cpu).unwrap()
}

fn score_tensor(values: &[f32]) -> Tensor {
    Tensor::from_f32(values, &[1, values.len()], DType::F32, Device::Cpu).unwrap()
}

fn optimizer(lr: f64, steps: usize) -> AdamWConfig {
    AdamWConfig {
        lr,
        weight_decay: 0.0,
        max_grad_norm: Some(1.0),
        schedule: Schedule::with_warmup_ratio(ScheduleKind::Cosine, steps, 0.03).unwrap(),
        ..AdamWConfig::default()
    }
}

fn trainer(loss: RewardLoss, score: &[f32], optimizer: AdamWConfig) -> RewardTrainer {
    let config = RewardTrainerConfig { optimizer, loss, ..RewardTrainerConfig::default() };
    RewardTrainer::new(tiny_model(), score_tensor(score), config).unwrap()
}

/// 10 steps on `device` against the fixture, every value within `rel` (relative, with the floors below).
fn ten_bradley_terry_steps_match_pytorch(device: Device, rel: f64) {
    let Fixture { config: c, score, batches, steps, .. } = load_fixture();
    let optimizer = AdamWConfig {
        lr: c.lr,
        betas: c.betas,
        eps: c.eps,
        weight_decay: c.weight_decay,
        max_grad_norm: Some(c.max_grad_norm),
        schedule: Schedule::with_warmup_ratio(ScheduleKind::Cosine, c.total_steps, c.warmup_ratio).unwrap(),
        ..AdamWConfig::default()
    };
    let loss = RewardLoss::BradleyTerry { center_rewards_coefficient: Some(c.center_rewards_coefficient) };
    let groups = vec![ParamGroup::new("frozen", &[&c.frozen]).frozen()];
    let config = RewardTrainerConfig { optimizer, groups, loss, ..RewardTrainerConfig::default() };
    let model = Qwen2Model::load(&fixture("qwen2/mha_tied"), DType::F32, device).unwrap();
    let score = Tensor::from_f32(&score, &[1, score.len()], DType::F32, device).unwrap();
    let mut trainer = RewardTrainer::new(model, score, config).unwrap();
    for (k, (micro, want)) in batches.iter().zip(&steps).enumerate() {
        let micro: Vec<RewardBatch> =
            micro.iter().map(|b| RewardBatch::pairs(b.sequence_batch(), b.margin.clone())).collect();
        let got = trainer.step(&micro).unwrap();
        let m = &got.metrics;
        assert_eq!((got.step, got.groups, got.tokens), (k as u64 + 1, 4, want.tokens), "step {k}");
        assert_close(&format!("step {k} loss"), m.loss, want.loss, rel, 1e-3);
        assert_close(&format!("step {k} grad norm"), got.grad_norm.unwrap(), want.grad_norm, rel, 1e-3);
        assert_close(&format!("step {k} lr"), got.lr, want.lr, 1e-12, 1e-3);
        assert_eq!(m.accuracy, want.accuracy, "step {k} accuracy");
        for (name, g, w) in [
            ("rewards/chosen", m.rewards_chosen, want.rewards_chosen),
            ("rewards/rejected", m.rewards_rejected, want.rewards_rejected),
            ("margin", m.margin, want.margin),
        ] {
            assert_close(&format!("step {k} {name}"), g, w, rel, 1.0);
        }
    }
    let bytes = std::fs::read(fixture("train_reward/final.safetensors")).unwrap();
    let expected = SafeTensors::deserialize(&bytes).unwrap();
    let named = trainer.named_parameters();
    assert_eq!(named.len(), expected.len());
    let mut worst: f64 = 0.0;
    for (name, got) in named {
        let view = expected.tensor(&name).unwrap();
        assert_eq!(view.shape(), got.shape(), "`{name}`");
        let want: Vec<f64> =
            view.data().chunks_exact(4).map(|b| f64::from(f32::from_le_bytes(b.try_into().unwrap()))).collect();
        for (i, (g, w)) in values_f64(got).iter().zip(&want).enumerate() {
            let err = (g - w).abs() / w.abs().max(1e-2);
            worst = worst.max(err);
            assert!(err <= rel, "`{name}`[{i}]: got {g}, want {w}");
        }
    }
    eprintln!("worst relative error of the final parameters: {worst:e}");
}

#[test]
fn ten_bradley_terry_steps_with_margins_centring_and_accumulation_match_pytorch() {
    ten_bradley_terry_steps_match_pytorch(Device::Cpu, 1e-5);
}

/// The same on CUDA, whose kernels reduce in other orders: 1e-4, as for the DPO trainer.
#[test]
#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
fn ten_bradley_terry_steps_on_cuda_match_pytorch() {
    ten_bradley_terry_steps_match_pytorch(Device::Cuda(0), 1e-4);
}

/// The K-wise batch's loss under a model whose parameter `name` has `delta` added at `index`.
fn perturbed_loss(score: &[f32], batch: &RewardBatch, name: &str, index: usize, delta: f32) -> f64 {
    let mut model = tiny_model();
    let mut score = score.to_vec();
    if name == SCORE_WEIGHT {
        score[index] += delta;
    } else {
        let mut named = model.weights.named_mut();
        let (_, t) = named.iter_mut().find(|(n, _)| n == name).unwrap();
        let mut values = t.to_vec::<f32>().unwrap();
        values[index] += delta;
        **t = Tensor::from_f32(&values, t.shape(), DType::F32, Device::Cpu).unwrap();
    }
    let config = RewardTrainerConfig { loss: plackett_luce(), ..RewardTrainerConfig::default() };
    let trainer = RewardTrainer::new(model, score_tensor(&score), config).unwrap();
    trainer.evaluate(std::slice::from_ref(batch)).unwrap().loss
}

fn plackett_luce() -> RewardLoss {
    RewardLoss::Kwise(KwiseMethod::PlackettLuce)
}

#[test]
fn kwise_loss_and_every_gradient_match_float64_and_finite_differences() {
    let Fixture { score, kwise, .. } = load_fixture();
    let batch = RewardBatch { rows: kwise.batch.sequence_batch(), k: 3, margin: None };
    let mut trainer = trainer(plackett_luce(), &score, AdamWConfig::default());
    let metrics = trainer.backward(&batch).unwrap();
    assert_close("loss", metrics.loss, kwise.loss, 1e-6, 1.0);
    assert_close("accuracy", metrics.accuracy, kwise.accuracy, 1e-6, 1.0);
    let bytes = std::fs::read(fixture("train_reward/kwise_grads.safetensors")).unwrap();
    let expected = SafeTensors::deserialize(&bytes).unwrap();
    let grads = trainer.gradients();
    assert_eq!(grads.len(), expected.len());
    for (name, got) in &grads {
        let view = expected.tensor(&format!("grad.{name}")).unwrap();
        let want: Vec<f64> =
            view.data().chunks_exact(4).map(|b| f64::from(f32::from_le_bytes(b.try_into().unwrap()))).collect();
        assert_eq!(view.shape(), got.shape(), "`{name}`");
        let scale = want.iter().fold(0.0f64, |m, w| m.max(w.abs())).max(1e-6);
        for (i, (g, w)) in values_f64(got).iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 1e-5 * scale, "`{name}` gradient [{i}]: got {g}, want {w} (scale {scale})");
        }
    }
    // Central differences in f32 on entries the batch reaches: the head, a projection, a used token's embedding.
    let used = kwise.batch.ids[0] as usize * 16 + 3;
    for (name, index) in [
        (SCORE_WEIGHT, 0),
        (SCORE_WEIGHT, 7),
        ("model.layers.1.mlp.down_proj.weight", 5),
        ("model.layers.0.self_attn.q_proj.weight", 17),
        ("model.embed_tokens.weight", used),
    ] {
        let h = 1e-2;
        let fd = (perturbed_loss(&score, &batch, name, index, h) - perturbed_loss(&score, &batch, name, index, -h))
            / (2.0 * f64::from(h));
        let (_, grad) = grads.iter().find(|(n, _)| n == name).unwrap();
        let analytic = values_f64(grad)[index];
        assert!(
            (fd - analytic).abs() <= 2e-3 + 1e-2 * analytic.abs(),
            "`{name}`[{index}]: fd {fd}, analytic {analytic}"
        );
    }
}

/// Pairs over `prompts` whose chosen response ends in a "good" token (40..48) and whose rejected one ends in a "bad"
/// token (70..78), both after one shared random-looking token: the reward must learn which tokens are good.
fn toy_pairs(prompts: &[[i64; 3]], offset: usize) -> RewardBatch {
    let n = prompts.len();
    let rows: Vec<Vec<i64>> = (0..2 * n)
        .map(|r| {
            let (p, good) = (r % n, r < n);
            let last = if good { 40 + ((p + offset) % 8) as i64 } else { 70 + ((p * 3 + offset) % 8) as i64 };
            prompts[p].iter().copied().chain([20 + (p % 5) as i64, last]).collect()
        })
        .collect();
    let ids: Vec<i64> = rows.concat();
    let labels =
        rows.iter().flat_map(|r| r.iter().enumerate().map(|(i, &id)| if i >= 3 { id } else { IGNORE_INDEX })).collect();
    let rows = SequenceBatch {
        rows: 2 * n,
        len: 5,
        mask: vec![1; ids.len()],
        ids,
        labels,
        tasks: vec![0; 2 * n],
        media: vec![vec![]; 2 * n],
    };
    RewardBatch::pairs(rows, None)
}

fn toy_prompts(seed: i64, n: usize) -> Vec<[i64; 3]> {
    (0..n as i64).map(|i| [(seed + 7 * i) % 90, (seed * 3 + 11 * i) % 90, (seed * 5 + 13 * i) % 90]).collect()
}

#[test]
fn held_out_accuracy_rises_on_a_learnable_toy_preference_task() {
    let steps = 60;
    let train: Vec<_> =
        [(1, 0), (2, 1), (3, 2), (4, 4)].map(|(seed, offset)| toy_pairs(&toy_prompts(seed, 8), offset)).into();
    let held_out = toy_pairs(&toy_prompts(6, 8), 3);
    let score = init_score(16, 0.02, 7, Device::Cpu).unwrap().to_vec::<f32>().unwrap();
    let mut trainer = trainer(RewardLoss::default(), &score, optimizer(3e-2, steps));
    let before: RewardMetrics = trainer.evaluate(std::slice::from_ref(&held_out)).unwrap();
    for _ in 0..steps {
        trainer.step(&train).unwrap();
    }
    let after = trainer.evaluate(std::slice::from_ref(&held_out)).unwrap();
    eprintln!("held-out before {before:?}\nheld-out after {after:?}");
    assert!(after.accuracy >= 0.9, "held-out accuracy {} → {}", before.accuracy, after.accuracy);
    assert!(after.loss < 0.5 * before.loss, "held-out loss {} → {}", before.loss, after.loss);
    assert!(after.margin > 1.0, "{after:?}");
}

#[test]
fn bad_batches_and_losses_are_clear_errors() {
    let score = vec![0.1f32; 16];
    let bad = RewardLoss::BradleyTerry { center_rewards_coefficient: Some(-1.0) };
    let config = RewardTrainerConfig { loss: bad, ..RewardTrainerConfig::default() };
    let err = RewardTrainer::new(tiny_model(), score_tensor(&score), config).unwrap_err().to_string();
    assert!(err.contains("`--center-rewards-coefficient` must be finite and >= 0"), "{err}");
    let err = RewardTrainer::new(tiny_model(), score_tensor(&[0.0; 8]), RewardTrainerConfig::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("`score.weight` is [1, 8]") && err.contains("want [1, 16]"), "{err}");
    assert!(RewardLoss::from_name("listwise", None).unwrap_err().to_string().contains("unknown loss `listwise`"));
    assert!(RewardLoss::from_name("kwise", Some(0.1)).is_err());

    let mut trainer = trainer(RewardLoss::default(), &score, optimizer(1e-2, 10));
    let before = values_f64(trainer.score());
    let good = toy_pairs(&toy_prompts(1, 4), 0);
    let mut message = |batches: &[RewardBatch]| trainer.step(batches).expect_err("must be refused").to_string();
    assert!(message(&[]).contains("at least one batch"));
    let triples = RewardBatch { k: 3, ..good.clone() };
    assert!(message(&[triples]).contains("8 rows in groups of 3"));
    let mut lists = good.clone();
    lists.k = 4;
    assert!(message(&[lists]).contains("Bradley–Terry trains on pairs"));
    let short = RewardBatch { margin: Some(vec![0.1; 3]), ..good.clone() };
    assert!(message(&[good.clone(), short]).contains("micro-batch 1: 3 margins for 4 pairs"));
    let nan = RewardBatch { margin: Some(vec![0.1, f32::NAN, 0.0, 0.0]), ..good.clone() };
    assert!(message(&[nan]).contains("a margin is NaN"));
    let mut empty = good.clone();
    let len = empty.rows.len;
    empty.rows.mask[2 * len..3 * len].fill(0);
    assert!(message(&[empty]).contains("row 2 has no token"));
    let mut bad_id = good.clone();
    bad_id.rows.ids[0] = 96;
    assert!(message(&[bad_id]).contains("token id 96"));
    assert_eq!(values_f64(trainer.score()), before, "a failed step wrote the head");
}

#[test]
fn a_fresh_head_is_normal_with_the_given_std_and_a_function_of_the_seed() {
    let draw = |seed| init_score(4096, 0.02, seed, Device::Cpu).unwrap().to_vec::<f32>().unwrap();
    let (a, b) = (draw(3), draw(4));
    assert_eq!(a, draw(3));
    assert_ne!(a, b);
    let n = a.len() as f64;
    let mean = a.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let std = (a.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / n).sqrt();
    // 4096 draws: the mean's standard error is 3e-4, the std's 2e-4.
    assert!(mean.abs() < 1.5e-3 && (std - 0.02).abs() < 1e-3, "mean {mean}, std {std}");
    let beyond = a.iter().filter(|x| x.abs() > 0.04).count() as f64 / n;
    assert!((beyond - 0.0455).abs() < 0.015, "share beyond 2σ: {beyond}");
    assert!(init_score(4, f64::NAN, 0, Device::Cpu).unwrap_err().to_string().contains("initial std"));
}
