//! `Qwen2Config`: the architecture of a Qwen2 decoder, read from a Hugging Face `config.json`.
//!
//! Both layouts transformers writes are accepted: 4.x (`rope_theta`, `rope_scaling: null`, `torch_dtype`) and 5.x
//! (`rope_parameters: {rope_type: "default", rope_theta}`, `dtype`, `layer_types`). Keys that would change the
//! computation in a way this library does not implement (rope scaling, sliding windows, another activation,
//! dropout, quantisation) are refused with an error naming the key and its value; keys that change nothing here
//! (`initializer_range`, `use_cache`, ...) are ignored. Sizes have no defaults: a config without `hidden_size` is an
//! error, not a 4096-wide model.

use std::path::Path;

use serde_json::{Map, Value};

use crate::{DType, Error, Result};

/// The shape and numerics of a Qwen2 decoder.
#[derive(Clone, Debug, PartialEq)]
pub struct Qwen2Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Grouped-query attention: each KV head serves `num_attention_heads / num_key_value_heads` query heads.
    pub num_key_value_heads: usize,
    pub max_position_embeddings: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    /// The LM head reuses `model.embed_tokens.weight` (no `lm_head.weight` in the checkpoint).
    pub tie_word_embeddings: bool,
    /// The dtype the checkpoint was saved in (`torch_dtype`, or `dtype` in transformers 5); f32 when absent.
    pub torch_dtype: DType,
    /// End-of-sequence token ids (`eos_token_id`: one id, a list, or none).
    pub eos_token_ids: Vec<u32>,
}

impl Qwen2Config {
    /// Reads and validates `path` (a `config.json`).
    pub fn from_file(path: &Path) -> Result<Qwen2Config> {
        let text = super::files::read_text(path, super::files::MAX_JSON_BYTES)?;
        Qwen2Config::from_json(&text).map_err(|e| match e {
            Error::Checkpoint(msg) => Error::Checkpoint(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// Parses and validates the text of a `config.json`.
    pub fn from_json(text: &str) -> Result<Qwen2Config> {
        let map: Map<String, Value> =
            serde_json::from_str(text).map_err(|e| Error::Checkpoint(format!("config is not a JSON object: {e}")))?;
        Qwen2Config::from_object(&map, "qwen2")
    }

    /// Parses and validates a Qwen2 configuration held in a JSON object whose `model_type` must be `model_type`: a
    /// multimodal config's part (LLaVA-OneVision's `text_config`, or the top level of LLaVA-NeXT's `llava_qwen`,
    /// whose other keys are ignored here).
    pub fn from_object(map: &Map<String, Value>, model_type: &str) -> Result<Qwen2Config> {
        let keys = Keys(map);

        keys.expect_str("model_type", model_type, true)?;
        keys.expect_str("hidden_act", "silu", false)?;
        keys.refuse_present("rope_scaling")?;
        keys.refuse_present("quantization_config")?;
        if keys.bool_or("use_sliding_window", false)? {
            return Err(unsupported("use_sliding_window", &Value::Bool(true), "false"));
        }
        if keys.number("attention_dropout")?.is_some_and(|p| p != 0.0) {
            return Err(unsupported("attention_dropout", &map["attention_dropout"], "0.0 (no dropout)"));
        }

        let num_attention_heads = keys.size("num_attention_heads")?;
        let num_hidden_layers = keys.size("num_hidden_layers")?;
        let config = Qwen2Config {
            vocab_size: keys.size("vocab_size")?,
            hidden_size: keys.size("hidden_size")?,
            intermediate_size: keys.size("intermediate_size")?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads: keys.size_or("num_key_value_heads", num_attention_heads)?,
            max_position_embeddings: keys.size_or("max_position_embeddings", 32768)?,
            rope_theta: rope_theta(&keys)?,
            rms_norm_eps: keys.number("rms_norm_eps")?.unwrap_or(1e-6),
            tie_word_embeddings: keys.bool_or("tie_word_embeddings", false)?,
            torch_dtype: torch_dtype(&keys)?,
            eos_token_ids: eos_token_ids(&keys)?,
        };
        config.validate()?;
        check_layer_types(&keys, num_hidden_layers)?;
        if let Some(head_dim) = keys.get("head_dim") {
            if head_dim.as_u64() != Some(config.head_dim() as u64) {
                let expected = format!("hidden_size / num_attention_heads = {}", config.head_dim());
                return Err(unsupported("head_dim", head_dim, &expected));
            }
        }
        Ok(config)
    }

    /// The width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Checks that the sizes fit together (heads divide the width, KV heads divide the heads, ...).
    pub fn validate(&self) -> Result<()> {
        let fail = |msg: String| Err(Error::Checkpoint(format!("config: {msg}")));
        // Each size with its upper bound, far above any released model (Qwen2-72B: vocab 152,064, hidden 8,192, 80
        // layers, 64 heads, intermediate 29,568): a corrupt or hostile config.json is an error before anything is
        // allocated from it.
        let sizes = [
            ("vocab_size", self.vocab_size, 1 << 24), // token ids fit i32 with room to spare
            ("hidden_size", self.hidden_size, 1 << 17),
            ("intermediate_size", self.intermediate_size, 1 << 20),
            ("num_hidden_layers", self.num_hidden_layers, 4096),
            ("num_attention_heads", self.num_attention_heads, 4096),
            ("num_key_value_heads", self.num_key_value_heads, 4096),
            ("max_position_embeddings", self.max_position_embeddings, 1 << 24),
        ];
        check_sizes("config", &sizes)?;
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return fail(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return fail(format!(
                "num_attention_heads {} is not divisible by num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return fail(format!("head dimension {} is odd: rotary embeddings rotate pairs", self.head_dim()));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return fail(format!("rope_theta {} must be positive and finite", self.rope_theta));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return fail(format!("rms_norm_eps {} must be positive and finite", self.rms_norm_eps));
        }
        Ok(())
    }
}

pub(crate) fn unsupported(key: &str, value: &Value, expected: &str) -> Error {
    Error::Checkpoint(format!("config: unsupported `{key}` = {value} (this library implements only {expected})"))
}

/// `rope_theta` (transformers 4) or `rope_parameters` with the default rope type (transformers 5); 10000 if neither.
fn rope_theta(keys: &Keys<'_>) -> Result<f64> {
    let top = keys.number("rope_theta")?;
    let Some(params) = keys.get("rope_parameters") else { return Ok(top.unwrap_or(10000.0)) };
    let Some(params) = params.as_object() else {
        return Err(unsupported("rope_parameters", params, "an object {rope_type: \"default\", rope_theta}"));
    };
    let inner = Keys(params);
    if let Some(kind) = inner.get("rope_type").filter(|kind| kind.as_str() != Some("default")) {
        return Err(unsupported("rope_parameters.rope_type", kind, "\"default\""));
    }
    if let Some(key) = params.keys().find(|k| !matches!(k.as_str(), "rope_type" | "rope_theta")) {
        return Err(unsupported(&format!("rope_parameters.{key}"), &params[key], "the default rope (no scaling)"));
    }
    let theta = inner.number("rope_theta")?.or(top).unwrap_or(10000.0);
    match top {
        Some(t) if t != theta => Err(Error::Checkpoint(format!(
            "config: `rope_theta` = {t} disagrees with `rope_parameters.rope_theta` = {theta}"
        ))),
        _ => Ok(theta),
    }
}

fn torch_dtype(keys: &Keys<'_>) -> Result<DType> {
    let key = if keys.get("torch_dtype").is_some() { "torch_dtype" } else { "dtype" };
    let Some(value) = keys.get(key) else { return Ok(DType::F32) };
    match value.as_str() {
        Some("float32") => Ok(DType::F32),
        Some("bfloat16") => Ok(DType::BF16),
        Some("float16") => Ok(DType::F16),
        _ => Err(unsupported(key, value, "\"float32\", \"bfloat16\" or \"float16\"")),
    }
}

fn eos_token_ids(keys: &Keys<'_>) -> Result<Vec<u32>> {
    let Some(value) = keys.get("eos_token_id") else { return Ok(Vec::new()) };
    let id = |v: &Value| v.as_u64().and_then(|id| u32::try_from(id).ok());
    let ids = match value {
        Value::Array(items) => items.iter().map(id).collect::<Option<Vec<u32>>>(),
        single => id(single).map(|id| vec![id]),
    };
    ids.ok_or_else(|| {
        Error::Checkpoint(format!("config: `eos_token_id` = {value} is not a token id or a list of them"))
    })
}

/// transformers 5 lists each layer's attention kind; only full attention is implemented.
fn check_layer_types(keys: &Keys<'_>, layers: usize) -> Result<()> {
    let Some(value) = keys.get("layer_types") else { return Ok(()) };
    let all_full = value
        .as_array()
        .is_some_and(|kinds| kinds.len() == layers && kinds.iter().all(|k| k.as_str() == Some("full_attention")));
    if !all_full {
        let expected = format!("{layers} entries of \"full_attention\"");
        return Err(unsupported("layer_types", value, &expected));
    }
    Ok(())
}

/// Typed reads from the JSON object, with errors that name the key and the value. `null` counts as absent.
pub(crate) struct Keys<'a>(pub(crate) &'a Map<String, Value>);

impl Keys<'_> {
    pub(crate) fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    pub(crate) fn bad(&self, key: &str, what: &str) -> Error {
        let value = self.get(key).map_or("null".to_string(), Value::to_string);
        Error::Checkpoint(format!("config: `{key}` = {value} is not {what}"))
    }

    /// A required positive integer.
    pub(crate) fn size(&self, key: &str) -> Result<usize> {
        let Some(value) = self.get(key) else {
            return Err(Error::Checkpoint(format!("config: `{key}` is missing")));
        };
        match value.as_u64().and_then(|v| usize::try_from(v).ok()) {
            Some(v) if v > 0 => Ok(v),
            _ => Err(self.bad(key, "a positive integer")),
        }
    }

    pub(crate) fn size_or(&self, key: &str, default: usize) -> Result<usize> {
        if self.get(key).is_none() {
            return Ok(default);
        }
        self.size(key)
    }

    pub(crate) fn number(&self, key: &str) -> Result<Option<f64>> {
        self.get(key).map(|v| v.as_f64().ok_or_else(|| self.bad(key, "a number"))).transpose()
    }

    pub(crate) fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        self.get(key).map_or(Ok(default), |v| v.as_bool().ok_or_else(|| self.bad(key, "true or false")))
    }

    /// A string key that must equal `want`; it may be absent unless `required`.
    pub(crate) fn expect_str(&self, key: &str, want: &str, required: bool) -> Result<()> {
        match self.get(key) {
            None if required => Err(Error::Checkpoint(format!("config: `{key}` is missing"))),
            None => Ok(()),
            Some(v) if v.as_str() == Some(want) => Ok(()),
            Some(v) => Err(unsupported(key, v, &format!("\"{want}\""))),
        }
    }

    pub(crate) fn refuse_present(&self, key: &str) -> Result<()> {
        match self.get(key) {
            Some(v) => Err(unsupported(key, v, "its absence (null)")),
            None => Ok(()),
        }
    }
}

/// Each `(key, size, max)` of a config: an error naming the key when the size is 0 or above `max` (bounds far above
/// any released model, so that a corrupt or hostile config is refused before anything is allocated from it).
pub(crate) fn check_sizes(context: &str, sizes: &[(&str, usize, usize)]) -> Result<()> {
    for &(key, size, max) in sizes {
        if size == 0 {
            return Err(Error::Checkpoint(format!("{context}: `{key}` is 0")));
        }
        if size > max {
            return Err(Error::Checkpoint(format!(
                "{context}: `{key}` is {size}, more than this library accepts ({max})"
            )));
        }
    }
    Ok(())
}
