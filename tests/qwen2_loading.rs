//! Qwen2 checkpoints: config parsing (every unsupported option refused), loading the fixtures transformers saved
//! (`tests/reference/qwen2_checkpoint.py`), sharded loading, clear errors on corrupt checkpoints, and byte-exact
//! save round trips.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use half::{bf16, f16};
use unireward::model::{
    qwen2_weight_names, save_safetensors, save_sharded, LoadOptions, Qwen2Config, Qwen2Model, WeightStore,
};
use unireward::{DType, Device, Error, Tensor};

const MODELS: [&str; 4] = ["gqa_untied", "mha_tied", "mqa_tied_bf16", "sharded_f16"];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2").join(name)
}

#[derive(serde::Deserialize)]
struct Expected {
    dtype: String,
    tensors: Vec<ExpectedTensor>,
}

#[derive(serde::Deserialize)]
struct ExpectedTensor {
    name: String,
    shape: Vec<usize>,
    sum: f64,
    abs_sum: f64,
    head: Vec<f64>,
}

fn expected(name: &str) -> Expected {
    let text = std::fs::read_to_string(fixture(name).join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A scratch directory under the system temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("unireward-qwen2-{}-{n}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// A copy of a fixture's files.
    fn copy_of(model: &str) -> Scratch {
        let scratch = Scratch::new(model);
        for entry in std::fs::read_dir(fixture(model)).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, scratch.0.join(path.file_name().unwrap())).unwrap();
        }
        scratch
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn values_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap().into_iter().map(f64::from).collect()
}

fn checkpoint_message<T: std::fmt::Debug>(result: unireward::Result<T>) -> String {
    match result {
        Err(Error::Checkpoint(msg)) => msg,
        other => panic!("expected a checkpoint error, got {other:?}"),
    }
}

fn assert_contains(msg: &str, parts: &[&str]) {
    for part in parts {
        assert!(msg.contains(part), "error message {msg:?} should mention {part:?}");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// config.json

#[test]
fn fixture_configs_parse() {
    let c = Qwen2Config::from_file(&fixture("gqa_untied").join("config.json")).unwrap();
    assert_eq!(
        c,
        Qwen2Config {
            vocab_size: 128,
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            max_position_embeddings: 64,
            rope_theta: 10000.0,
            rms_norm_eps: 1e-6,
            tie_word_embeddings: false,
            torch_dtype: DType::F32,
            eos_token_ids: vec![2],
        }
    );
    assert_eq!(c.head_dim(), 8);
    let tied = Qwen2Config::from_file(&fixture("mqa_tied_bf16").join("config.json")).unwrap();
    assert!(tied.tie_word_embeddings);
    assert_eq!((tied.num_key_value_heads, tied.torch_dtype), (1, DType::BF16));
    let sharded = Qwen2Config::from_file(&fixture("sharded_f16").join("config.json")).unwrap();
    assert_eq!(sharded.torch_dtype, DType::F16);
}

/// Qwen2-0.5B-Instruct's config.json as transformers 4 wrote it (rope_theta, rope_scaling null, torch_dtype,
/// a sliding_window size with sliding windows off).
const QWEN2_0_5B: &str = r#"{
  "architectures": ["Qwen2ForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151645,
  "hidden_act": "silu",
  "hidden_size": 896,
  "initializer_range": 0.02,
  "intermediate_size": 4864,
  "max_position_embeddings": 32768,
  "max_window_layers": 24,
  "model_type": "qwen2",
  "num_attention_heads": 14,
  "num_hidden_layers": 24,
  "num_key_value_heads": 2,
  "rms_norm_eps": 1e-06,
  "rope_theta": 1000000.0,
  "rope_scaling": null,
  "sliding_window": 32768,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.40.1",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936
}"#;

#[test]
fn transformers_4_config_parses() {
    let c = Qwen2Config::from_json(QWEN2_0_5B).unwrap();
    assert_eq!((c.hidden_size, c.intermediate_size, c.num_hidden_layers), (896, 4864, 24));
    assert_eq!((c.num_attention_heads, c.num_key_value_heads, c.head_dim()), (14, 2, 64));
    assert_eq!((c.vocab_size, c.rope_theta, c.rms_norm_eps), (151936, 1e6, 1e-6));
    assert!(c.tie_word_embeddings);
    assert_eq!(c.torch_dtype, DType::BF16);
    assert_eq!(c.eos_token_ids, vec![151645]);
    // Expected tensors: 12 per layer, embeddings and final norm, no LM head when tied.
    let names = qwen2_weight_names(&c);
    assert_eq!(names.len(), 2 + 12 * 24);
    let params: usize = names.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    assert_eq!(params, 494_032_768, "Qwen2-0.5B has 494,032,768 parameters");
}

/// `QWEN2_0_5B` with `key` set to `value` (JSON text; `null` removes nothing, it sets null).
fn config_with(key: &str, value: &str) -> String {
    let mut map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(QWEN2_0_5B).unwrap();
    map.insert(key.to_string(), serde_json::from_str(value).unwrap());
    serde_json::to_string(&map).unwrap()
}

#[test]
fn unsupported_options_are_refused_by_key_and_value() {
    let cases: &[(&str, &str, &[&str])] = &[
        ("model_type", r#""llama""#, &["model_type", "llama", "qwen2"]),
        ("hidden_act", r#""gelu""#, &["hidden_act", "gelu", "silu"]),
        ("rope_scaling", r#"{"type": "yarn", "factor": 4.0}"#, &["rope_scaling", "yarn"]),
        ("use_sliding_window", "true", &["use_sliding_window", "true"]),
        ("attention_dropout", "0.1", &["attention_dropout", "0.1"]),
        ("quantization_config", r#"{"quant_method": "gptq"}"#, &["quantization_config", "gptq"]),
        ("torch_dtype", r#""float64""#, &["torch_dtype", "float64"]),
        ("head_dim", "128", &["head_dim", "128", "64"]),
        ("layer_types", r#"["sliding_attention"]"#, &["layer_types", "sliding_attention"]),
        ("rope_parameters", r#"{"rope_type": "yarn", "rope_theta": 1000000.0}"#, &["rope_type", "yarn"]),
        ("rope_parameters", r#"{"rope_type": "default", "rope_theta": 1000000.0, "factor": 2.0}"#, &["factor"]),
        ("rope_parameters", r#"{"rope_type": "default", "rope_theta": 500.0}"#, &["rope_theta", "500"]),
        ("rope_parameters", "[1, 2]", &["rope_parameters"]),
        ("eos_token_id", r#""</s>""#, &["eos_token_id", "</s>"]),
        ("hidden_size", r#""896""#, &["hidden_size", "\"896\"", "positive integer"]),
        ("hidden_size", "0", &["hidden_size", "0"]),
        ("hidden_size", "900", &["hidden_size 900", "num_attention_heads 14"]),
        ("num_key_value_heads", "3", &["num_attention_heads 14", "num_key_value_heads 3"]),
        ("num_attention_heads", "128", &["head dimension 7", "odd"]),
        ("rms_norm_eps", "-1.0", &["rms_norm_eps"]),
        ("tie_word_embeddings", r#""yes""#, &["tie_word_embeddings", "yes"]),
        ("vocab_size", "null", &["vocab_size", "missing"]),
        ("model_type", "null", &["model_type", "missing"]),
    ];
    for (key, value, parts) in cases {
        let msg = checkpoint_message(Qwen2Config::from_json(&config_with(key, value)));
        assert_contains(&msg, parts);
    }
    assert_contains(&checkpoint_message(Qwen2Config::from_json("[1, 2]")), &["not a JSON object"]);
    assert_contains(&checkpoint_message(Qwen2Config::from_json("{\"model_type\": ")), &["not a JSON object"]);
}

#[test]
fn validate_refuses_zero_sizes_in_hand_built_configs() {
    let mut c = Qwen2Config::from_json(QWEN2_0_5B).unwrap();
    c.num_attention_heads = 0;
    assert_contains(&checkpoint_message(c.validate()), &["`num_attention_heads` is 0"]);
}

#[test]
fn sizes_past_any_real_model_are_refused_by_key() {
    let cases = [
        ("num_hidden_layers", "1000000"),
        ("num_hidden_layers", "1000000000000000000"),
        ("vocab_size", "4294967296"),
        ("hidden_size", "1048576"),
        ("max_position_embeddings", "1000000000"),
    ];
    for (key, value) in cases {
        let msg = checkpoint_message(Qwen2Config::from_json(&config_with(key, value)));
        assert_contains(&msg, &[key, value, "more than this library accepts"]);
    }
    assert_contains(
        &checkpoint_message(Qwen2Config::from_json(&config_with("num_hidden_layers", "1e18"))),
        &["num_hidden_layers", "positive integer"],
    );
}

#[test]
fn a_layer_count_the_weights_do_not_hold_fails_before_loading() {
    for layers in ["1", "3", "4096"] {
        let scratch = Scratch::copy_of("gqa_untied");
        let path = scratch.0.join("config.json");
        let mut map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        map.insert("num_hidden_layers".into(), serde_json::from_str(layers).unwrap());
        map.remove("layer_types");
        std::fs::write(&path, serde_json::to_string(&map).unwrap()).unwrap();
        let msg = checkpoint_message(Qwen2Model::load(&scratch.0, DType::F32, Device::Cpu));
        assert_contains(&msg, &[&format!("num_hidden_layers = {layers}"), "hold 2 layers"]);
    }
}

/// Opening a FIFO for reading blocks until a writer comes: the loader must refuse it without opening it.
#[cfg(unix)]
#[test]
fn special_files_are_refused_without_blocking() {
    let scratch = Scratch::copy_of("gqa_untied");
    for name in ["config.json", "model.safetensors"] {
        let path = scratch.0.join(name);
        std::fs::remove_file(&path).unwrap();
        let made = std::process::Command::new("mkfifo").arg(&path).status().expect("mkfifo runs");
        assert!(made.success());
        let msg = checkpoint_message(Qwen2Model::load(&scratch.0, DType::F32, Device::Cpu));
        assert_contains(&msg, &[name, "not a regular file"]);
        std::fs::remove_file(&path).unwrap();
        std::fs::copy(fixture("gqa_untied").join(name), &path).unwrap();
    }
    let dir_as_config = Scratch::new("dir-config");
    std::fs::create_dir(dir_as_config.0.join("config.json")).unwrap();
    let msg = checkpoint_message(Qwen2Config::from_file(&dir_as_config.0.join("config.json")));
    assert_contains(&msg, &["config.json", "not a regular file"]);
}

#[test]
fn null_options_take_defaults() {
    // transformers 5 writes null for unset options; null means absent.
    let c = Qwen2Config::from_json(&config_with("num_key_value_heads", "null")).unwrap();
    assert_eq!(c.num_key_value_heads, 14);
    let c = Qwen2Config::from_json(&config_with("eos_token_id", "[151645, 151643]")).unwrap();
    assert_eq!(c.eos_token_ids, vec![151645, 151643]);
    let c = Qwen2Config::from_json(&config_with("rope_parameters", r#"{"rope_theta": 1000000.0}"#)).unwrap();
    assert_eq!(c.rope_theta, 1e6);
}

#[test]
fn config_file_errors_name_the_file() {
    let missing = fixture("no_such_model").join("config.json");
    assert_contains(&checkpoint_message(Qwen2Config::from_file(&missing)), &["no_such_model/config.json"]);
    let scratch = Scratch::new("config");
    let path = scratch.0.join("config.json");
    std::fs::write(&path, config_with("hidden_act", "\"relu\"")).unwrap();
    assert_contains(&checkpoint_message(Qwen2Config::from_file(&path)), &[path.to_str().unwrap(), "relu"]);
}

// ---------------------------------------------------------------------------------------------------------------
// Loading

fn open(model: &str) -> (Qwen2Config, WeightStore) {
    let dir = fixture(model);
    (Qwen2Config::from_file(&dir.join("config.json")).unwrap(), WeightStore::open(&dir).unwrap())
}

#[test]
fn fixtures_load_with_the_values_python_saved() {
    for model in MODELS {
        let (config, store) = open(model);
        let expected = expected(model);
        // The names and shapes we expect are transformers' own, in its order.
        let names = qwen2_weight_names(&config);
        let python: Vec<(String, Vec<usize>)> =
            expected.tensors.iter().map(|t| (t.name.clone(), t.shape.clone())).collect();
        assert_eq!(names, python, "{model}: expected tensor names");
        store.check_exact(&names).unwrap();
        store.check_qwen2(&config).unwrap();
        assert_eq!(store.names().len(), names.len());
        let stored = match expected.dtype.as_str() {
            "float32" => DType::F32,
            "bfloat16" => DType::BF16,
            "float16" => DType::F16,
            other => panic!("fixture dtype {other}"),
        };
        assert_eq!(config.torch_dtype, stored);
        for t in &expected.tensors {
            let tensor = store.get(&t.name, &t.shape).unwrap();
            assert_eq!((tensor.dtype(), tensor.shape(), tensor.device()), (stored, &t.shape[..], Device::Cpu));
            let values = values_f64(&tensor);
            // Every stored value is an f32; JSON's decimal parses to within an f64 ulp of it, so to it exactly in f32.
            let head: Vec<f32> = t.head.iter().map(|&v| v as f32).collect();
            let got: Vec<f32> = values[..head.len()].iter().map(|&v| v as f32).collect();
            assert_eq!(got, head, "{model} {}", t.name);
            let sum: f64 = values.iter().sum();
            let abs_sum: f64 = values.iter().map(|v| v.abs()).sum();
            assert!((sum - t.sum).abs() <= 1e-9 * t.abs_sum, "{model} {}: sum {sum} vs {}", t.name, t.sum);
            assert!((abs_sum - t.abs_sum).abs() <= 1e-12 * t.abs_sum, "{model} {}: abs sum", t.name);
        }
    }
}

#[test]
fn get_as_converts_dtypes_rounding_to_nearest() {
    // bf16 → f32 is exact.
    let (_, store) = open("mqa_tied_bf16");
    let name = "model.layers.0.mlp.down_proj.weight";
    let shape = store.shape(name).unwrap().to_vec();
    let stored = store.get(name, &shape).unwrap().to_vec::<bf16>().unwrap();
    let wide = store.get_as(name, &shape, DType::F32, Device::Cpu).unwrap().to_vec::<f32>().unwrap();
    assert!(stored.iter().zip(&wide).all(|(a, b)| a.to_f32() == *b));
    // f32 → bf16 and f16 round to nearest.
    let (_, store) = open("gqa_untied");
    let shape = [128, 32];
    let exact = store.get("lm_head.weight", &shape).unwrap().to_vec::<f32>().unwrap();
    let b = store.get_as("lm_head.weight", &shape, DType::BF16, Device::Cpu).unwrap().to_vec::<bf16>().unwrap();
    let h = store.get_as("lm_head.weight", &shape, DType::F16, Device::Cpu).unwrap().to_vec::<f16>().unwrap();
    assert!(exact.iter().zip(&b).all(|(x, y)| bf16::from_f32(*x) == *y));
    assert!(exact.iter().zip(&h).all(|(x, y)| f16::from_f32(*x) == *y));
    // f16 → bf16 goes through f32 (exact), then rounds once.
    let (_, store) = open("sharded_f16");
    let half = store.get("model.norm.weight", &[32]).unwrap().to_vec::<f16>().unwrap();
    let b = store.get_as("model.norm.weight", &[32], DType::BF16, Device::Cpu).unwrap().to_vec::<bf16>().unwrap();
    assert!(half.iter().zip(&b).all(|(x, y)| bf16::from_f32(x.to_f32()) == *y));
    // Integer targets are refused.
    let err = store.get_as("model.norm.weight", &[32], DType::I32, Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::DType { .. }), "{err}");
}

#[test]
fn sharded_checkpoint_loads_across_files() {
    let (config, store) = open("sharded_f16");
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("sharded_f16").join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let shards: std::collections::BTreeSet<&str> =
        index["weight_map"].as_object().unwrap().values().map(|v| v.as_str().unwrap()).collect();
    assert!(shards.len() > 2, "the fixture should be split into several shards, got {shards:?}");
    store.check_exact(&qwen2_weight_names(&config)).unwrap();
    // One shard opened on its own holds only its tensors.
    let one = WeightStore::open(&fixture("sharded_f16").join(shards.first().unwrap())).unwrap();
    assert!(one.names().len() < store.names().len());
}

#[test]
fn a_safetensors_file_opens_directly() {
    let store = WeightStore::open(&fixture("mha_tied").join("model.safetensors")).unwrap();
    assert_eq!(store.names().len(), 2 + 12 * 2);
    assert_eq!(store.shape("model.embed_tokens.weight"), Some(&[96, 16][..]));
    assert_eq!(store.shape("lm_head.weight"), None);
}

#[test]
fn unaligned_tensor_data_loads() {
    // Safetensors does not promise aligned data: a header of odd length puts the f32s at an odd file offset.
    let mut header = r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}}"#.to_string();
    while (8 + header.len()) % 4 != 1 {
        header.push(' ');
    }
    let values = [1.5f32, -2.25, f32::from_bits(0x7fc0_1234)];
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    let scratch = Scratch::new("unaligned");
    let file = scratch.0.join("w.safetensors");
    std::fs::write(&file, bytes).unwrap();
    let store = WeightStore::open(&file).unwrap();
    let bits: Vec<u32> = store.get("w", &[3]).unwrap().to_vec::<f32>().unwrap().iter().map(|v| v.to_bits()).collect();
    assert_eq!(bits, values.map(f32::to_bits), "stored bits, NaN payload included");
    let b = store.get_as("w", &[3], DType::BF16, Device::Cpu).unwrap().to_vec::<bf16>().unwrap();
    assert_eq!(&b[..2], &[bf16::from_f32(1.5), bf16::from_f32(-2.25)]);
    assert!(b[2].is_nan());
}

// ---------------------------------------------------------------------------------------------------------------
// Corrupt or mismatched checkpoints

/// Every tensor of a store, in its stored dtype, in the fixture's (transformers') order.
fn all_tensors(model: &str) -> Vec<(String, Tensor)> {
    let (_, store) = open(model);
    expected(model).tensors.iter().map(|t| (t.name.clone(), store.get(&t.name, &t.shape).unwrap())).collect()
}

fn refs(tensors: &[(String, Tensor)]) -> Vec<(&str, &Tensor)> {
    tensors.iter().map(|(n, t)| (n.as_str(), t)).collect()
}

#[test]
fn missing_tensor_is_named_with_its_file() {
    let scratch = Scratch::copy_of("gqa_untied");
    let mut tensors = all_tensors("gqa_untied");
    tensors.retain(|(n, _)| n != "model.layers.1.mlp.up_proj.weight");
    let file = scratch.0.join("model.safetensors");
    save_safetensors(&file, &refs(&tensors)).unwrap();
    let config = Qwen2Config::from_file(&scratch.0.join("config.json")).unwrap();
    let store = WeightStore::open(&scratch.0).unwrap();
    let msg = checkpoint_message(store.check_exact(&qwen2_weight_names(&config)));
    assert_contains(&msg, &["missing `model.layers.1.mlp.up_proj.weight`", scratch.0.to_str().unwrap()]);
    let msg = checkpoint_message(store.get("model.layers.1.mlp.up_proj.weight", &[64, 32]));
    assert_contains(&msg, &["`model.layers.1.mlp.up_proj.weight` not found", file.to_str().unwrap()]);
}

#[test]
fn wrong_shape_names_both_shapes() {
    let (mut config, store) = open("gqa_untied");
    let msg = checkpoint_message(store.get("model.layers.0.self_attn.k_proj.weight", &[32, 32]));
    assert_contains(&msg, &["model.layers.0.self_attn.k_proj.weight", "[16, 32]", "expected [32, 32]"]);
    // A config that disagrees with the weights: every mismatch reported at once.
    config.intermediate_size = 48;
    let msg = checkpoint_message(store.check_exact(&qwen2_weight_names(&config)));
    assert_contains(&msg, &["`model.layers.0.mlp.gate_proj.weight` has shape [64, 32], expected [48, 32]"]);
    assert_contains(&msg, &["`model.layers.1.mlp.down_proj.weight` has shape [32, 64], expected [32, 48]"]);
}

#[test]
fn truncated_and_garbled_files_are_safetensors_errors_with_the_path() {
    let scratch = Scratch::copy_of("mha_tied");
    let file = scratch.0.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    for (what, contents) in [
        ("truncated data", bytes[..bytes.len() - 100].to_vec()),
        ("truncated header", bytes[..200].to_vec()),
        ("empty", Vec::new()),
        ("huge header length", [&u64::MAX.to_le_bytes()[..], &bytes[8..]].concat()),
        ("header not JSON", [&bytes[..8], &vec![b'x'; bytes.len() - 8][..]].concat()),
    ] {
        std::fs::write(&file, &contents).unwrap();
        let msg = checkpoint_message(WeightStore::open(&scratch.0));
        assert_contains(&msg, &[file.to_str().unwrap(), "not a valid safetensors file"]);
        eprintln!("{what}: {msg}");
    }
}

#[test]
fn non_float_and_unexpected_tensors_are_refused() {
    let scratch = Scratch::copy_of("mha_tied");
    let mut tensors = all_tensors("mha_tied");
    let norm = tensors.iter_mut().find(|(n, _)| n == "model.norm.weight").unwrap();
    norm.1 = Tensor::from_slice(&[1i32; 16], &[16], Device::Cpu).unwrap();
    tensors.push(("lm_head.weight".into(), Tensor::zeros(&[96, 16], DType::F32, Device::Cpu).unwrap()));
    save_safetensors(&scratch.0.join("model.safetensors"), &refs(&tensors)).unwrap();
    let config = Qwen2Config::from_file(&scratch.0.join("config.json")).unwrap();
    let store = WeightStore::open(&scratch.0).unwrap();
    let msg = checkpoint_message(store.get("model.norm.weight", &[16]));
    assert_contains(&msg, &["`model.norm.weight`", "stored as I32", "F32, BF16 or F16"]);
    // Tied embeddings with an LM head in the file: config and weights disagree.
    let msg = checkpoint_message(store.check_exact(&qwen2_weight_names(&config)));
    assert_contains(&msg, &["stored as I32", "unexpected `lm_head.weight`"]);
}

#[test]
fn a_tied_model_may_carry_an_identical_lm_head_only() {
    let scratch = Scratch::copy_of("mha_tied");
    let config = Qwen2Config::from_file(&scratch.0.join("config.json")).unwrap();
    let mut tensors = all_tensors("mha_tied");
    let embed = tensors.iter().find(|(n, _)| n == "model.embed_tokens.weight").unwrap().1.try_clone().unwrap();
    tensors.push(("lm_head.weight".into(), embed));
    save_safetensors(&scratch.0.join("model.safetensors"), &refs(&tensors)).unwrap();
    WeightStore::open(&scratch.0).unwrap().check_qwen2(&config).unwrap();
    // A different head: the config says tied, the weights say otherwise.
    let head = &mut tensors.last_mut().unwrap().1;
    head.as_mut_slice::<f32>().unwrap()[7] += 1.0;
    save_safetensors(&scratch.0.join("model.safetensors"), &refs(&tensors)).unwrap();
    let msg = checkpoint_message(WeightStore::open(&scratch.0).unwrap().check_qwen2(&config));
    assert_contains(&msg, &["unexpected `lm_head.weight`"]);
}

/// Lenient loading takes what transformers takes (a differing tied head, unknown extra tensors), reports it, and
/// computes with the embeddings as the head; strict loading (the default) refuses the same checkpoint.
#[test]
fn lenient_loading_ignores_and_reports_unused_tensors() {
    let scratch = Scratch::copy_of("mha_tied");
    let mut tensors = all_tensors("mha_tied");
    let mut head = tensors.iter().find(|(n, _)| n == "model.embed_tokens.weight").unwrap().1.try_clone().unwrap();
    head.as_mut_slice::<f32>().unwrap()[7] += 1.0;
    let extra = Tensor::from_slice(&[1f32, 2.0, 3.0], &[3], Device::Cpu).unwrap();
    tensors.push(("lm_head.weight".into(), head));
    tensors.push(("vision_tower.extra.weight".into(), extra));
    save_safetensors(&scratch.0.join("model.safetensors"), &refs(&tensors)).unwrap();
    let msg = checkpoint_message(Qwen2Model::load(&scratch.0, DType::F32, Device::Cpu));
    assert_contains(&msg, &["unexpected `lm_head.weight`, `vision_tower.extra.weight`"]);
    let lenient = LoadOptions { lenient: true, ..LoadOptions::default() };
    let (model, report) = Qwen2Model::load_with(&scratch.0, DType::F32, Device::Cpu, &lenient).unwrap();
    assert_eq!(report.ignored, ["lm_head.weight", "vision_tower.extra.weight"]);
    assert!(model.weights.lm_head.is_none(), "a tied model computes with its embeddings");
    let strict_fixture = Qwen2Model::load(&fixture("mha_tied"), DType::F32, Device::Cpu).unwrap();
    assert_eq!(values_f64(&model.weights.embed_tokens), values_f64(&strict_fixture.weights.embed_tokens));
    // Lenient is not careless: a missing tensor is still an error.
    tensors.retain(|(n, _)| n != "model.norm.weight");
    save_safetensors(&scratch.0.join("model.safetensors"), &refs(&tensors)).unwrap();
    let msg = checkpoint_message(Qwen2Model::load_with(&scratch.0, DType::F32, Device::Cpu, &lenient));
    assert_contains(&msg, &["missing `model.norm.weight`"]);
}

#[test]
fn check_finite_names_the_first_non_finite_weight() {
    for (bad, dtype) in [(f32::NAN, DType::F32), (f32::INFINITY, DType::BF16), (f32::NEG_INFINITY, DType::F16)] {
        let scratch = Scratch::copy_of("gqa_untied");
        let mut tensors = all_tensors("gqa_untied");
        let (_, norm) =
            tensors.iter_mut().find(|(n, _)| n == "model.layers.1.post_attention_layernorm.weight").unwrap();
        norm.as_mut_slice::<f32>().unwrap()[3] = bad;
        save_safetensors(&scratch.0.join("model.safetensors"), &refs(&tensors)).unwrap();
        // Loads silently by default (the values are the checkpoint's).
        Qwen2Model::load(&scratch.0, dtype, Device::Cpu).unwrap();
        let check = LoadOptions { check_finite: true, ..LoadOptions::default() };
        let msg = checkpoint_message(Qwen2Model::load_with(&scratch.0, dtype, Device::Cpu, &check));
        assert_contains(&msg, &["`model.layers.1.post_attention_layernorm.weight`", &format!("{bad}"), "index 3"]);
    }
    let check = LoadOptions { check_finite: true, lenient: true };
    Qwen2Model::load_with(&fixture("gqa_untied"), DType::F32, Device::Cpu, &check).unwrap();
}

#[test]
fn bad_index_files_are_clear_errors() {
    let index_name = "model.safetensors.index.json";
    let original = std::fs::read_to_string(fixture("sharded_f16").join(index_name)).unwrap();
    let mut map: serde_json::Value = serde_json::from_str(&original).unwrap();
    let weight_map = map["weight_map"].as_object_mut().unwrap();
    let norm_file = weight_map["model.norm.weight"].as_str().unwrap().to_string();
    let other_file = weight_map["model.embed_tokens.weight"].as_str().unwrap().to_string();
    let edit = |f: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>)| {
        let mut m = map.clone();
        f(m["weight_map"].as_object_mut().unwrap());
        serde_json::to_string(&m).unwrap()
    };
    let cases: Vec<(String, Vec<String>)> = vec![
        ("{not json".into(), vec!["not a valid index".into()]),
        ("{\"metadata\": {}}".into(), vec!["not a valid index".into(), "weight_map".into()]),
        (
            edit(&|w| {
                w.insert("model.norm.weight".into(), other_file.clone().into());
            }),
            vec![format!("lists `model.norm.weight` in {other_file}"), norm_file.clone()],
        ),
        (
            edit(&|w| {
                w.remove("model.norm.weight");
            }),
            vec!["does not list `model.norm.weight`".into(), norm_file.clone()],
        ),
        (
            edit(&|w| {
                w.insert("model.extra.weight".into(), other_file.clone().into());
            }),
            vec!["lists `model.extra.weight`".into()],
        ),
        (
            edit(&|w| {
                w.insert("model.norm.weight".into(), "model-00042-of-00009.safetensors".into());
            }),
            vec!["cannot open".into(), "model-00042-of-00009.safetensors".into()],
        ),
        (
            edit(&|w| {
                w.insert("model.norm.weight".into(), "../elsewhere/model.safetensors".into());
            }),
            vec!["not a file name".into()],
        ),
    ];
    for (text, parts) in cases {
        let scratch = Scratch::copy_of("sharded_f16");
        let index = scratch.0.join(index_name);
        std::fs::write(&index, text).unwrap();
        let msg = checkpoint_message(WeightStore::open(&scratch.0));
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        assert_contains(&msg, &parts);
        if !msg.contains("cannot open") {
            assert_contains(&msg, &[index.to_str().unwrap()]);
        }
    }
}

#[test]
fn a_directory_without_weights_says_so() {
    let scratch = Scratch::new("empty");
    let msg = checkpoint_message(WeightStore::open(&scratch.0));
    assert_contains(&msg, &["no model.safetensors or model.safetensors.index.json"]);
}

// ---------------------------------------------------------------------------------------------------------------
// Saving

#[test]
fn save_round_trip_is_byte_exact() {
    for model in ["gqa_untied", "mha_tied", "mqa_tied_bf16"] {
        let tensors = all_tensors(model);
        let scratch = Scratch::new("save");
        let file = scratch.0.join("model.safetensors");
        save_safetensors(&file, &refs(&tensors)).unwrap();
        let original = std::fs::read(fixture(model).join("model.safetensors")).unwrap();
        assert!(std::fs::read(&file).unwrap() == original, "{model}: saved file differs from transformers'");
        // And it reads back.
        let back = WeightStore::open(&scratch.0).unwrap();
        for (name, t) in &tensors {
            assert_eq!(values_f64(&back.get(name, t.shape()).unwrap()), values_f64(t));
        }
    }
}

#[test]
fn sharded_save_matches_transformers_byte_for_byte() {
    let tensors = all_tensors("sharded_f16");
    let scratch = Scratch::new("shards");
    // The fixture was saved with max_shard_size="8KB" (8,000 bytes).
    save_sharded(&scratch.0, &refs(&tensors), 8000).unwrap();
    let mut ours: Vec<String> =
        std::fs::read_dir(&scratch.0).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    ours.sort();
    let mut theirs: Vec<String> = std::fs::read_dir(fixture("sharded_f16"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        // The checkpoint's files only (reference.safetensors beside them is the model tests' fixture).
        .filter(|n| n.starts_with("model"))
        .collect();
    theirs.sort();
    assert_eq!(ours, theirs);
    for name in &ours {
        let a = std::fs::read(scratch.0.join(name)).unwrap();
        let b = std::fs::read(fixture("sharded_f16").join(name)).unwrap();
        assert!(a == b, "{name} differs from transformers'");
    }
    // Large shards: one file, no index.
    let single = Scratch::new("one-shard");
    save_sharded(&single.0, &refs(&tensors), 1 << 30).unwrap();
    assert!(single.0.join("model.safetensors").is_file());
    assert!(!single.0.join("model.safetensors.index.json").exists());
    assert_eq!(WeightStore::open(&single.0).unwrap().names().len(), tensors.len());
}

#[test]
fn saving_the_same_name_twice_is_refused() {
    let t = Tensor::zeros(&[2], DType::F32, Device::Cpu).unwrap();
    let scratch = Scratch::new("dup");
    let err = save_safetensors(&scratch.0.join("x.safetensors"), &[("a", &t), ("a", &t)]).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(ref m) if m.contains("`a`")), "{err}");
}

#[test]
#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
fn weights_load_onto_cuda_equal_to_cpu() {
    for model in MODELS {
        let (_, store) = open(model);
        for t in expected(model).tensors {
            for dtype in [DType::F32, DType::BF16, DType::F16] {
                let cpu = store.get_as(&t.name, &t.shape, dtype, Device::Cpu).unwrap();
                let gpu = store.get_as(&t.name, &t.shape, dtype, Device::Cuda(0)).unwrap();
                assert_eq!(gpu.device(), Device::Cuda(0));
                assert_eq!(values_f64(&gpu.to_device(Device::Cpu).unwrap()), values_f64(&cpu), "{model} {}", t.name);
            }
        }
    }
}
