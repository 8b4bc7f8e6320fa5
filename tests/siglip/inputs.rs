//! Configs, checkpoint prefixes and bad input: each a clear error naming what is wrong.

use serde_json::json;
use unireward::model::{
    layers_for_feature_layer, save_safetensors, SiglipVisionConfig, SiglipVisionTower, WeightStore,
};
use unireward::{DType, Device, Tensor};

use super::fixtures::{case_dir, config, load, random, random_tower, tensor, tiny_config, PREFIX};
use super::reference::{relative_error, values};
use unireward::model::ForwardOptions;

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("unireward-siglip-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn configs_parse_with_transformers_defaults_and_known_towers() {
    assert_eq!(SiglipVisionConfig::from_value(&json!({})).unwrap(), SiglipVisionConfig::default());
    // The vision_config of a Hugging Face llava_onevision config.json (the 26-layer so400m tower).
    let hf = json!({
        "model_type": "siglip_vision_model", "hidden_size": 1152, "image_size": 384, "intermediate_size": 4304,
        "num_attention_heads": 16, "num_hidden_layers": 26, "patch_size": 14, "vision_use_head": false,
        "layer_norm_eps": 1e-6, "hidden_act": "gelu_pytorch_tanh", "attention_dropout": 0.0
    });
    let c = SiglipVisionConfig::from_value(&hf).unwrap();
    assert_eq!(c, SiglipVisionConfig { num_hidden_layers: 26, ..SiglipVisionConfig::so400m_patch14_384() });
    assert_eq!((c.head_dim(), c.num_patches(), c.patch_dim()), (72, 729, 588));
    assert_eq!(layers_for_feature_layer(26, -1).unwrap(), 26);

    let so400m = SiglipVisionConfig::for_tower_name("google/siglip-so400m-patch14-384").unwrap();
    assert_eq!(so400m, SiglipVisionConfig::so400m_patch14_384());
    assert_eq!((so400m.num_hidden_layers, so400m.hidden_size, so400m.intermediate_size), (27, 1152, 4304));
    let err = SiglipVisionConfig::for_tower_name("openai/clip-vit-large-patch14-336").unwrap_err().to_string();
    assert!(err.contains("openai/clip-vit-large-patch14-336") && err.contains("google/siglip-so400m"), "{err}");
}

#[test]
fn bad_configs_are_refused_by_key() {
    for (bad, key) in [
        (json!({"hidden_size": 30, "num_attention_heads": 4}), "divisible"),
        (json!({"hidden_size": 0}), "hidden_size"),
        (json!({"num_hidden_layers": 1_000_000}), "num_hidden_layers"),
        (json!({"image_size": 8, "patch_size": 16}), "patch_size"),
        (json!({"hidden_act": "relu"}), "relu"),
        (json!({"hidden_act": 3}), "hidden_act"),
        (json!({"model_type": "clip_vision_model"}), "model_type"),
        (json!({"attention_dropout": 0.1}), "attention_dropout"),
        (json!({"layer_norm_eps": "small"}), "layer_norm_eps"),
        (json!({"hidden_size": 1536, "num_attention_heads": 2}), "head dimension"),
        (json!([1, 2]), "object"),
    ] {
        let err = SiglipVisionConfig::from_value(&bad).unwrap_err().to_string();
        assert!(err.contains(key), "{bad}: {err}");
    }
}

#[test]
fn the_tower_loads_under_any_prefix_without_later_layers_or_the_head() {
    // The select_minus2 tower re-saved as in an original LLaVA-NeXT checkpoint: its two used layers under
    // `model.vision_tower.vision_tower.vision_model.`, no third layer, no post_layernorm, no head.
    let (tower, r) = load("select_minus2", DType::F32, Device::Cpu);
    let prefix = "model.vision_tower.vision_tower.vision_model.";
    let renamed: Vec<(String, &Tensor)> =
        tower.weights.named().into_iter().map(|(n, t)| (prefix.to_owned() + &n, t)).collect();
    let dir = temp_dir("prefix");
    let file = dir.join("model.safetensors");
    save_safetensors(&file, &renamed.iter().map(|(n, t)| (n.as_str(), *t)).collect::<Vec<_>>()).unwrap();
    let store = WeightStore::open(&dir).unwrap();
    let config = config("select_minus2");
    let moved = SiglipVisionTower::load(&store, prefix, &config, 2, DType::F32, Device::Cpu).unwrap();
    let pixels = tensor(&r, "pixel_values", DType::F32, Device::Cpu);
    let pass = moved.forward(&pixels, ForwardOptions::default()).unwrap();
    assert!(relative_error(&values(pass.features()), r.get("features"), |_| true) < 1e-4);

    // All three layers are not there.
    let err = SiglipVisionTower::load(&store, prefix, &config, 3, DType::F32, Device::Cpu).unwrap_err().to_string();
    assert!(
        err.contains(&format!("`{prefix}encoder.layers.2.self_attn.k_proj.weight`")) && err.contains("more"),
        "{err}"
    );
    // Nor is anything under the plain SigLIP prefix.
    let err = SiglipVisionTower::load(&store, PREFIX, &config, 2, DType::F32, Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("`vision_model.embeddings.patch_embedding.weight`"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_loads_are_clear_errors() {
    let config = config("select_minus2");
    let store = WeightStore::open(&case_dir("select_minus2")).unwrap();
    let err = SiglipVisionTower::load(&store, PREFIX, &config, 4, DType::F32, Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("4 layers") && err.contains("num_hidden_layers = 3"), "{err}");
    let err = SiglipVisionTower::load(&store, PREFIX, &config, 2, DType::I32, Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("i32") || err.contains("I32"), "{err}");
    // A config whose shapes disagree with the checkpoint.
    let wider = SiglipVisionConfig { intermediate_size: 48, ..config.clone() };
    let err = SiglipVisionTower::load(&store, PREFIX, &wider, 1, DType::F32, Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("mlp.fc1.weight") && err.contains("[48, 24]"), "{err}");
}

#[test]
fn bad_pixels_and_gradients_are_clear_errors() {
    let tower = random_tower(&tiny_config(), 1, 1, 0.5);
    for (shape, want) in [
        (vec![3, 10, 10], "rank"),
        (vec![1, 3, 10, 11], "[1, 3, 10, 11]"),
        (vec![2, 1, 10, 10], "num_channels"),
        (vec![0, 3, 10, 10], "empty"),
    ] {
        let err = tower.forward(&random(&shape, 0), ForwardOptions::default()).unwrap_err().to_string();
        assert!(err.contains("pixel_values") && err.contains(want), "{shape:?}: {err}");
    }
    let ints = Tensor::from_slice(&vec![0i32; 300], &[1, 3, 10, 10], Device::Cpu).unwrap();
    let err = tower.forward(&ints, ForwardOptions::default()).unwrap_err().to_string();
    assert!(err.contains("pixel_values"), "{err}");

    let pass = tower.forward(&random(&[2, 3, 10, 10], 1), ForwardOptions::default()).unwrap();
    let err = tower.backward(pass, &random(&[2, 9, 11], 2)).unwrap_err().to_string();
    assert!(err.contains("grad_features") && err.contains("[2, 9, 12]"), "{err}");
    let pass = tower.forward(&random(&[2, 3, 10, 10], 1), ForwardOptions::default()).unwrap();
    let bf16 = random(&[2, 9, 12], 2).to_dtype(DType::BF16).unwrap();
    let err = tower.backward(pass, &bf16).unwrap_err().to_string();
    assert!(err.contains("grad_features"), "{err}");
}

#[test]
fn nan_pixels_show_as_nan_features() {
    let tower = random_tower(&tiny_config(), 2, 3, 0.5);
    let mut v = random(&[2, 3, 10, 10], 4).to_vec::<f32>().unwrap();
    v[300 + 11] = f32::NAN;
    let pixels = Tensor::from_slice(&v, &[2, 3, 10, 10], Device::Cpu).unwrap();
    let pass = tower.forward(&pixels, ForwardOptions::default()).unwrap();
    let features = values(pass.features());
    let (first, second) = features.split_at(features.len() / 2);
    assert!(first.iter().all(|v| v.is_finite()), "the other image is untouched");
    assert!(second.iter().any(|v| v.is_nan()), "NaN in must show as NaN out");
}

#[test]
fn a_tower_of_zero_layers_returns_the_embeddings() {
    let config = tiny_config();
    let tower = random_tower(&config, 0, 5, 0.5);
    let pixels = random(&[1, 3, 10, 10], 6);
    let pass = tower.forward(&pixels, ForwardOptions::default()).unwrap();
    // Patch (0, 1), feature 2: kernel row 2 · pixels[:, 0..3, 3..6] + bias + position.
    let (w, px) = (tower.weights.patch_embedding.to_vec::<f32>().unwrap(), pixels.to_vec::<f32>().unwrap());
    let mut want = f64::from(tower.weights.patch_bias.to_vec::<f32>().unwrap()[2]);
    want += f64::from(tower.weights.position_embedding.to_vec::<f32>().unwrap()[12 + 2]);
    for c in 0..3 {
        for y in 0..3 {
            for x in 0..3 {
                want += f64::from(w[((2 * 3 + c) * 3 + y) * 3 + x]) * f64::from(px[(c * 10 + y) * 10 + 3 + x]);
            }
        }
    }
    assert!((values(pass.features())[12 + 2] - want).abs() < 1e-5, "{} vs {want}", values(pass.features())[14]);
}
