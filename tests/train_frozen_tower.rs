//! A frozen LLaVA vision tower skips its backward: on the tiny LLaVA fixture's SFT batches (images, anyres, two
//! images, videos, text-only rows), the tower's forward without activations gives the features bitwise, the
//! projector's, newline's and language model's gradients equal the full backward's bitwise, the tower's buffers stay
//! zero, and AdamW steps the trained parameters to bitwise the same values; the trainers turn the skip on only when
//! every tower parameter is frozen.

use serde::Deserialize;
use unireward::model::llava::LlavaOnevisionModel;
use unireward::model::ForwardOptions;
use unireward::ops::fused_linear::FusedLinearConfig;
use unireward::train::data::SequenceBatch;
use unireward::train::model::TrainModel;
use unireward::train::optim::{AdamW, AdamWConfig, ParamGroup};
use unireward::train::sft::{SftConfig, SftTrainer};
use unireward::{DType, Device, Tensor};

mod common;
use common::reference::{fixture, ReferenceBatch};

const VIDEO_FRAMES: usize = 4;

/// The SFT fixture's micro-batches, in order.
fn batches() -> Vec<SequenceBatch> {
    #[derive(Deserialize)]
    struct Steps {
        batches: Vec<Vec<ReferenceBatch>>,
    }
    let text = std::fs::read_to_string(fixture("train_sft_llava/steps.json")).unwrap();
    let steps: Steps = serde_json::from_str(&text).unwrap();
    steps.batches.iter().flatten().map(ReferenceBatch::sequence_batch).collect()
}

fn load() -> TrainModel {
    TrainModel::load(&fixture("llava/hf"), DType::F32, Device::Cpu, VIDEO_FRAMES).unwrap()
}

fn llava(model: &TrainModel) -> &LlavaOnevisionModel {
    match model {
        TrainModel::Llava(llava) => &llava.model,
        TrainModel::Qwen2(_) => panic!("the fixture is a LLaVA checkpoint"),
    }
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_vec::<f32>().unwrap().into_iter().map(f32::to_bits).collect()
}

fn tower_frozen() -> Vec<ParamGroup> {
    vec![ParamGroup::new("tower", &["vision_tower."]).frozen()]
}

fn optimizer(model: &TrainModel, groups: Vec<ParamGroup>) -> AdamW {
    let config = AdamWConfig { lr: 1e-2, weight_decay: 0.01, max_grad_norm: Some(1.0), ..AdamWConfig::default() };
    AdamW::new(&model.named_parameters(), groups, config).unwrap()
}

#[test]
fn a_frozen_towers_skipped_backward_trains_bitwise_as_the_full_backward() {
    let (mut full, mut skipping) = (load(), load());
    skipping.skip_frozen_gradients(&tower_frozen());
    assert!(llava(&skipping).vision_tower_frozen() && !llava(&full).vision_tower_frozen());
    let (mut full_opt, mut skipping_opt) = (optimizer(&full, tower_frozen()), optimizer(&skipping, tower_frozen()));
    let (mut full_grads, mut skipping_grads) = (full.zero_gradients().unwrap(), skipping.zero_gradients().unwrap());
    let tower_params = llava(&full).vision_tower.weights.named().len();
    let (head, opts) = (FusedLinearConfig::default(), ForwardOptions::default());
    let batches = batches();
    assert!(batches.iter().any(|b| b.media.iter().all(Vec::is_empty)), "a batch without media is covered");
    for (k, batch) in batches.iter().enumerate() {
        for (model, grads) in [(&full, &mut full_grads), (&skipping, &mut skipping_grads)] {
            let prepared = model.prepare(batch).unwrap();
            let pass = model.forward(&prepared, opts).unwrap();
            let loss = model.causal_lm_loss_into_labels(&pass, &batch.labels, &head, grads).unwrap();
            model.backward_into(pass, loss.grads, grads).unwrap();
        }
        let (want, got) = (full.named_gradients(&full_grads), skipping.named_gradients(&skipping_grads));
        assert_eq!(want.len(), got.len());
        for (i, ((name, w), (_, g))) in want.iter().zip(&got).enumerate() {
            if i < tower_params {
                assert!(bits(g).iter().all(|&b| b == 0), "batch {k}: frozen `{name}`'s gradient is not zero");
            } else {
                assert!(bits(g) == bits(w), "batch {k}: `{name}`'s gradient differs from the full backward's");
            }
        }
        let want_report = full_opt.step(&mut full.named_parameters_mut(), &want).unwrap();
        let got_report = skipping_opt.step(&mut skipping.named_parameters_mut(), &got).unwrap();
        assert_eq!(want_report.grad_norm, got_report.grad_norm, "batch {k}: the clipping norm");
    }
    let (want, got) = (full.named_parameters(), skipping.named_parameters());
    for ((name, w), (_, g)) in want.iter().zip(&got) {
        assert!(bits(g) == bits(w), "`{name}` differs after {} steps", batches.len());
    }
}

#[test]
fn the_tower_forward_without_activations_gives_the_training_features_bitwise() {
    let model = load();
    let tower = &llava(&model).vision_tower;
    let c = &tower.config;
    for n in [1, 3] {
        let pixels: Vec<f32> = (0..n * c.num_channels * c.image_size * c.image_size)
            .map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        let shape = [n, c.num_channels, c.image_size, c.image_size];
        let pixels = Tensor::from_f32(&pixels, &shape, DType::F32, Device::Cpu).unwrap();
        for recompute in [false, true] {
            let pass = tower.forward(&pixels, ForwardOptions { recompute }).unwrap();
            let want = bits(pass.features());
            drop(pass);
            // Twice: the second reuses the arena the first handed back.
            for _ in 0..2 {
                assert!(bits(&tower.encode(&pixels).unwrap()) == want, "{n} images, recompute {recompute}");
            }
        }
    }
    let bad = Tensor::zeros(&[1, c.num_channels, c.image_size + 1, c.image_size], DType::F32, Device::Cpu).unwrap();
    let err = tower.encode(&bad).unwrap_err().to_string();
    assert!(err.contains("pixel_values"), "{err}");
}

#[test]
fn the_trainers_skip_the_tower_backward_only_when_every_tower_parameter_is_frozen() {
    let first_layer = llava(&load()).named_parameters()[2].0.clone();
    let frozen = |groups: Vec<ParamGroup>| {
        let trainer = SftTrainer::new(load(), SftConfig { groups, ..SftConfig::default() }).unwrap();
        llava(trainer.model()).vision_tower_frozen()
    };
    assert!(frozen(tower_frozen()));
    assert!(frozen(vec![ParamGroup::new("vision", &["vision_tower.", "multi_modal_projector."]).frozen()]));
    assert!(!frozen(Vec::new()));
    assert!(!frozen(vec![ParamGroup::new("one tensor", &[&first_layer]).frozen()]), "`{first_layer}` only");
    // The first group a name matches decides: a trained group ahead of the frozen one keeps the tower trained.
    let trained_first = vec![ParamGroup::new("slow", &[&first_layer]).lr(1e-5), tower_frozen().remove(0)];
    assert!(!frozen(trained_first));
}
