//! The fixtures of tests/reference/siglip_tower.py and a random tower for tests without one.

use std::path::PathBuf;

use rand::{rngs::StdRng, Rng, SeedableRng};
use unireward::model::siglip::SiglipWeights;
use unireward::model::{layers_for_feature_layer, SiglipVisionConfig, SiglipVisionTower, WeightStore};
use unireward::{DType, Device, Tensor};

use super::reference::Reference;

pub const CASES: [&str; 2] = ["select_minus2", "ragged_bf16"];
/// Where SiglipVisionModel.save_pretrained puts the tower.
pub const PREFIX: &str = "vision_model.";

pub fn case_dir(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/siglip").join(case)
}

pub fn config(case: &str) -> SiglipVisionConfig {
    let text = std::fs::read_to_string(case_dir(case).join("config.json")).unwrap();
    SiglipVisionConfig::from_value(&serde_json::from_str(&text).unwrap()).unwrap()
}

pub fn reference(case: &str) -> Reference {
    Reference::from_file(&case_dir(case).join("reference.safetensors"))
}

/// The case's tower with the layers its feature layer selects, and the reference.
pub fn load(case: &str, dtype: DType, device: Device) -> (SiglipVisionTower, Reference) {
    let (config, r) = (config(case), reference(case));
    let layers = layers_for_feature_layer(config.num_hidden_layers, r.get("feature_layer")[0] as i64).unwrap();
    assert_eq!(layers as f64, r.get("layers")[0]);
    let store = WeightStore::open(&case_dir(case)).unwrap();
    (SiglipVisionTower::load(&store, PREFIX, &config, layers, dtype, device).unwrap(), r)
}

/// A reference tensor as an f32 tensor on `device` in `dtype`.
pub fn tensor(r: &Reference, name: &str, dtype: DType, device: Device) -> Tensor {
    let values: Vec<f32> = r.get(name).iter().map(|&v| v as f32).collect();
    Tensor::from_f32(&values, r.shape(name), dtype, device).unwrap()
}

/// A tower of `config` with standard-normal-ish random weights (scaled by `scale`), in f32 on the CPU.
pub fn random_tower(config: &SiglipVisionConfig, layers: usize, seed: u64, scale: f32) -> SiglipVisionTower {
    let mut rng = StdRng::seed_from_u64(seed);
    let weights = SiglipWeights::from_fn(config, layers, |_, shape| {
        let values: Vec<f32> = (0..shape.iter().product()).map(|_| scale * (rng.gen::<f32>() * 2.0 - 1.0)).collect();
        Tensor::from_slice(&values, shape, Device::Cpu)
    })
    .unwrap();
    SiglipVisionTower::new(config.clone(), weights).unwrap()
}

/// Uniform values in [-1, 1).
pub fn random(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = StdRng::seed_from_u64(seed);
    let values: Vec<f32> = (0..shape.iter().product()).map(|_| rng.gen::<f32>() * 2.0 - 1.0).collect();
    Tensor::from_slice(&values, shape, Device::Cpu).unwrap()
}

/// A small config with awkward sizes: head dim 6, 3×3 patches over a 10×10 image (one pixel row unread).
pub fn tiny_config() -> SiglipVisionConfig {
    SiglipVisionConfig {
        hidden_size: 12,
        intermediate_size: 20,
        num_hidden_layers: 3,
        num_attention_heads: 2,
        num_channels: 3,
        image_size: 10,
        patch_size: 3,
        layer_norm_eps: 1e-6,
        hidden_act: "gelu_pytorch_tanh".into(),
    }
}
