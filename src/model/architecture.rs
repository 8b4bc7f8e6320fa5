//! Which model a checkpoint holds, from its `config.json`'s `model_type`: what a caller that loads "a checkpoint"
//! (the C ABI's `ur_model_load`, `unireward generate`) needs to pick the loader.

use std::path::Path;

use serde_json::Value;

use crate::model::files::{read_text, MAX_JSON_BYTES};
use crate::{Error, Result};

/// The model families a checkpoint directory may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// A Qwen2 decoder (`model_type: "qwen2"`).
    Qwen2,
    /// LLaVA-OneVision in either layout (`"llava_onevision"`, or LLaVA-NeXT's `"llava_qwen"`).
    LlavaOnevision,
}

impl Architecture {
    /// Reads `dir`'s `config.json`. A `model_type` other than the LLaVA ones is taken as Qwen2, whose loader then
    /// names what it found.
    pub fn of_checkpoint(dir: &Path) -> Result<Architecture> {
        let path = dir.join("config.json");
        let text = read_text(&path, MAX_JSON_BYTES)?;
        let config: Value = serde_json::from_str(&text)
            .map_err(|e| Error::Checkpoint(format!("{}: not valid JSON: {e}", path.display())))?;
        Ok(match config.get("model_type").and_then(Value::as_str) {
            Some("llava_onevision" | "llava_qwen") => Architecture::LlavaOnevision,
            _ => Architecture::Qwen2,
        })
    }
}
