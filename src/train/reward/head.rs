//! The scalar reward head `score.weight` `[1, H]` (the name and shape transformers' `Qwen2ForSequenceClassification`
//! with `num_labels = 1` uses, no bias): loaded from a checkpoint that has it, otherwise drawn from a seed, and the
//! `config.json` a reward checkpoint gets so that transformers loads it as that class.

use std::path::Path;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use crate::model::files::{read_text, MAX_JSON_BYTES};
use crate::model::WeightStore;
use crate::runtime::{DType, Device, Tensor};
use crate::{Error, Result};

/// The head's checkpoint name.
pub const SCORE_WEIGHT: &str = "score.weight";

/// The head of `dir`'s checkpoint when it has `score.weight` (checked to be `[1, hidden]`), else `None`.
pub fn load_score(dir: &Path, hidden: usize, device: Device) -> Result<Option<Tensor>> {
    let store = WeightStore::open(dir)?;
    if store.shape(SCORE_WEIGHT).is_none() {
        return Ok(None);
    }
    let score = store.get_as(SCORE_WEIGHT, &[1, hidden], DType::F32, device)?;
    if score.to_vec::<f32>()?.iter().any(|v| !v.is_finite()) {
        return Err(Error::Checkpoint(format!("`{SCORE_WEIGHT}` of {} is not finite", dir.display())));
    }
    Ok(Some(score))
}

/// A fresh head: normal(0, `std`) values (transformers initialises `score` with `initializer_range`), drawn with
/// ChaCha8 keyed by the seed's 8 little-endian bytes, then the bytes of `"score"`, then zeros (a key of its own: the
/// batch sampler's generator is keyed by the seed and zeros), through Box–Muller (one value per pair of draws), so
/// the same seed gives the same head on every platform.
pub fn init_score(hidden: usize, std: f64, seed: u64, device: Device) -> Result<Tensor> {
    if !(std.is_finite() && std >= 0.0) {
        return Err(Error::InvalidArgument(format!("the head's initial std must be finite and >= 0, got {std}")));
    }
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..13].copy_from_slice(b"score");
    let mut rng = ChaCha8Rng::from_seed(key);
    // Uniform in (0, 1]: 53 random bits, shifted off zero so that the logarithm is finite.
    let mut uniform = || ((rng.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    let values: Vec<f32> = (0..hidden)
        .map(|_| {
            let (u, v) = (uniform(), uniform());
            (std * (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
        })
        .collect();
    Tensor::from_f32(&values, &[1, hidden], DType::F32, device)
}

/// The source's `config.json` as a one-reward sequence classifier: `architectures` Qwen2ForSequenceClassification,
/// one label, and `pad_token_id` (which transformers needs to find each row's last token in a batch) set to
/// `pad_id` when the source has none.
pub fn reward_config(source: &Path, pad_id: u32) -> Result<String> {
    let path = source.join("config.json");
    let mut config: Value = serde_json::from_str(&read_text(&path, MAX_JSON_BYTES)?)
        .map_err(|e| Error::Checkpoint(format!("{}: {e}", path.display())))?;
    let Some(map) = config.as_object_mut() else {
        return Err(Error::Checkpoint(format!("{} is not a JSON object", path.display())));
    };
    map.insert("architectures".into(), json!(["Qwen2ForSequenceClassification"]));
    map.insert("id2label".into(), json!({"0": "LABEL_0"}));
    map.insert("label2id".into(), json!({"LABEL_0": 0}));
    if map.get("pad_token_id").is_none_or(Value::is_null) {
        map.insert("pad_token_id".into(), json!(pad_id));
    }
    serde_json::to_string_pretty(&config).map_err(|e| Error::Checkpoint(e.to_string()))
}
