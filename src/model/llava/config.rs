//! `LlavaOnevisionConfig`: a LLaVA-OneVision checkpoint's `config.json`, in either of its two formats, told apart by
//! `model_type`:
//!
//! - `"llava_onevision"`: transformers' conversion (`LlavaOnevisionConfig`): the language model in `text_config` (a
//!   Qwen2 config), the tower in `vision_config` (a SigLIP vision config), and `image_token_index`,
//!   `video_token_index`, `vision_feature_layer`, `vision_feature_select_strategy`, `vision_aspect_ratio`,
//!   `image_grid_pinpoints`, `projector_hidden_act`, `multimodal_projector_bias`, with transformers' defaults where
//!   absent. Which LM head is tied follows `text_config.tie_word_embeddings`, as transformers 4.57 decides.
//! - `"llava_qwen"`: LLaVA-NeXT's `LlavaQwenForCausalLM` (UnifiedReward's released checkpoints): the Qwen2 config at
//!   the top level plus `mm_*` keys. The tower is named, not described, by `mm_vision_tower`: either
//!   `google/siglip-so400m-patch14-384`, whose config unireward ships, or a directory (absolute, or relative to the
//!   checkpoint's directory) holding the tower's SigLIP `config.json` (a `siglip_vision_model` config, or a full
//!   `siglip` one whose `vision_config` is used), as `SigLipVisionModel.from_pretrained` would read it. Any other
//!   name is refused. LLaVA-NeXT's SigLIP tower drops the tower's last encoder layer after loading and reads the last
//!   kept layer's output (`hidden_states[-1]`), whatever `mm_vision_select_layer` and `mm_vision_select_feature`
//!   say (siglip_encoder.py ignores both): here that is [`LlavaOnevisionConfig::vision_feature_layer`] = -2 of the
//!   tower's config, so the checkpoint stores one layer fewer than that config has (transformers' conversion writes
//!   the same tower as 26 layers of so400m's 27 with feature layer -1). `mm_spatial_pool_stride` is ignored too:
//!   LLaVA-NeXT's forward pools video features by 2 whatever it says (its `get_2dPool` default), as transformers does.
//!
//! Only what transformers' `LlavaOnevisionForConditionalGeneration` computes is accepted; anything else is refused
//! naming the key and its value: a projector other than `mlp2x_gelu` / `gelu`, a patch merge other than
//! `spatial_unpad`, an aspect ratio other than `anyres_max_N`, video newlines other than `one_token`, pooling other
//! than `bilinear`, `add_faster_video`, the `default` feature strategy (it drops a CLS token SigLIP does not have),
//! several feature layers.
//!
//! Image and video placeholders. The Hugging Face format's prompts hold one `image_token_index` (`video_token_index`)
//! per feature vector, ids inside the vocabulary, as its processor expands them. LLaVA-NeXT's tokenizer writes a
//! single `IMAGE_TOKEN_INDEX` = -200 per image or video (told apart by a separate `modalities` list) and the model
//! expands it. unireward takes the Hugging Face form for both formats: one placeholder per feature vector; for
//! `llava_qwen` the placeholder ids are [`LLAVA_IMAGE_PLACEHOLDER`] (-200, LLaVA-NeXT's) and
//! [`LLAVA_VIDEO_PLACEHOLDER`] (-201, unireward's: the id carries the modality), outside the vocabulary, so they can
//! never be confused with a token of the text.

use std::path::Path;

use serde_json::{Map, Value};

use crate::media::{parse_grid_pinpoints, MAX_TILE_SIDE};
use crate::model::files::{read_text, MAX_JSON_BYTES};
use crate::model::{Qwen2Config, SiglipVisionConfig};
use crate::{Error, Result};

/// The image placeholder of `llava_qwen` checkpoints: LLaVA-NeXT's `IMAGE_TOKEN_INDEX`.
pub const LLAVA_IMAGE_PLACEHOLDER: i64 = -200;
/// The video placeholder of `llava_qwen` checkpoints (LLaVA-NeXT marks videos with -200 too, and a `modalities`
/// list; unireward puts the modality in the id).
pub const LLAVA_VIDEO_PLACEHOLDER: i64 = -201;
/// The vision tower every released LLaVA-OneVision checkpoint names, whose config the SigLIP module ships.
pub use crate::model::siglip::SO400M_PATCH14_384 as SO400M_TOWER;
/// Bound on `anyres_max_N` (released checkpoints use 9) and on `|vision_feature_layer|`.
const MAX_ANYRES_TILES: usize = 1024;
const MAX_FEATURE_LAYER: i64 = 4096;

/// Which `config.json` format a checkpoint has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LlavaConfigFormat {
    /// transformers' `llava_onevision`.
    HuggingFace,
    /// LLaVA-NeXT's `llava_qwen`.
    LlavaNext,
}

/// The vision tower's configuration, as the checkpoint gives it (parsed by the SigLIP module).
#[derive(Clone, Debug, PartialEq)]
pub enum VisionTower {
    /// A SigLIP vision config (`model_type: "siglip_vision_model"`): the checkpoint's `vision_config`, or the
    /// `config.json` of the directory `mm_vision_tower` names.
    Config(Value),
    /// A hub id whose configuration unireward ships ([`SO400M_TOWER`]).
    Known(String),
}

/// A LLaVA-OneVision model's configuration, the same whatever the format it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct LlavaOnevisionConfig {
    pub format: LlavaConfigFormat,
    /// The language model.
    pub text: Qwen2Config,
    pub vision_tower: VisionTower,
    /// Which of the tower's hidden states feeds the projector, Python-style over the embeddings' output and each
    /// layer's (`hidden_states[i]` of the tower as its config describes it; -1 is the last layer's output, never
    /// post-normalised). `llava_qwen`: always -2 (see the module documentation).
    pub vision_feature_layer: i64,
    /// The placeholder ids in input ids (see the module documentation).
    pub image_token_id: i64,
    pub video_token_id: i64,
    /// Candidate `(height, width)` resolutions of an image's tile grid, in pixels.
    pub image_grid_pinpoints: Vec<(usize, usize)>,
    /// `N` of `anyres_max_N`: an image's unpadded grid features are down-sampled (bilinearly) when they exceed
    /// about `N` tiles' worth.
    pub max_anyres_tiles: usize,
    /// Whether the projector's two linear layers have biases.
    pub projector_bias: bool,
}

impl LlavaOnevisionConfig {
    /// Reads and validates `path` (a checkpoint's `config.json`); a tower directory is looked for beside it.
    pub fn from_file(path: &Path) -> Result<LlavaOnevisionConfig> {
        let text = read_text(path, MAX_JSON_BYTES)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        LlavaOnevisionConfig::from_json(&text, dir).map_err(|e| match e {
            Error::Checkpoint(msg) => Error::Checkpoint(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// Parses and validates the text of a `config.json` whose checkpoint directory is `dir` (where a relative
    /// `mm_vision_tower` directory is looked for).
    pub fn from_json(text: &str, dir: &Path) -> Result<LlavaOnevisionConfig> {
        let map: Map<String, Value> =
            serde_json::from_str(text).map_err(|e| Error::Checkpoint(format!("config is not a JSON object: {e}")))?;
        match map.get("model_type").and_then(Value::as_str) {
            Some("llava_onevision") => from_hugging_face(&map),
            Some("llava_qwen") => from_llava_next(&map, dir),
            _ => {
                let got = map.get("model_type").map_or("missing".to_string(), Value::to_string);
                Err(Error::Checkpoint(format!(
                    "config: `model_type` is {got}; a LLaVA-OneVision checkpoint has \"llava_onevision\" \
                     (transformers) or \"llava_qwen\" (LLaVA-NeXT)"
                )))
            }
        }
    }
}

fn from_hugging_face(map: &Map<String, Value>) -> Result<LlavaOnevisionConfig> {
    let text_config = object(map, "text_config")?;
    let text = Qwen2Config::from_object(text_config, "qwen2").map_err(|e| within("text_config", e))?;
    let vision_config = object(map, "vision_config")?;
    match vision_config.get("model_type").and_then(Value::as_str) {
        Some("siglip_vision_model") => {}
        _ => {
            let got = vision_config.get("model_type").map_or(Value::Null, Value::clone);
            return Err(unsupported("vision_config.model_type", &got, "\"siglip_vision_model\""));
        }
    }
    let vision_feature_layer = match get(map, "vision_feature_layer") {
        None => -1,
        Some(v) => v
            .as_i64()
            .filter(|l| l.abs() <= MAX_FEATURE_LAYER)
            .ok_or_else(|| unsupported("vision_feature_layer", v, "one layer index (several are not implemented)"))?,
    };
    // "default" drops the first feature as a CLS token, which SigLIP does not have.
    expect_str(map, "vision_feature_select_strategy", None, "full")?;
    expect_str(map, "projector_hidden_act", None, "gelu")?;
    let projector_bias = match get(map, "multimodal_projector_bias") {
        None => true,
        Some(v) => v.as_bool().ok_or_else(|| unsupported("multimodal_projector_bias", v, "true or false"))?,
    };
    let aspect = get(map, "vision_aspect_ratio").cloned().unwrap_or_else(|| Value::from("anyres_max_9"));
    let tower = VisionTower::Config(Value::Object(vision_config.clone()));
    let config = LlavaOnevisionConfig {
        format: LlavaConfigFormat::HuggingFace,
        image_token_id: token_id(map, "image_token_index", 151646, &text)?,
        video_token_id: token_id(map, "video_token_index", 151647, &text)?,
        image_grid_pinpoints: grid_pinpoints(map, &tower)?,
        max_anyres_tiles: anyres_max("vision_aspect_ratio", &aspect)?,
        text,
        vision_tower: tower,
        vision_feature_layer,
        projector_bias,
    };
    if config.image_token_id == config.video_token_id {
        return Err(Error::Checkpoint(format!(
            "config: `image_token_index` and `video_token_index` are both {}",
            config.image_token_id
        )));
    }
    Ok(config)
}

fn from_llava_next(map: &Map<String, Value>, dir: &Path) -> Result<LlavaOnevisionConfig> {
    let text = Qwen2Config::from_object(map, "llava_qwen")?;
    let tower_name = match get(map, "mm_vision_tower") {
        Some(Value::String(name)) => name,
        Some(other) => return Err(unsupported("mm_vision_tower", other, "a hub id or a directory")),
        None => return Err(Error::Checkpoint("config: `mm_vision_tower` is missing".into())),
    };
    let vision_tower = resolve_tower(tower_name, dir)?;
    // LLaVA-NeXT's defaults where absent: each is refused below unless it is what transformers computes.
    expect_str(map, "mm_projector_type", Some("linear"), "mlp2x_gelu")?;
    expect_str(map, "mm_patch_merge_type", Some("flat"), "spatial_unpad")?;
    expect_str(map, "mm_newline_position", Some("one_token"), "one_token")?;
    // get_2dPool has no default; transformers' conversion pools bilinearly.
    expect_str(map, "mm_spatial_pool_mode", None, "bilinear")?;
    if let Some(v) = get(map, "add_faster_video").filter(|v| v.as_bool() != Some(false)) {
        return Err(unsupported("add_faster_video", v, "false"));
    }
    let aspect = get(map, "image_aspect_ratio").cloned().unwrap_or_else(|| Value::from("square"));
    Ok(LlavaOnevisionConfig {
        format: LlavaConfigFormat::LlavaNext,
        image_grid_pinpoints: grid_pinpoints(map, &vision_tower)?,
        max_anyres_tiles: anyres_max("image_aspect_ratio", &aspect)?,
        text,
        vision_tower,
        vision_feature_layer: -2,
        image_token_id: LLAVA_IMAGE_PLACEHOLDER,
        video_token_id: LLAVA_VIDEO_PLACEHOLDER,
        projector_bias: true,
    })
}

/// `mm_vision_tower`: the hub id whose config is shipped, or a directory holding the tower's `config.json`.
fn resolve_tower(name: &str, dir: &Path) -> Result<VisionTower> {
    if name == SO400M_TOWER {
        return Ok(VisionTower::Known(name.to_string()));
    }
    let tower_dir = dir.join(name);
    if !tower_dir.is_dir() {
        return Err(Error::Checkpoint(format!(
            "config: unknown vision tower `mm_vision_tower` = \"{name}\": unireward ships the configuration of \
             \"{SO400M_TOWER}\" only; for another SigLIP tower, name a directory (absolute, or relative to {}) \
             holding its config.json",
            dir.display()
        )));
    }
    let path = tower_dir.join("config.json");
    let text = read_text(&path, MAX_JSON_BYTES)?;
    let fail = |msg: String| Error::Checkpoint(format!("{} (the vision tower's config): {msg}", path.display()));
    let value: Value = serde_json::from_str(&text).map_err(|e| fail(format!("not JSON: {e}")))?;
    let vision = match value.get("model_type").and_then(Value::as_str) {
        Some("siglip_vision_model") => value,
        Some("siglip") => match value.get("vision_config") {
            Some(v @ Value::Object(_)) => v.clone(),
            _ => return Err(fail("a \"siglip\" config without a `vision_config` object".into())),
        },
        _ => {
            let got = value.get("model_type").map_or("missing".to_string(), Value::to_string);
            return Err(fail(format!(
                "`model_type` is {got}; only SigLIP towers (\"siglip_vision_model\" or \"siglip\") are implemented"
            )));
        }
    };
    Ok(VisionTower::Config(vision))
}

/// The tower's input side: the tile of `"(AxB)"` pinpoint strings.
fn tower_image_size(tower: &VisionTower) -> Result<usize> {
    match tower {
        VisionTower::Known(name) => Ok(SiglipVisionConfig::for_tower_name(name)?.image_size),
        VisionTower::Config(config) => config
            .get("image_size")
            .and_then(Value::as_u64)
            .and_then(|s| usize::try_from(s).ok())
            .filter(|s| (1..=MAX_TILE_SIDE).contains(s))
            .ok_or_else(|| {
                let got = config.get("image_size").map_or(Value::Null, Value::clone);
                unsupported("vision tower's image_size", &got, &format!("a whole number from 1 to {MAX_TILE_SIDE}"))
            }),
    }
}

fn grid_pinpoints(map: &Map<String, Value>, tower: &VisionTower) -> Result<Vec<(usize, usize)>> {
    let Some(value) = get(map, "image_grid_pinpoints") else {
        return Err(Error::Checkpoint("config: `image_grid_pinpoints` is missing".into()));
    };
    // Only the range-string form is in tiles; the tower's side is read only for it.
    let tile = if value.is_string() { tower_image_size(tower)? } else { 1 };
    parse_grid_pinpoints(value, tile)
}

/// `N` of `"anyres_max_N"`, the only aspect-ratio mode implemented.
fn anyres_max(key: &str, value: &Value) -> Result<usize> {
    value
        .as_str()
        .and_then(|s| s.strip_prefix("anyres_max_"))
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| (1..=MAX_ANYRES_TILES).contains(n))
        .ok_or_else(|| unsupported(key, value, &format!("\"anyres_max_N\" with N from 1 to {MAX_ANYRES_TILES}")))
}

/// A placeholder id (transformers' `default` when absent): a row of the embedding, as transformers looks it up
/// before overwriting it.
fn token_id(map: &Map<String, Value>, key: &str, default: i64, text: &Qwen2Config) -> Result<i64> {
    let value = get(map, key).cloned().unwrap_or_else(|| Value::from(default));
    value
        .as_i64()
        .filter(|&id| id >= 0 && (id as u64) < text.vocab_size as u64)
        .ok_or_else(|| unsupported(key, &value, &format!("a token id below vocab_size = {}", text.vocab_size)))
}

/// `null` counts as absent, as in Qwen2's config.
fn get<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).filter(|v| !v.is_null())
}

fn object<'a>(map: &'a Map<String, Value>, key: &str) -> Result<&'a Map<String, Value>> {
    match get(map, key) {
        Some(Value::Object(inner)) => Ok(inner),
        Some(other) => Err(unsupported(key, other, "an object")),
        None => Err(Error::Checkpoint(format!("config: `{key}` is missing"))),
    }
}

/// A string key that must equal `want`; when absent it is `absent` (LLaVA-NeXT's default), or accepted if `None`.
fn expect_str(map: &Map<String, Value>, key: &str, absent: Option<&str>, want: &str) -> Result<()> {
    let expected = format!("\"{want}\"");
    match (get(map, key), absent) {
        (Some(v), _) if v.as_str() != Some(want) => Err(unsupported(key, v, &expected)),
        (None, Some(default)) if default != want => Err(Error::Checkpoint(format!(
            "config: `{key}` is missing, which LLaVA-NeXT reads as \"{default}\" (this library implements only \
             {expected})"
        ))),
        _ => Ok(()),
    }
}

fn unsupported(key: &str, value: &Value, expected: &str) -> Error {
    Error::Checkpoint(format!("config: unsupported `{key}` = {value} (this library implements only {expected})"))
}

/// An error of a nested config, with the key it sits under.
fn within(key: &str, err: Error) -> Error {
    match err {
        Error::Checkpoint(msg) => {
            let inner = msg.strip_prefix("config: ").unwrap_or(&msg);
            Error::Checkpoint(format!("config: in `{key}`: {inner}"))
        }
        other => other,
    }
}
