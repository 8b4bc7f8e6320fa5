//! LLaVA-OneVision checkpoints: both config formats (the fixtures and hand-written edge cases), the three tensor
//! namings detected and checked against the fixtures' safetensors, the Qwen2 language model loaded under its prefix
//! from either layout, and its text-only logits against transformers' float64 reference
//! (`tests/reference/llava_onevision_model.py`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};
use unireward::media::{decode_image, load_video, ImageLayout, ImageProcessor, ImageProcessorConfig, VideoSource};
use unireward::model::llava::config::{LLAVA_IMAGE_PLACEHOLDER, LLAVA_VIDEO_PLACEHOLDER, SO400M_TOWER};
use unireward::model::llava::{
    LlavaConfigFormat, LlavaLayout, LlavaOnevisionConfig, LlavaOnevisionModel, MediaInput, VisionTower,
};
use unireward::model::qwen2::Qwen2Weights;
use unireward::model::{save_safetensors, Architecture, ForwardOptions, LoadOptions, Qwen2Model, WeightStore};
use unireward::{DType, Device, Error, Tensor};

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llava").join(path)
}

fn config(dir: &str) -> LlavaOnevisionConfig {
    LlavaOnevisionConfig::from_file(&fixture(dir).join("config.json")).unwrap()
}

fn config_json(dir: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(dir).join("config.json")).unwrap()).unwrap()
}

/// A scratch directory under the system temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("unireward-llava-{}-{n}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn checkpoint_message<T: std::fmt::Debug>(result: unireward::Result<T>) -> String {
    match result {
        Err(Error::Checkpoint(msg)) => msg,
        other => panic!("expected a checkpoint error, got {other:?}"),
    }
}

fn assert_contains(msg: &str, parts: &[&str]) {
    for part in parts {
        assert!(msg.contains(part), "`{part}` not in: {msg}");
    }
}

/// Every stored tensor of `store` by name, with its shape, as f32 values (exact for f32 storage).
fn tensors(store: &WeightStore) -> BTreeMap<String, Tensor> {
    let get = |name: &str| store.get(name, store.shape(name).unwrap()).unwrap();
    store.names().into_iter().map(|name| (name.to_string(), get(name))).collect()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap()
}

/// A copy of the HF fixture with every tensor under transformers' parameter names (what transformers 5 writes).
fn hf_parameter_names_copy() -> Scratch {
    let scratch = Scratch::new("hf-names");
    let store = WeightStore::open(&fixture("hf")).unwrap();
    let all = tensors(&store);
    let renamed: Vec<(String, &Tensor)> =
        all.iter().map(|(name, t)| (LlavaLayout::HfLegacy.rename(name, LlavaLayout::Hf).unwrap(), t)).collect();
    let refs: Vec<(&str, &Tensor)> = renamed.iter().map(|(n, t)| (n.as_str(), *t)).collect();
    save_safetensors(&scratch.0.join("model.safetensors"), &refs).unwrap();
    std::fs::copy(fixture("hf/config.json"), scratch.0.join("config.json")).unwrap();
    scratch
}

/// The layers a SigLIP tower runs for `feature_layer` (Python-style over its `num_hidden_layers + 1` hidden states).
fn tower_layers_run(tower: &VisionTower, feature_layer: i64) -> i64 {
    let VisionTower::Config(config) = tower else { panic!("the fixtures describe their towers") };
    let layers = config["num_hidden_layers"].as_i64().unwrap();
    if feature_layer < 0 {
        layers + 1 + feature_layer
    } else {
        feature_layer
    }
}

#[test]
fn both_formats_describe_the_same_model() {
    let (hf, original) = (config("hf"), config("llava_qwen"));
    assert_eq!(hf.format, LlavaConfigFormat::HuggingFace);
    assert_eq!(original.format, LlavaConfigFormat::LlavaNext);
    assert_eq!(hf.text, original.text);
    assert_eq!(hf.text.vocab_size, 96);
    assert!(!hf.text.tie_word_embeddings);
    // The list form and the "(1x1),...,(3x3)" string form, in tiles of the tower's 12 pixels, rows outermost.
    let pinpoints: Vec<(usize, usize)> = (1..=3).flat_map(|r| (1..=3).map(move |c| (12 * r, 12 * c))).collect();
    assert_eq!(hf.image_grid_pinpoints, pinpoints);
    assert_eq!(original.image_grid_pinpoints, pinpoints);
    assert_eq!((hf.max_anyres_tiles, original.max_anyres_tiles), (4, 4));
    assert!(hf.projector_bias && original.projector_bias);
    assert_eq!((hf.image_token_id, hf.video_token_id), (90, 91));
    assert_eq!((original.image_token_id, original.video_token_id), (LLAVA_IMAGE_PLACEHOLDER, LLAVA_VIDEO_PLACEHOLDER));
    assert_eq!((original.image_token_id, original.video_token_id), (-200, -201));

    // The same tower: the original names a 3-layer SigLIP whose last layer LLaVA-NeXT drops (feature layer -2), the
    // conversion stores 2 layers and reads the last (-1).
    assert_eq!((hf.vision_feature_layer, original.vision_feature_layer), (-1, -2));
    assert_eq!(tower_layers_run(&hf.vision_tower, hf.vision_feature_layer), 2);
    assert_eq!(tower_layers_run(&original.vision_tower, original.vision_feature_layer), 2);
    let (VisionTower::Config(a), VisionTower::Config(b)) = (&hf.vision_tower, &original.vision_tower) else {
        panic!("both fixtures describe their towers")
    };
    for key in ["model_type", "hidden_size", "intermediate_size", "num_attention_heads", "image_size", "patch_size"] {
        assert_eq!(a[key], b[key], "{key}");
    }
    assert_eq!((a["num_hidden_layers"].as_u64(), b["num_hidden_layers"].as_u64()), (Some(2), Some(3)));

    // The image processor's config saved beside the HF checkpoint agrees with the model's.
    let processor = ImageProcessorConfig::from_file(&fixture("hf/preprocessor_config.json")).unwrap();
    assert_eq!(processor.size, (12, 12));
    assert_eq!(processor.grid_pinpoints, hf.image_grid_pinpoints);
}

fn parse(value: &Value, dir: &Path) -> unireward::Result<LlavaOnevisionConfig> {
    LlavaOnevisionConfig::from_json(&value.to_string(), dir)
}

/// The llava_qwen fixture's config with `key` set to `value` (`null` removes it).
fn original_with(key: &str, value: Value) -> Value {
    let mut config = config_json("llava_qwen");
    if value.is_null() {
        config.as_object_mut().unwrap().remove(key);
    } else {
        config[key] = value;
    }
    config
}

/// A config shaped like UnifiedReward-0.5b's (LLaVA-OneVision-0.5B, LLaVA-NeXT layout), keys as LLaVA-NeXT saves them.
#[test]
fn a_released_llava_qwen_config_parses() {
    let text: Value = serde_json::from_str(
        r#"{
        "architectures": ["LlavaQwenForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
        "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 896, "image_aspect_ratio": "anyres_max_9",
        "image_crop_resolution": null, "image_grid_pinpoints": "(1x1),...,(6x6)", "image_split_resolution": null,
        "initializer_range": 0.02, "intermediate_size": 4864, "max_position_embeddings": 32768,
        "max_window_layers": 24, "mm_hidden_size": 1152, "mm_newline_position": "one_token",
        "mm_patch_merge_type": "spatial_unpad", "mm_projector_lr": null, "mm_projector_type": "mlp2x_gelu",
        "mm_resampler_type": null, "mm_spatial_pool_mode": "bilinear", "mm_spatial_pool_stride": 2,
        "mm_tunable_parts": "mm_vision_tower,mm_mlp_adapter,mm_language_model", "mm_use_im_patch_token": false,
        "mm_use_im_start_end": false, "mm_vision_select_feature": "patch", "mm_vision_select_layer": -2,
        "mm_vision_tower": "google/siglip-so400m-patch14-384", "mm_vision_tower_lr": 2e-06,
        "model_type": "llava_qwen", "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 1000000.0, "sliding_window": 32768,
        "tie_word_embeddings": true, "tokenizer_model_max_length": 32768, "tokenizer_padding_side": "right",
        "torch_dtype": "bfloat16", "transformers_version": "4.40.0.dev0", "use_cache": true, "use_mm_proj": true,
        "use_pos_skipping": false, "use_sliding_window": false, "vision_tower_pretrained": null, "vocab_size": 151936
    }"#,
    )
    .unwrap();
    let config = parse(&text, Path::new("/nonexistent")).unwrap();
    assert_eq!(config.vision_tower, VisionTower::Known(SO400M_TOWER.to_string()));
    assert_eq!((config.text.hidden_size, config.text.num_hidden_layers, config.text.vocab_size), (896, 24, 151936));
    assert!(config.text.tie_word_embeddings);
    assert_eq!(config.text.torch_dtype, DType::BF16);
    assert_eq!(config.image_grid_pinpoints.len(), 36);
    assert_eq!(config.image_grid_pinpoints[6], (768, 384));
    assert_eq!(config.image_grid_pinpoints[35], (2304, 2304));
    assert_eq!((config.max_anyres_tiles, config.vision_feature_layer), (9, -2));
    // The projector's names in this layout, for a tied model (no lm_head.weight expected).
    let layout = LlavaLayout::LlavaQwen;
    assert_eq!(layout.projector_prefixes(), ["model.mm_projector.0.", "model.mm_projector.2."]);
    assert_eq!(layout.image_newline(), "model.image_newline");
    let names = unireward::model::qwen2_weight_names_under(&config.text, &layout.language_model());
    assert_eq!(names.len(), 1 + 24 * 12 + 1);
    assert_eq!(names[0].0, "model.embed_tokens.weight");
}

#[test]
fn vision_towers_are_the_known_hub_id_or_a_directory() {
    let dir = fixture("llava_qwen");
    let known = parse(&original_with("mm_vision_tower", json!(SO400M_TOWER)), &dir).unwrap();
    assert_eq!(known.vision_tower, VisionTower::Known(SO400M_TOWER.to_string()));
    // The pinpoint string is then in so400m's 384-pixel tiles.
    assert_eq!(known.image_grid_pinpoints[..2], [(384, 384), (384, 768)]);

    for unknown in ["openai/clip-vit-large-patch14-336", "google/siglip-so400m-patch14-224", "no-such-dir"] {
        let msg = checkpoint_message(parse(&original_with("mm_vision_tower", json!(unknown)), &dir));
        assert_contains(&msg, &["unknown vision tower", unknown, SO400M_TOWER]);
    }
    let msg = checkpoint_message(parse(&original_with("mm_vision_tower", json!(7)), &dir));
    assert_contains(&msg, &["mm_vision_tower", "7"]);
    let msg = checkpoint_message(parse(&original_with("mm_vision_tower", Value::Null), &dir));
    assert_contains(&msg, &["`mm_vision_tower` is missing"]);

    // A directory: an absolute path, a full SigLIP config (its vision_config), other towers refused, no config.
    let scratch = Scratch::new("towers");
    let tower = |name: &str, config: Option<Value>| {
        let path = scratch.0.join(name);
        std::fs::create_dir_all(&path).unwrap();
        if let Some(config) = config {
            std::fs::write(path.join("config.json"), config.to_string()).unwrap();
        }
        parse(&original_with("mm_vision_tower", json!(path.to_str().unwrap())), &dir)
    };
    let vision = json!({"model_type": "siglip_vision_model", "image_size": 12, "num_hidden_layers": 3});
    let full = tower("full", Some(json!({"model_type": "siglip", "text_config": {}, "vision_config": vision})));
    assert_eq!(full.unwrap().vision_tower, VisionTower::Config(vision));
    let msg = checkpoint_message(tower("clip", Some(json!({"model_type": "clip_vision_model"}))));
    assert_contains(&msg, &["clip_vision_model", "only SigLIP towers"]);
    let msg = checkpoint_message(tower("siglip-no-vision", Some(json!({"model_type": "siglip"}))));
    assert_contains(&msg, &["vision_config"]);
    let msg = checkpoint_message(tower("empty", None));
    assert_contains(&msg, &["config.json"]);
    let msg = checkpoint_message(tower("bad-size", Some(json!({"model_type": "siglip_vision_model"}))));
    assert_contains(&msg, &["image_size"]);
}

#[test]
fn unsupported_llava_qwen_options_are_refused_by_name() {
    let dir = fixture("llava_qwen");
    let cases = [
        ("mm_projector_type", json!("linear"), vec!["mm_projector_type", "\"linear\"", "mlp2x_gelu"]),
        ("mm_projector_type", json!("mlp3x_gelu"), vec!["mm_projector_type", "mlp3x_gelu"]),
        ("mm_projector_type", Value::Null, vec!["`mm_projector_type` is missing", "\"linear\""]),
        ("mm_patch_merge_type", json!("flat"), vec!["mm_patch_merge_type", "spatial_unpad"]),
        ("mm_patch_merge_type", Value::Null, vec!["`mm_patch_merge_type` is missing", "\"flat\""]),
        ("mm_newline_position", json!("grid"), vec!["mm_newline_position", "grid", "one_token"]),
        ("mm_spatial_pool_mode", json!("average"), vec!["mm_spatial_pool_mode", "average"]),
        ("add_faster_video", json!(true), vec!["add_faster_video"]),
        ("image_aspect_ratio", json!("anyres"), vec!["image_aspect_ratio", "anyres_max_N"]),
        ("image_aspect_ratio", json!("pad"), vec!["image_aspect_ratio", "pad"]),
        ("image_aspect_ratio", json!("anyres_max_0"), vec!["image_aspect_ratio", "anyres_max_0"]),
        ("image_aspect_ratio", json!("anyres_max_99999"), vec!["image_aspect_ratio"]),
        ("image_aspect_ratio", Value::Null, vec!["image_aspect_ratio", "square"]),
        ("image_grid_pinpoints", json!("(2x2),(1x1)"), vec!["image_grid_pinpoints"]),
        ("image_grid_pinpoints", json!([[12]]), vec!["image_grid_pinpoints"]),
        ("image_grid_pinpoints", Value::Null, vec!["`image_grid_pinpoints` is missing"]),
        ("hidden_size", Value::Null, vec!["`hidden_size` is missing"]),
        ("rope_scaling", json!({"type": "linear"}), vec!["rope_scaling"]),
    ];
    for (key, value, parts) in cases {
        let msg = checkpoint_message(parse(&original_with(key, value.clone()), &dir));
        assert_contains(&msg, &parts);
    }
    // What LLaVA-NeXT ignores for a SigLIP tower, or reads with the defaults implemented here, is accepted.
    for (key, value) in [
        ("mm_vision_select_layer", json!(-1)),
        ("mm_vision_select_feature", json!("cls_patch")),
        ("mm_spatial_pool_stride", json!(4)),
        ("mm_newline_position", Value::Null),
        ("mm_spatial_pool_mode", Value::Null),
        ("image_grid_pinpoints", json!([[12, 12], [24, 12]])),
    ] {
        parse(&original_with(key, value.clone()), &dir).unwrap_or_else(|e| panic!("{key} = {value}: {e}"));
    }
}

/// The HF fixture's config with `path` (keys joined by '.') set to `value` (`null` removes it).
fn hf_with(path: &str, value: Value) -> Value {
    let mut config = config_json("hf");
    let mut keys: Vec<&str> = path.split('.').collect();
    let last = keys.pop().unwrap();
    let mut at = &mut config;
    for key in keys {
        at = &mut at[key];
    }
    if value.is_null() {
        at.as_object_mut().unwrap().remove(last);
    } else {
        at[last] = value;
    }
    config
}

#[test]
fn unsupported_hugging_face_options_are_refused_by_name() {
    let dir = fixture("hf");
    let cases = [
        ("vision_feature_select_strategy", json!("default"), vec!["vision_feature_select_strategy", "full"]),
        ("vision_feature_layer", json!([-2, -1]), vec!["vision_feature_layer", "one layer"]),
        ("vision_feature_layer", json!(1_000_000), vec!["vision_feature_layer"]),
        ("projector_hidden_act", json!("relu"), vec!["projector_hidden_act", "relu"]),
        ("multimodal_projector_bias", json!("yes"), vec!["multimodal_projector_bias"]),
        ("image_token_index", json!(96), vec!["image_token_index", "vocab_size = 96"]),
        ("image_token_index", json!(-200), vec!["image_token_index"]),
        // transformers' defaults (151646, 151647) do not fit a 96-token vocabulary.
        ("video_token_index", Value::Null, vec!["video_token_index", "151647"]),
        ("video_token_index", json!(90), vec!["image_token_index", "video_token_index", "both 90"]),
        ("vision_aspect_ratio", json!("anyres_max_x"), vec!["vision_aspect_ratio"]),
        ("image_grid_pinpoints", json!([]), vec!["image_grid_pinpoints"]),
        ("vision_config.model_type", json!("clip_vision_model"), vec!["vision_config.model_type", "clip"]),
        ("vision_config", Value::Null, vec!["`vision_config` is missing"]),
        ("text_config", json!("qwen2"), vec!["text_config", "an object"]),
        ("text_config", Value::Null, vec!["`text_config` is missing"]),
        ("text_config.hidden_size", Value::Null, vec!["in `text_config`", "`hidden_size` is missing"]),
        ("text_config.model_type", json!("llama"), vec!["in `text_config`", "model_type", "llama"]),
        ("text_config.use_sliding_window", json!(true), vec!["in `text_config`", "use_sliding_window"]),
    ];
    for (key, value, parts) in cases {
        let msg = checkpoint_message(parse(&hf_with(key, value.clone()), &dir));
        assert_contains(&msg, &parts);
    }
    // transformers' defaults where absent (the rest of the fixture unchanged).
    let defaults = ["vision_feature_layer", "vision_feature_select_strategy", "projector_hidden_act"];
    let mut config = config_json("hf");
    for key in defaults.iter().chain(&["multimodal_projector_bias", "vision_aspect_ratio"]) {
        config.as_object_mut().unwrap().remove(*key);
    }
    let parsed = parse(&config, &dir).unwrap();
    assert_eq!((parsed.vision_feature_layer, parsed.projector_bias, parsed.max_anyres_tiles), (-1, true, 9));
    let no_bias = parse(&hf_with("multimodal_projector_bias", json!(false)), &dir).unwrap();
    assert!(!no_bias.projector_bias);

    for model_type in [json!("llava_next"), json!("qwen2"), json!("llava"), Value::Null] {
        let msg = checkpoint_message(parse(&hf_with("model_type", model_type.clone()), &dir));
        assert_contains(&msg, &["model_type", "llava_onevision", "llava_qwen"]);
    }
    let msg = checkpoint_message(LlavaOnevisionConfig::from_json("[1, 2]", &dir));
    assert_contains(&msg, &["not a JSON object"]);
    let msg = checkpoint_message(LlavaOnevisionConfig::from_file(&dir.join("missing.json")));
    assert_contains(&msg, &["missing.json"]);
}

#[test]
fn layouts_are_detected_from_the_weights_and_must_agree_with_the_config() {
    let hf_names = hf_parameter_names_copy();
    let cases = [
        (fixture("hf"), "hf", LlavaLayout::HfLegacy),
        (hf_names.0.clone(), "hf", LlavaLayout::Hf),
        (fixture("llava_qwen"), "llava_qwen", LlavaLayout::LlavaQwen),
    ];
    for (dir, config_dir, want) in &cases {
        let store = WeightStore::open(dir).unwrap();
        assert_eq!(LlavaLayout::detect(&config(config_dir), &store).unwrap(), *want);
        assert_eq!(want.check(&config(config_dir), &store, false).unwrap(), Vec::<String>::new());
    }
    // A config of one format over weights of the other.
    let hf_store = WeightStore::open(&fixture("hf")).unwrap();
    let original_store = WeightStore::open(&fixture("llava_qwen")).unwrap();
    let msg = checkpoint_message(LlavaLayout::detect(&config("llava_qwen"), &hf_store));
    assert_contains(&msg, &["LlavaNext", "language_model.model.embed_tokens.weight"]);
    let msg = checkpoint_message(LlavaLayout::detect(&config("hf"), &original_store));
    assert_contains(&msg, &["HuggingFace", "llava_qwen", "`model.embed_tokens.weight`"]);

    // Weights with no language model, or with two namings mixed.
    let scratch = Scratch::new("detect");
    let one = Tensor::from_slice(&[1.0f32; 4], &[4], Device::Cpu).unwrap();
    save_safetensors(&scratch.0.join("vision.safetensors"), &[("vision_tower.vision_model.x", &one)]).unwrap();
    let store = WeightStore::open(&scratch.0.join("vision.safetensors")).unwrap();
    let msg = checkpoint_message(LlavaLayout::detect(&config("hf"), &store));
    assert_contains(&msg, &["no language model embeddings", "model.language_model.embed_tokens.weight"]);
    let mixed = [("model.embed_tokens.weight", &one), ("language_model.model.embed_tokens.weight", &one)];
    save_safetensors(&scratch.0.join("mixed.safetensors"), &mixed).unwrap();
    let store = WeightStore::open(&scratch.0.join("mixed.safetensors")).unwrap();
    let msg = checkpoint_message(LlavaLayout::detect(&config("hf"), &store));
    assert_contains(&msg, &["mixes layouts"]);
}

#[test]
fn every_name_maps_between_layouts_onto_the_same_tensor() {
    let hf_names = hf_parameter_names_copy();
    let stores = [
        (LlavaLayout::HfLegacy, tensors(&WeightStore::open(&fixture("hf")).unwrap())),
        (LlavaLayout::Hf, tensors(&WeightStore::open(&hf_names.0).unwrap())),
        (LlavaLayout::LlavaQwen, tensors(&WeightStore::open(&fixture("llava_qwen")).unwrap())),
    ];
    for (from, from_tensors) in &stores {
        for (to, to_tensors) in &stores {
            let renamed: BTreeSet<String> = from_tensors
                .keys()
                .map(|name| from.rename(name, *to).unwrap_or_else(|| panic!("{name} has no {to:?} name")))
                .collect();
            assert_eq!(renamed, to_tensors.keys().cloned().collect(), "{from:?} -> {to:?}");
            for (name, tensor) in from_tensors {
                let other = &to_tensors[&from.rename(name, *to).unwrap()];
                assert_eq!(values(tensor), values(other), "{name} ({from:?} -> {to:?})");
                assert_eq!(to.rename(&from.rename(name, *to).unwrap(), *from).as_deref(), Some(name.as_str()));
            }
        }
    }
    // The reference's gradients are under transformers' parameter names, the names of the `Hf` layout.
    let grads: BTreeSet<String> = Reference::load().names("grad.").into_iter().collect();
    assert_eq!(grads, stores[1].1.keys().cloned().collect::<BTreeSet<_>>());
    // Names of no part of the model.
    for stray in ["model.extra.weight", "model.layers_x.0.weight", "vision_tower.x", "lm_head.bias", "image_newline2"] {
        assert_eq!(LlavaLayout::LlavaQwen.rename(stray, LlavaLayout::Hf), None, "{stray}");
    }
}

#[test]
fn name_checks_report_missing_extra_and_misshapen_tensors() {
    let config = config("hf");
    let store = WeightStore::open(&fixture("hf")).unwrap();
    let all = tensors(&store);
    let write = |keep: &dyn Fn(&str) -> bool, extra: Option<(&str, &Tensor)>| {
        let scratch = Scratch::new("names");
        let mut refs: Vec<(&str, &Tensor)> =
            all.iter().map(|(n, t)| (n.as_str(), t)).filter(|(n, _)| keep(n)).collect();
        refs.extend(extra);
        save_safetensors(&scratch.0.join("model.safetensors"), &refs).unwrap();
        let store = WeightStore::open(&scratch.0).unwrap();
        (scratch, store)
    };
    let layout = LlavaLayout::HfLegacy;

    let (_dir, with_extra) = write(&|_| true, Some(("model.extra.weight", &all["image_newline"])));
    let msg = checkpoint_message(layout.check(&config, &with_extra, false));
    assert_contains(&msg, &["unexpected `model.extra.weight`"]);
    assert_eq!(layout.check(&config, &with_extra, true).unwrap(), vec!["model.extra.weight".to_string()]);

    let (_dir, store) = write(&|n| n != "multi_modal_projector.linear_1.bias", None);
    let msg = checkpoint_message(layout.check(&config, &store, false));
    assert_contains(&msg, &["missing `multi_modal_projector.linear_1.bias`"]);

    // A projector whose input is not the tower's width.
    let narrow = Tensor::zeros(&[32, 20], DType::F32, Device::Cpu).unwrap();
    let linear_1 = "multi_modal_projector.linear_1.weight";
    let (_dir, store) = write(&|n| n != linear_1, Some((linear_1, &narrow)));
    let msg = checkpoint_message(layout.check(&config, &store, false));
    assert_contains(&msg, &["`multi_modal_projector.linear_1.weight` has shape [32, 20], expected [32, 24]"]);

    let (_dir, store) = write(&|n| !n.starts_with("vision_tower."), None);
    let msg = checkpoint_message(layout.check(&config, &store, false));
    assert_contains(&msg, &["no vision tower", "vision_tower.vision_model.embeddings.patch_embedding.weight"]);

    // A language model with a layer fewer than the config says.
    let (_dir, store) = write(&|n| !n.starts_with("language_model.model.layers.1."), None);
    let msg = checkpoint_message(layout.check(&config, &store, false));
    assert_contains(&msg, &["num_hidden_layers = 2", "hold 1 layers under `language_model.model.layers.`"]);

    // Without projector biases the config must say so, and then they are not expected.
    let (_dir, store) = write(&|n| !(n.starts_with("multi_modal_projector.") && n.ends_with(".bias")), None);
    assert!(layout.check(&config, &store, false).is_err());
    let unbiased = LlavaOnevisionConfig { projector_bias: false, ..config.clone() };
    layout.check(&unbiased, &store, false).unwrap();
}

#[test]
fn the_language_model_loads_under_its_prefix_from_either_layout() {
    let load = |dir: &str| {
        let config = config(dir);
        let store = WeightStore::open(&fixture(dir)).unwrap();
        let layout = LlavaLayout::detect(&config, &store).unwrap();
        let names = layout.language_model();
        let weights = Qwen2Weights::load_under(&store, &config.text, &names, DType::F32, Device::Cpu).unwrap();
        assert_eq!(weights.names(), &names);
        // Every tensor is the stored one, under the checkpoint's own name.
        let named = weights.named();
        assert_eq!(named.len(), 2 + 12 * 2 + 1);
        for (name, tensor) in &named {
            assert!(name.starts_with(&names.prefix) || *name == names.lm_head, "{name}");
            assert_eq!(values(tensor), values(&store.get(name, tensor.shape()).unwrap()), "{name}");
        }
        (layout, weights)
    };
    let (hf_layout, hf) = load("hf");
    let (original_layout, original) = load("llava_qwen");
    for ((hf_name, a), (original_name, b)) in hf.named().into_iter().zip(original.named()) {
        assert_eq!(hf_layout.rename(&hf_name, original_layout).unwrap(), original_name);
        assert_eq!(values(a), values(b), "{hf_name}");
    }
    // Gradient buffers keep the names.
    assert_eq!(hf.zeros_like().unwrap().names(), hf.names());
    assert_eq!(hf.named()[0].0, "language_model.model.embed_tokens.weight");
    assert_eq!(original.named().last().unwrap().0, "lm_head.weight");

    // Under a prefix that holds no decoder, or a wrong LM head name: clear errors.
    let store = WeightStore::open(&fixture("hf")).unwrap();
    let text = config("hf").text;
    let wrong = LlavaLayout::Hf.language_model();
    let msg = checkpoint_message(Qwen2Weights::load_under(&store, &text, &wrong, DType::F32, Device::Cpu));
    assert_contains(&msg, &["hold 0 layers under `model.language_model.layers.`"]);
    let head =
        unireward::model::Qwen2Names { lm_head: "lm_head.weight".into(), ..LlavaLayout::HfLegacy.language_model() };
    let msg = checkpoint_message(Qwen2Weights::load_under(&store, &text, &head, DType::F32, Device::Cpu));
    assert_contains(&msg, &["missing `lm_head.weight`"]);
    let err = Qwen2Weights::load_under(&store, &text, &head, DType::I64, Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::DType { .. }), "{err:?}");
}

/// The f32/i64 tensors of tests/fixtures/llava/reference.safetensors as f64.
struct Reference {
    tensors: BTreeMap<String, (Vec<usize>, Vec<f64>)>,
}

impl Reference {
    fn load() -> Reference {
        let bytes = std::fs::read(fixture("reference.safetensors")).unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        let tensors = file
            .tensors()
            .into_iter()
            .map(|(name, view)| {
                let data = view.data();
                let values: Vec<f64> = match view.dtype() {
                    Dtype::F32 => {
                        data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64).collect()
                    }
                    Dtype::F64 => data.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect(),
                    Dtype::I64 => {
                        data.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64).collect()
                    }
                    other => panic!("{name}: unexpected {other:?}"),
                };
                (name, (view.shape().to_vec(), values))
            })
            .collect();
        Reference { tensors }
    }

    fn get(&self, name: &str) -> (&[usize], &[f64]) {
        let (shape, values) = self.tensors.get(name).unwrap_or_else(|| panic!("no `{name}` in the reference"));
        (shape, values)
    }

    /// The names after `prefix` of the entries starting with it.
    fn names(&self, prefix: &str) -> Vec<String> {
        self.tensors.keys().filter_map(|n| n.strip_prefix(prefix)).map(str::to_string).collect()
    }
}

#[test]
fn text_only_logits_equal_the_reference_from_either_layout() {
    let reference = Reference::load();
    let (ids_shape, ids) = reference.get("input_ids");
    let (_, mask) = reference.get("attention_mask");
    let (logits_shape, logits) = reference.get("logits");
    let (t, vocab) = (ids_shape[1], logits_shape[2]);
    // Row 4 is the text-only case: no placeholders, so the language model alone computes its logits.
    let row = 4;
    let len = mask[row * t..(row + 1) * t].iter().filter(|&&m| m != 0.0).count();
    let row_ids: Vec<i64> = ids[row * t..row * t + len].iter().map(|&v| v as i64).collect();
    assert!(row_ids.iter().all(|&id| id != 90 && id != 91), "{row_ids:?}");
    assert!(len >= 5);
    let want = &logits[row * t * vocab..(row * t + len) * vocab];

    for dir in ["hf", "llava_qwen"] {
        let config = config(dir);
        let store = WeightStore::open(&fixture(dir)).unwrap();
        let names = LlavaLayout::detect(&config, &store).unwrap().language_model();
        let weights = Qwen2Weights::load_under(&store, &config.text, &names, DType::F32, Device::Cpu).unwrap();
        let model = Qwen2Model::new(config.text.clone(), weights).unwrap();
        let ids = Tensor::from_slice(&row_ids, &[1, len], Device::Cpu).unwrap();
        let ones = Tensor::from_slice(&vec![1i64; len], &[1, len], Device::Cpu).unwrap();
        let pass = model.forward(&ids, &ones, ForwardOptions::default()).unwrap();
        let got: Vec<f64> = values(&model.logits(&pass).unwrap()).into_iter().map(f64::from).collect();
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let diff = got.iter().zip(want).fold(0.0f64, |m, (g, w)| m.max((g - w).abs()));
        assert!(diff / scale < 1e-4, "{dir}: relative error {:.3e}", diff / scale);
    }
}

/// The cases' PNG files through unireward's preprocessing give the pixels transformers' processor gave the reference
/// (the same Pillow-exact resize: equal to f32 rounding).
#[test]
fn the_cases_pixels_equal_the_reference_from_the_image_files() {
    let reference = Reference::load();
    let processor =
        ImageProcessor::new(ImageProcessorConfig::from_file(&fixture("hf/preprocessor_config.json")).unwrap()).unwrap();
    let (tiles_shape, tiles) = reference.get("pixel_values");
    let tile_len: usize = tiles_shape[1..].iter().product();
    let (_, sizes) = reference.get("image_sizes");
    let (_, counts) = reference.get("image_tiles");
    // One image alone in its sample takes the anyres path; the two of one sample are each padded to a square.
    let images = [
        ("anyres_0.png", ImageLayout::Anyres),
        ("downsampled_0.png", ImageLayout::Anyres),
        ("two_images_0.png", ImageLayout::Square),
        ("two_images_1.png", ImageLayout::Square),
    ];
    assert_eq!(counts.len(), images.len());
    let mut start = 0;
    for (i, (file, layout)) in images.into_iter().enumerate() {
        let image = decode_image(&fixture("images").join(file)).unwrap();
        let pixels = processor.preprocess(&image, layout).unwrap();
        let size = pixels.image_size;
        assert_eq!([size.0 as f64, size.1 as f64], sizes[2 * i..2 * i + 2], "{file}");
        let count = counts[i] as usize;
        assert_eq!(pixels.pixel_values.shape(), [count, 3, 12, 12], "{file}");
        let want = &tiles[start * tile_len..(start + count) * tile_len];
        let diff = values(&pixels.pixel_values).iter().zip(want).fold(0.0f64, |m, (g, w)| m.max((*g as f64 - w).abs()));
        assert!(diff <= 1e-5, "{file}: max difference {diff}");
        start += count;
    }
    assert_eq!(start, tiles_shape[0]);

    let video = load_video(&VideoSource::from_path(&fixture("video")).unwrap(), 4).unwrap();
    let frames = processor.preprocess_frames(&video.frames).unwrap();
    let (video_shape, want) = reference.get("pixel_values_videos");
    assert_eq!(frames.shape(), &video_shape[1..]);
    let diff = values(&frames).iter().zip(want).fold(0.0f64, |m, (g, w)| m.max((*g as f64 - w).abs()));
    assert!(diff <= 1e-5, "video: max difference {diff}");
}

/// A copy of the HF fixture's checkpoint with `change` applied to its tensors.
fn hf_copy_with(tag: &str, change: impl FnOnce(&mut BTreeMap<String, Tensor>)) -> Scratch {
    let scratch = Scratch::new(tag);
    let mut all = tensors(&WeightStore::open(&fixture("hf")).unwrap());
    change(&mut all);
    let refs: Vec<(&str, &Tensor)> = all.iter().map(|(n, t)| (n.as_str(), t)).collect();
    save_safetensors(&scratch.0.join("model.safetensors"), &refs).unwrap();
    std::fs::copy(fixture("hf/config.json"), scratch.0.join("config.json")).unwrap();
    scratch
}

#[test]
fn load_options_reach_the_whole_model() {
    let load = |dir: &Path, lenient: bool, check_finite: bool| {
        LlavaOnevisionModel::load_with(dir, DType::F32, Device::Cpu, &LoadOptions { lenient, check_finite })
    };
    let (_, report) = load(&fixture("hf"), false, true).unwrap();
    assert!(report.ignored.is_empty());

    let extra = hf_copy_with("extra", |all| {
        let head = Tensor::zeros(&[2, 32], DType::F32, Device::Cpu).unwrap();
        all.insert("score.weight".into(), head);
    });
    assert_contains(&checkpoint_message(load(&extra.0, false, false)), &["unexpected `score.weight`"]);
    let (model, report) = load(&extra.0, true, false).unwrap();
    assert_eq!(report.ignored, ["score.weight"]);
    assert_eq!(
        model.named_parameters().len(),
        LlavaOnevisionModel::load(&fixture("hf"), DType::F32, Device::Cpu).unwrap().named_parameters().len()
    );

    // A NaN in the vision tower, then in the projector: each named, only when asked for.
    for name in ["vision_tower.vision_model.encoder.layers.0.mlp.fc2.weight", "multi_modal_projector.linear_2.bias"] {
        let poisoned = hf_copy_with("nan", |all| {
            let t = &all[name];
            let mut v = values(t);
            let middle = v.len() / 2;
            v[middle] = f32::NAN;
            all.insert(name.into(), Tensor::from_slice(&v, t.shape(), Device::Cpu).unwrap());
        });
        assert_contains(&checkpoint_message(load(&poisoned.0, false, true)), &[&format!("weight `{name}` holds NaN")]);
        load(&poisoned.0, false, false).unwrap();
    }
}

#[test]
fn named_parameters_are_the_checkpoint_tensors() {
    let model = LlavaOnevisionModel::load(&fixture("hf"), DType::F32, Device::Cpu).unwrap();
    let store = WeightStore::open(&fixture("hf")).unwrap();
    let named = model.named_parameters();
    let names: BTreeSet<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), named.len(), "a name twice");
    for (name, tensor) in &named {
        let stored = store.get(name, store.shape(name).unwrap()).unwrap();
        assert_eq!(values(tensor), values(&stored), "{name}");
    }
    // Every stored tensor is a parameter, except the tower's post-layernorm the features skip.
    let unused: Vec<&str> = store.names().into_iter().filter(|n| !names.contains(n)).collect();
    assert!(unused.iter().all(|n| n.contains("post_layernorm")), "{unused:?}");
}

#[test]
fn placeholder_counts_are_the_processors_expansion() {
    let model = LlavaOnevisionModel::load(&fixture("hf"), DType::F32, Device::Cpu).unwrap();
    let processor = ImageProcessor::for_checkpoint(&fixture("hf")).unwrap();
    let r = Reference::load();
    let ids = r.get("input_ids").1;
    let t = r.get("input_ids").0[1];
    let count = |row: usize, id: f64| ids[row * t..(row + 1) * t].iter().filter(|&&v| v == id).count();
    let anyres = processor.preprocess_file(&fixture("images/anyres_0.png"), ImageLayout::Anyres).unwrap();
    let downsampled = processor.preprocess_file(&fixture("images/downsampled_0.png"), ImageLayout::Anyres).unwrap();
    let video = processor.preprocess_video(&fixture("video"), 4).unwrap();
    let media = [MediaInput::image(&anyres), MediaInput::image(&downsampled), MediaInput::Video { frames: &video }];
    assert_eq!(model.placeholder_counts(&media).unwrap(), [count(0, 90.0), count(1, 90.0), count(3, 91.0)]);
    let wrong = Tensor::zeros(&[2, 3, 11, 12], DType::F32, Device::Cpu).unwrap();
    let err = model.placeholder_counts(&[MediaInput::Video { frames: &wrong }]).unwrap_err().to_string();
    assert_contains(&err, &["media item 0 (a video)", "[2, 3, 11, 12]"]);
}

#[test]
fn the_architecture_is_read_from_config_json() {
    assert_eq!(Architecture::of_checkpoint(&fixture("hf")).unwrap(), Architecture::LlavaOnevision);
    assert_eq!(Architecture::of_checkpoint(&fixture("llava_qwen")).unwrap(), Architecture::LlavaOnevision);
    let qwen2 = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2/gqa_untied");
    assert_eq!(Architecture::of_checkpoint(&qwen2).unwrap(), Architecture::Qwen2);
    let scratch = Scratch::new("arch");
    assert_contains(&checkpoint_message(Architecture::of_checkpoint(&scratch.0)), &["config.json"]);
    std::fs::write(scratch.0.join("config.json"), "{not json").unwrap();
    assert_contains(&checkpoint_message(Architecture::of_checkpoint(&scratch.0)), &["not valid JSON"]);
}
