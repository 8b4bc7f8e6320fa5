//! The DPO trainer: 10 steps with gradient accumulation against PyTorch for TRL's sigmoid loss (with label
//! smoothing), its IPO loss, RPO (`rpo_alpha`), a sigmoid + hinge mixture (`loss_weights`), LD-DPO (`ld_alpha`,
//! pairs of unequal lengths both ways) and WPO (`use_weighting`) (`tests/reference/train_dpo.py`: a float64 transformers model, TRL's formulas by hand,
//! AdamW + clip_grad_norm_ + the cosine warm-up schedule), its reference pass against the same, a toy preference task
//! it learns, and clear errors on bad batches and losses.

use safetensors::SafeTensors;
use serde::Deserialize;
use unireward::model::Qwen2Model;
use unireward::ops::preference::{DpoConfig, DpoLossType, TrlDpoOptions};
use unireward::train::data::{SequenceBatch, IGNORE_INDEX};
use unireward::train::dpo::{reference_logps, DpoTrainer, DpoTrainerConfig, PairBatch, PairLogps};
use unireward::train::model::TrainModel;
use unireward::train::optim::{AdamWConfig, ParamGroup, Schedule, ScheduleKind};
use unireward::{DType, Device};

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
}

#[derive(Deserialize)]
struct Reference {
    chosen: Vec<f64>,
    rejected: Vec<f64>,
}

#[derive(Deserialize)]
struct Step {
    loss: f64,
    tokens: usize,
    grad_norm: f64,
    lr: f64,
    rewards_chosen: f64,
    rewards_rejected: f64,
    rewards_accuracies: f64,
    rewards_margins: f64,
    logps_chosen: f64,
    logps_rejected: f64,
}

#[derive(Deserialize)]
struct LossRun {
    loss_type: String,
    loss_weights: Option<Vec<f32>>,
    rpo_alpha: Option<f32>,
    ld_alpha: Option<f32>,
    #[serde(default)]
    use_weighting: bool,
    beta: f32,
    label_smoothing: f32,
    max_grad_norm: f64,
    references: Vec<Vec<Reference>>,
    steps: Vec<Step>,
}

#[derive(Deserialize)]
struct Fixture {
    config: Config,
    batches: Vec<Vec<ReferenceBatch>>,
    losses: std::collections::HashMap<String, LossRun>,
}

fn tiny_model() -> Qwen2Model {
    tiny_model_on(Device::Cpu)
}

fn tiny_model_on(device: Device) -> Qwen2Model {
    Qwen2Model::load(&fixture("qwen2/mha_tied"), DType::F32, device).unwrap()
}

/// 10 steps on `device` against the fixture, every value within `rel` (relative, with the floors below).
/// `run` names the fixture's loss run (its options as `unireward dpo` spells them).
fn ten_steps_match_pytorch(run_name: &str, device: Device, rel: f64) {
    let text = std::fs::read_to_string(fixture("train_dpo/steps.json")).unwrap();
    let Fixture { config: c, batches, losses } = serde_json::from_str(&text).unwrap();
    let run = &losses[run_name];
    let optimizer = AdamWConfig {
        lr: c.lr,
        betas: c.betas,
        eps: c.eps,
        weight_decay: c.weight_decay,
        max_grad_norm: Some(run.max_grad_norm),
        schedule: Schedule::with_warmup_ratio(ScheduleKind::Cosine, c.total_steps, c.warmup_ratio).unwrap(),
        ..AdamWConfig::default()
    };
    let options = TrlDpoOptions {
        loss_type: run.loss_type.clone(),
        loss_weights: run.loss_weights.clone(),
        rpo_alpha: run.rpo_alpha,
        ld_alpha: run.ld_alpha,
        use_weighting: run.use_weighting,
        beta: run.beta,
        label_smoothing: run.label_smoothing,
        ..TrlDpoOptions::default()
    };
    let loss = DpoConfig::from_trl(&options, str::to_owned).unwrap();
    let groups = vec![ParamGroup::new("frozen", &[&c.frozen]).frozen()];
    let config = DpoTrainerConfig { optimizer, groups, loss, ..DpoTrainerConfig::default() };
    let reference = TrainModel::from(tiny_model_on(device));
    let mut trainer = DpoTrainer::new(tiny_model_on(device), config).unwrap();
    for (k, ((micro, refs), want)) in batches.iter().zip(&run.references).zip(&run.steps).enumerate() {
        let micro: Vec<PairBatch> = micro
            .iter()
            .zip(refs)
            .map(|(b, r)| {
                let rows = b.sequence_batch();
                let got = reference_logps(&reference, &rows, Default::default(), run.ld_alpha).unwrap();
                for (g, w) in got.chosen.iter().chain(&got.rejected).zip(r.chosen.iter().chain(&r.rejected)) {
                    assert_close(&format!("step {k} reference log-prob"), f64::from(*g), *w, rel, 1.0);
                }
                PairBatch { rows, reference: Some(got) }
            })
            .collect();
        let got = trainer.step(&micro).unwrap();
        let m = &got.metrics;
        assert_eq!((got.step, got.pairs, got.tokens), (k as u64 + 1, 4, want.tokens), "step {k}");
        assert_close(&format!("step {k} loss"), got.loss, want.loss, rel, 1e-3);
        assert_close(&format!("step {k} grad norm"), got.grad_norm.unwrap(), want.grad_norm, rel, 1e-3);
        assert_close(&format!("step {k} lr"), got.lr, want.lr, 1e-12, 1e-3);
        for (name, g, w) in [
            ("rewards/chosen", m.rewards_chosen, want.rewards_chosen),
            ("rewards/rejected", m.rewards_rejected, want.rewards_rejected),
            ("rewards/margins", m.rewards_margins, want.rewards_margins),
            ("rewards/accuracies", m.rewards_accuracies, want.rewards_accuracies),
            ("logps/chosen", m.logps_chosen, want.logps_chosen),
            ("logps/rejected", m.logps_rejected, want.logps_rejected),
        ] {
            // Rewards start at 0 (policy = reference): an absolute floor of 1 for f32 log-probs of ~10.
            assert_close(&format!("step {k} {name}"), f64::from(g), w, rel, 1.0);
        }
    }
    let bytes = std::fs::read(fixture(&format!("train_dpo/final_{run_name}.safetensors"))).unwrap();
    let expected = SafeTensors::deserialize(&bytes).unwrap();
    let model = trainer.into_model();
    let named = model.named_parameters();
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
    eprintln!("{run_name}: worst relative error of the final parameters: {worst:e}");
}

#[test]
fn ten_sigmoid_dpo_steps_with_label_smoothing_and_accumulation_match_pytorch() {
    ten_steps_match_pytorch("sigmoid", Device::Cpu, 1e-5);
}

#[test]
fn ten_ipo_steps_with_accumulation_match_pytorch() {
    ten_steps_match_pytorch("ipo", Device::Cpu, 1e-5);
}

#[test]
fn ten_rpo_steps_with_accumulation_match_pytorch() {
    ten_steps_match_pytorch("rpo", Device::Cpu, 1e-5);
}

#[test]
fn ten_steps_of_a_sigmoid_hinge_mixture_match_pytorch() {
    ten_steps_match_pytorch("mixture", Device::Cpu, 1e-5);
}

#[test]
fn ten_ld_dpo_steps_with_accumulation_match_pytorch() {
    ten_steps_match_pytorch("ld", Device::Cpu, 1e-5);
}

#[test]
fn ten_wpo_steps_with_accumulation_match_pytorch() {
    ten_steps_match_pytorch("wpo", Device::Cpu, 1e-5);
}

/// The same on CUDA, whose kernels reduce in other orders: 1e-4 (the CPU run's worst final parameter is already
/// 8e-6 from the float64 reference, an embedding row of a token no batch holds, moved by AdamW alone).
#[test]
#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
fn ten_dpo_steps_on_cuda_match_pytorch() {
    for run in ["sigmoid", "ipo", "rpo", "mixture", "ld", "wpo"] {
        ten_steps_match_pytorch(run, Device::Cuda(0), 1e-4);
    }
}

/// Pairs whose chosen answer is a function of the prompt and whose rejected answer is another prompt's.
fn toy_batch() -> SequenceBatch {
    let prompts: [[i64; 3]; 4] = [[5, 6, 7], [8, 9, 10], [11, 12, 13], [14, 15, 16]];
    let answers: [[i64; 2]; 4] = [[40, 41], [50, 51], [60, 61], [70, 71]];
    let rows: Vec<Vec<i64>> = (0..8)
        .map(|r| {
            let (p, a) = if r < 4 { (r, r) } else { (r - 4, (r - 4 + 1) % 4) };
            prompts[p].iter().chain(&answers[a]).copied().collect()
        })
        .collect();
    let ids: Vec<i64> = rows.concat();
    let labels =
        rows.iter().flat_map(|r| r.iter().enumerate().map(|(i, &id)| if i >= 3 { id } else { IGNORE_INDEX })).collect();
    SequenceBatch { rows: 8, len: 5, mask: vec![1; ids.len()], ids, labels, tasks: vec![0; 8], media: vec![vec![]; 8] }
}

fn trainer_with(loss: DpoConfig, lr: f64, steps: usize) -> DpoTrainer {
    let optimizer = AdamWConfig {
        lr,
        weight_decay: 0.0,
        max_grad_norm: Some(1.0),
        schedule: Schedule::with_warmup_ratio(ScheduleKind::Cosine, steps, 0.03).unwrap(),
        ..AdamWConfig::default()
    };
    DpoTrainer::new(tiny_model(), DpoTrainerConfig { optimizer, loss, ..DpoTrainerConfig::default() }).unwrap()
}

#[test]
fn the_loss_falls_on_a_learnable_toy_preference_task() {
    let steps = 40;
    let reference = TrainModel::from(tiny_model());
    let batch = toy_batch();
    let pairs = PairBatch {
        reference: Some(reference_logps(&reference, &batch, Default::default(), None).unwrap()),
        rows: batch,
    };
    let mut trainer = trainer_with(DpoConfig { beta: 1.0, ..DpoConfig::default() }, 3e-2, steps);
    let first = trainer.step(std::slice::from_ref(&pairs)).unwrap();
    let mut last = first.clone();
    for _ in 1..steps {
        last = trainer.step(std::slice::from_ref(&pairs)).unwrap();
    }
    assert!((first.loss - std::f64::consts::LN_2).abs() < 1e-5, "policy = reference: loss {}", first.loss);
    assert!(last.loss < 0.1 * first.loss, "loss {} → {}", first.loss, last.loss);
    assert_eq!(last.metrics.rewards_accuracies, 1.0);
    assert!(last.metrics.rewards_margins > 2.0, "{:?}", last.metrics);
}

#[test]
fn bad_batches_and_losses_are_clear_errors() {
    for (loss, what) in [
        (DpoConfig { beta: 0.0, ..DpoConfig::default() }, "`beta` must be positive"),
        (DpoConfig { label_smoothing: 0.5, ..DpoConfig::default() }, "`label_smoothing`"),
        (DpoConfig { ld_alpha: Some(-0.1), ..DpoConfig::default() }, "`ld_alpha` must be in [0, 1], got -0.1"),
        (DpoConfig { ld_alpha: Some(f32::NAN), ..DpoConfig::default() }, "`ld_alpha` must be in [0, 1], got NaN"),
        (DpoConfig { ld_alpha: Some(1.5), ..DpoConfig::default() }, "`ld_alpha` must be in [0, 1]"),
        (
            DpoConfig { ld_alpha: Some(0.5), reference_free: true, ..DpoConfig::default() },
            "`ld_alpha` needs a reference",
        ),
        (
            DpoConfig { ld_alpha: Some(0.5), loss_type: DpoLossType::Ipo, ..DpoConfig::default() },
            "`ld_alpha` does not go with ipo",
        ),
    ] {
        let config = DpoTrainerConfig { loss, ..DpoTrainerConfig::default() };
        let err = DpoTrainer::new(tiny_model(), config).expect_err("a bad loss must be refused").to_string();
        assert!(err.contains(what), "{err}");
    }
    let mut trainer = trainer_with(DpoConfig::default(), 1e-2, 10);
    let before = values_f64(trainer.model().language_model().weights.head());
    let reference = Some(PairLogps { chosen: vec![-5.0; 4], rejected: vec![-5.0; 4] });
    let good = PairBatch { rows: toy_batch(), reference: reference.clone() };
    let mut message =
        |batches: &[PairBatch]| trainer.step(batches).expect_err("a bad batch must be refused").to_string();
    assert!(message(&[]).contains("at least one micro-batch"));
    let mut odd = good.clone();
    odd.rows.rows = 7;
    assert!(message(&[odd]).contains("7 rows"));
    let no_reference = PairBatch { reference: None, ..good.clone() };
    assert!(message(&[good.clone(), no_reference]).contains("micro-batch 1: the sigmoid loss needs"));
    let mut short = good.clone();
    short.reference.as_mut().unwrap().rejected.pop();
    assert!(message(&[short]).contains("4 chosen and 3 rejected"));
    let mut nan = good.clone();
    nan.reference.as_mut().unwrap().chosen[1] = f32::NAN;
    assert!(message(&[nan]).contains("NaN"));
    let mut empty = good.clone();
    let len = empty.rows.len;
    empty.rows.labels[6 * len..7 * len].fill(IGNORE_INDEX);
    assert!(message(&[empty]).contains("pair 2: the rejected completion has no token"));
    let mut bad_id = good.clone();
    bad_id.rows.ids[0] = 96;
    assert!(message(&[bad_id]).contains("token id 96"));
    assert_eq!(
        values_f64(trainer.model().language_model().weights.head()),
        before,
        "a failed step wrote the parameters"
    );
}

#[test]
fn reference_free_and_simpo_need_no_reference() {
    for loss in [
        DpoConfig { reference_free: true, ..DpoConfig::default() },
        DpoConfig { loss_type: DpoLossType::Simpo, beta: 2.0, ..DpoConfig::default() },
    ] {
        let mut trainer = trainer_with(loss, 1e-2, 10);
        assert!(!trainer.needs_reference());
        let got = trainer.step(&[PairBatch { rows: toy_batch(), reference: None }]).unwrap();
        assert!(got.loss.is_finite() && got.loss > 0.0, "{got:?}");
    }
}

/// `unireward dpo`'s and `[dpo]`'s spelling of a bad `ld_alpha` is named in the error.
#[test]
fn bad_ld_alpha_options_name_the_flag() {
    let flag = |key: &str| format!("`--{}`", key.replace('_', "-"));
    for (options, what) in [
        (
            TrlDpoOptions { ld_alpha: Some(f32::NAN), ..TrlDpoOptions::default() },
            "`--ld-alpha` must be in [0, 1], got NaN",
        ),
        (TrlDpoOptions { ld_alpha: Some(-1.0), ..TrlDpoOptions::default() }, "`--ld-alpha` must be in [0, 1], got -1"),
        (
            TrlDpoOptions { ld_alpha: Some(0.5), reference_free: true, ..TrlDpoOptions::default() },
            "`--ld-alpha` needs a reference",
        ),
        (
            TrlDpoOptions { ld_alpha: Some(0.5), loss_type: "sigmoid,ipo".into(), ..TrlDpoOptions::default() },
            "`--ld-alpha` does not go with ipo",
        ),
    ] {
        let err = DpoConfig::from_trl(&options, flag).expect_err("a bad ld_alpha must be refused").to_string();
        assert!(err.contains(what), "{err}");
    }
    let good = TrlDpoOptions { ld_alpha: Some(0.0), ..TrlDpoOptions::default() };
    assert_eq!(DpoConfig::from_trl(&good, flag).unwrap().ld_alpha, Some(0.0));
}

/// LD-DPO with α = 1 is plain DPO: the same step, bit for bit up to the summation order of the two parts.
#[test]
fn ld_dpo_with_alpha_one_is_plain_dpo() {
    let reference = TrainModel::from(tiny_model());
    let mut batch = toy_batch();
    // Unequal completions both ways: the first pair's rejected answer is the longer, the second pair's chosen one.
    batch.labels[4] = IGNORE_INDEX;
    batch.labels[5 * 5 + 3] = IGNORE_INDEX;
    let step = |ld_alpha: Option<f32>| {
        let refs = reference_logps(&reference, &batch, Default::default(), ld_alpha).unwrap();
        let pairs = PairBatch { reference: Some(refs), rows: batch.clone() };
        let mut trainer = trainer_with(DpoConfig { beta: 1.0, ld_alpha, ..DpoConfig::default() }, 1e-2, 3);
        trainer.step(std::slice::from_ref(&pairs)).unwrap();
        let second = trainer.step(std::slice::from_ref(&pairs)).unwrap();
        (second.loss, values_f64(trainer.model().language_model().weights.head()))
    };
    let (plain_loss, plain) = step(None);
    let (ld_loss, ld) = step(Some(1.0));
    assert!((plain_loss - ld_loss).abs() < 1e-6, "{plain_loss} vs {ld_loss}");
    for (i, (a, b)) in plain.iter().zip(&ld).enumerate() {
        assert!((a - b).abs() <= 1e-6 * a.abs().max(1e-2), "head[{i}]: {a} vs {b}");
    }
    let (_, half) = step(Some(0.5));
    let moved = half.iter().zip(&plain).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(moved > 1e-4, "α = 0.5 must change the update on unequal pairs (moved {moved})");
}
