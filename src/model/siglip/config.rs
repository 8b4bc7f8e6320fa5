//! `SiglipVisionConfig`: the architecture of a SigLIP vision tower, read from a Hugging Face `SiglipVisionConfig`
//! dictionary (the `vision_config` of a llava_onevision `config.json`, or a SigLIP model's own `config.json`), with
//! transformers' defaults for missing keys, or named by hub id for checkpoints that do not carry it (the original
//! LLaVA-NeXT layout names its tower in `mm_vision_tower`).

use serde_json::Value;

use crate::model::config::{check_sizes, unsupported, Keys};
use crate::ops::gelu::GeluApproximation;
use crate::{Error, Result};

/// The hub id of the one tower [`SiglipVisionConfig::for_tower_name`] knows (LLaVA-OneVision's).
pub const SO400M_PATCH14_384: &str = "google/siglip-so400m-patch14-384";

/// The shape and numerics of a SigLIP vision tower.
#[derive(Clone, Debug, PartialEq)]
pub struct SiglipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    /// Height and width of the (square) input.
    pub image_size: usize,
    /// Height and width of a patch (the patch embedding's kernel and stride).
    pub patch_size: usize,
    pub layer_norm_eps: f64,
    /// The MLP's activation (`gelu_pytorch_tanh` in every released SigLIP).
    pub hidden_act: String,
}

impl Default for SiglipVisionConfig {
    /// transformers' `SiglipVisionConfig()` defaults (google/siglip-base-patch16-224's vision tower).
    fn default() -> Self {
        SiglipVisionConfig {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 16,
            layer_norm_eps: 1e-6,
            hidden_act: "gelu_pytorch_tanh".into(),
        }
    }
}

impl SiglipVisionConfig {
    /// The vision config of google/siglip-so400m-patch14-384, the tower of LLaVA-OneVision and UnifiedReward: 27
    /// layers of width 1152 over 27×27 patches of 14 pixels.
    pub fn so400m_patch14_384() -> SiglipVisionConfig {
        SiglipVisionConfig {
            hidden_size: 1152,
            intermediate_size: 4304,
            num_hidden_layers: 27,
            num_attention_heads: 16,
            num_channels: 3,
            image_size: 384,
            patch_size: 14,
            layer_norm_eps: 1e-6,
            hidden_act: "gelu_pytorch_tanh".into(),
        }
    }

    /// The config of a tower named by hub id (`mm_vision_tower`); an unknown name is an error naming it.
    pub fn for_tower_name(name: &str) -> Result<SiglipVisionConfig> {
        match name {
            SO400M_PATCH14_384 => Ok(SiglipVisionConfig::so400m_patch14_384()),
            _ => Err(Error::Checkpoint(format!(
                "unknown vision tower `{name}`: its config is not in the checkpoint and this library knows only \
                 {SO400M_PATCH14_384}"
            ))),
        }
    }

    /// Parses and validates a `SiglipVisionConfig` dictionary; missing keys take transformers' defaults.
    pub fn from_value(value: &Value) -> Result<SiglipVisionConfig> {
        let map = value
            .as_object()
            .ok_or_else(|| Error::Checkpoint(format!("vision config: expected a JSON object, got {value}")))?;
        let keys = Keys(map);
        if let Some(kind) = keys.get("model_type").and_then(Value::as_str) {
            if !matches!(kind, "siglip_vision_model" | "siglip") {
                return Err(unsupported("model_type", &map["model_type"], "\"siglip_vision_model\" or \"siglip\""));
            }
        }
        if keys.number("attention_dropout")?.is_some_and(|p| p != 0.0) {
            return Err(unsupported("attention_dropout", &map["attention_dropout"], "0.0 (no dropout)"));
        }
        let d = SiglipVisionConfig::default();
        let hidden_act = match keys.get("hidden_act") {
            None => d.hidden_act,
            Some(Value::String(name)) => name.clone(),
            Some(other) => return Err(unsupported("hidden_act", other, "an activation name")),
        };
        let config = SiglipVisionConfig {
            hidden_size: keys.size_or("hidden_size", d.hidden_size)?,
            intermediate_size: keys.size_or("intermediate_size", d.intermediate_size)?,
            num_hidden_layers: keys.size_or("num_hidden_layers", d.num_hidden_layers)?,
            num_attention_heads: keys.size_or("num_attention_heads", d.num_attention_heads)?,
            num_channels: keys.size_or("num_channels", d.num_channels)?,
            image_size: keys.size_or("image_size", d.image_size)?,
            patch_size: keys.size_or("patch_size", d.patch_size)?,
            layer_norm_eps: keys.number("layer_norm_eps")?.unwrap_or(d.layer_norm_eps),
            hidden_act,
        };
        config.validate()?;
        Ok(config)
    }

    /// The width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Patches along one side of the image.
    pub fn patches_per_side(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Patches (tokens) per image: the rows of the position embedding.
    pub fn num_patches(&self) -> usize {
        self.patches_per_side() * self.patches_per_side()
    }

    /// Values per patch: the patch embedding's input width `C·p·p`.
    pub fn patch_dim(&self) -> usize {
        self.num_channels * self.patch_size * self.patch_size
    }

    /// The MLP's GELU.
    pub fn gelu(&self) -> Result<GeluApproximation> {
        GeluApproximation::from_hidden_act(&self.hidden_act)
    }

    /// Checks that the sizes are positive, bounded and fit together.
    pub fn validate(&self) -> Result<()> {
        let fail = |msg: String| Err(Error::Checkpoint(format!("vision config: {msg}")));
        // Upper bounds far above any released tower (so400m: width 1152, 27 layers, 384 pixels), so that a corrupt
        // config is an error before anything is allocated from it.
        let sizes = [
            ("hidden_size", self.hidden_size, 1 << 16),
            ("intermediate_size", self.intermediate_size, 1 << 18),
            ("num_hidden_layers", self.num_hidden_layers, 1024),
            ("num_attention_heads", self.num_attention_heads, 1024),
            ("num_channels", self.num_channels, 16),
            ("image_size", self.image_size, 1 << 13),
            ("patch_size", self.patch_size, 1 << 10),
        ];
        check_sizes("vision config", &sizes)?;
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return fail(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.head_dim() > 128 {
            return fail(format!("head dimension {} is above the attention kernels' 128", self.head_dim()));
        }
        if self.patch_size > self.image_size {
            return fail(format!("patch_size {} is larger than image_size {}", self.patch_size, self.image_size));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps >= 0.0) {
            return fail(format!("layer_norm_eps {} must be non-negative and finite", self.layer_norm_eps));
        }
        self.gelu().map_err(|e| Error::Checkpoint(format!("vision config: `hidden_act`: {e}")))?;
        Ok(())
    }
}
