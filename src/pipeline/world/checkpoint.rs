//! The demo's models as checkpoints made from nothing: a word-level tokenizer over the words the demo says, and a
//! tiny LLaVA-OneVision checkpoint in transformers' layout (config, preprocessor config, tokenizer, a short chat
//! template, freshly initialised weights) that every part of the library — the judge, the trainers, the filter —
//! loads like a downloaded one.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{json, Value};
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer, SplitDelimiterBehavior};

use crate::judge::tokenizer::DEFAULT_SYSTEM_PROMPT;
use crate::judge::{Mode, Task, TaskTemplate, Variant, CHECKPOINT_TEMPLATES};
use crate::model::init::initial_parameters;
use crate::model::llava::{LlavaLayout, LlavaOnevisionConfig, VisionTower};
use crate::model::{qwen2_weight_names_under, save_safetensors, siglip_weight_names, SiglipVisionConfig};
use crate::{Error, Result};

/// The special tokens, first in the vocabulary: padding and unknown words, Qwen2's chat markers and end of text
/// (the stop tokens), and the image and video placeholders.
pub const SPECIAL_TOKENS: [&str; 7] =
    ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<image>", "<video>"];

/// Qwen2's chat format, short: a default system turn when the conversation has none (as Qwen2's template and the
/// trainers, which put LLaVA-NeXT's system message first, both do — a judge must be asked as it was trained), each
/// message as `<|im_start|>role\ncontent<|im_end|>\n`, then the assistant's header when asked for.
pub const CHAT_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// What a word is: a run of word characters, a run of punctuation, or a line break (kept: the chat format's turns
/// end in one, and the trainers find the assistant's turns by it); other white space separates words.
const WORD: &str = r"\w+|[^\w\s]+|\n";

/// The pre-tokenizer splitting text into [`WORD`]s.
fn splitter() -> Result<Split> {
    Split::new(SplitPattern::Regex(WORD.into()), SplitDelimiterBehavior::Removed, true)
        .map_err(|e| Error::InvalidArgument(format!("the word pattern: {e}")))
}

/// The words of `text` as `splitter` (the tokenizer's, built once: it compiles a regex) splits them.
fn words(splitter: &Split, text: &str) -> Result<Vec<String>> {
    let mut split = PreTokenizedString::from(text);
    splitter.pre_tokenize(&mut split).map_err(|e| Error::InvalidArgument(format!("splitting `{text}`: {e}")))?;
    Ok(split
        .get_splits(OffsetReferential::Original, OffsetType::Byte)
        .into_iter()
        .map(|(w, ..)| w.to_string())
        .collect())
}

/// `tokenizer.json` of a word-level tokenizer: [`SPECIAL_TOKENS`], then every word of `corpus`, of
/// [`CHAT_TEMPLATE`]'s roles, default system message and the line break in sorted order; an unknown word reads as `<unk>`.
pub fn word_level_tokenizer<'a>(corpus: impl IntoIterator<Item = &'a str>) -> Result<String> {
    let (splitter, mut vocabulary) = (splitter()?, BTreeSet::new());
    for text in corpus.into_iter().chain(["system user assistant\n", DEFAULT_SYSTEM_PROMPT]) {
        vocabulary.extend(words(&splitter, text)?);
    }
    let tokens: Vec<&str> = SPECIAL_TOKENS.into_iter().chain(vocabulary.iter().map(String::as_str)).collect();
    let vocab: serde_json::Map<String, Value> =
        tokens.iter().enumerate().map(|(id, token)| (token.to_string(), json!(id))).collect();
    let added: Vec<Value> = SPECIAL_TOKENS
        .iter()
        .enumerate()
        .map(|(id, content)| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": true})
        })
        .collect();
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added, "normalizer": null,
        "pre_tokenizer": serde_json::to_value(splitter).expect("a pre-tokenizer serialises"),
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    });
    Ok(serde_json::to_string_pretty(&tokenizer).expect("a JSON value serialises"))
}

/// The sizes of a tiny LLaVA-OneVision model.
#[derive(Clone, Debug, PartialEq)]
pub struct TinyLlava {
    /// The language model's width, layers, attention heads (and key/value heads) and MLP width.
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub intermediate: usize,
    /// The vision tower's width, layers, heads and MLP width.
    pub vision_hidden: usize,
    pub vision_layers: usize,
    pub vision_heads: usize,
    pub vision_intermediate: usize,
    /// The tower's square input side and patch side, in pixels.
    pub image_size: usize,
    pub patch_size: usize,
    pub max_positions: usize,
}

impl Default for TinyLlava {
    /// A model the demo trains in minutes on two cores: 48-wide, 2 + 2 layers, 24-pixel tiles of 16 patches.
    fn default() -> Self {
        TinyLlava {
            hidden: 48,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            intermediate: 96,
            vision_hidden: 32,
            vision_layers: 2,
            vision_heads: 2,
            vision_intermediate: 64,
            image_size: 48,
            patch_size: 16,
            max_positions: 1024,
        }
    }
}

impl TinyLlava {
    /// transformers' `config.json` for these sizes over a vocabulary of `vocab_size` with the placeholders at
    /// `image_token_id` / `video_token_id`: the base image only (`anyres_max_1` over a single pinpoint), so an image
    /// is one tile plus its newlines.
    fn config(&self, vocab_size: usize, image_token_id: u32, video_token_id: u32) -> Value {
        json!({
            "architectures": ["LlavaOnevisionForConditionalGeneration"],
            "model_type": "llava_onevision",
            "image_token_index": image_token_id,
            "video_token_index": video_token_id,
            "image_grid_pinpoints": [[self.image_size, self.image_size]],
            "vision_aspect_ratio": "anyres_max_1",
            "vision_feature_layer": -1,
            "vision_feature_select_strategy": "full",
            "multimodal_projector_bias": true,
            "projector_hidden_act": "gelu",
            "use_image_newline_parameter": true,
            "tie_word_embeddings": false,
            "text_config": {
                "model_type": "qwen2", "hidden_act": "silu", "hidden_size": self.hidden,
                "intermediate_size": self.intermediate, "num_hidden_layers": self.layers,
                "num_attention_heads": self.heads, "num_key_value_heads": self.kv_heads,
                "max_position_embeddings": self.max_positions, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
                "vocab_size": vocab_size, "tie_word_embeddings": false, "use_sliding_window": false,
                "initializer_range": 0.02, "attention_dropout": 0.0,
            },
            "vision_config": {
                "model_type": "siglip_vision_model", "hidden_act": "gelu_pytorch_tanh",
                "hidden_size": self.vision_hidden, "intermediate_size": self.vision_intermediate,
                "num_hidden_layers": self.vision_layers, "num_attention_heads": self.vision_heads,
                "image_size": self.image_size, "patch_size": self.patch_size, "num_channels": 3,
                "layer_norm_eps": 1e-6, "attention_dropout": 0.0, "vision_use_head": false,
            },
        })
    }

    /// `LlavaOnevisionImageProcessor`'s config: a plain resize to the tile, SigLIP's normalisation.
    fn preprocessor_config(&self) -> Value {
        json!({
            "image_processor_type": "LlavaOnevisionImageProcessor",
            "do_convert_rgb": true, "do_resize": true, "do_rescale": true, "do_normalize": true, "do_pad": true,
            "image_grid_pinpoints": [[self.image_size, self.image_size]],
            "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
            "resample": 3, "rescale_factor": 1.0 / 255.0,
            "size": {"height": self.image_size, "width": self.image_size},
        })
    }

    /// Writes a checkpoint of these sizes with `tokenizer_json` (from [`word_level_tokenizer`]), the demo's task
    /// templates (`judge_templates/`, which the judge reads) and weights initialised from `seed` into `dir`
    /// (created; existing files of these names are replaced).
    pub fn write(&self, dir: &Path, tokenizer_json: &str, seed: u64) -> Result<()> {
        let tokenizer: Value = serde_json::from_str(tokenizer_json)
            .map_err(|e| Error::InvalidArgument(format!("the tokenizer is not JSON: {e}")))?;
        let vocab = tokenizer["model"]["vocab"]
            .as_object()
            .ok_or_else(|| Error::InvalidArgument("the tokenizer has no word-level `model.vocab`".into()))?;
        let id_of = |token: &str| {
            vocab
                .get(token)
                .and_then(Value::as_u64)
                .map(|id| id as u32)
                .ok_or_else(|| Error::InvalidArgument(format!("the tokenizer has no `{token}` token")))
        };
        let config = self.config(vocab.len(), id_of("<image>")?, id_of("<video>")?);
        let parsed = LlavaOnevisionConfig::from_json(&config.to_string(), dir)?;
        let VisionTower::Config(vision) = &parsed.vision_tower else {
            return Err(Error::Checkpoint("the tiny model's config must carry its vision config".into()));
        };
        let vision = SiglipVisionConfig::from_value(vision)?;

        let layout = LlavaLayout::Hf;
        let mut expected: Vec<(String, Vec<usize>)> = siglip_weight_names(&vision, self.vision_layers)
            .into_iter()
            .map(|(name, shape)| (format!("{}{name}", layout.vision_prefix()), shape))
            .collect();
        for (prefix, width) in layout.projector_prefixes().into_iter().zip([self.vision_hidden, self.hidden]) {
            expected.push((format!("{prefix}weight"), vec![self.hidden, width]));
            expected.push((format!("{prefix}bias"), vec![self.hidden]));
        }
        expected.push((layout.image_newline().to_string(), vec![self.hidden]));
        expected.extend(qwen2_weight_names_under(&parsed.text, &layout.language_model()));
        let parameters = initial_parameters(&expected, 0.02, seed)?;

        let failed = |what: &str, e: std::io::Error| Error::Checkpoint(format!("{what} in {}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(|e| failed("creating the folder", e))?;
        let write_text = |name: &str, text: &str| std::fs::write(dir.join(name), text).map_err(|e| failed(name, e));
        let write_json = |name: &str, value: &Value| {
            write_text(name, &serde_json::to_string_pretty(value).expect("a JSON value serialises"))
        };
        write_json("config.json", &config)?;
        write_json("preprocessor_config.json", &self.preprocessor_config())?;
        write_json(
            "tokenizer_config.json",
            &json!({"chat_template": CHAT_TEMPLATE, "eos_token": "<|im_end|>",
            "pad_token": "<pad>"}),
        )?;
        write_text("tokenizer.json", tokenizer_json)?;
        let templates = dir.join(CHECKPOINT_TEMPLATES);
        std::fs::create_dir_all(&templates).map_err(|e| failed("creating judge_templates/", e))?;
        for task in Task::ALL {
            for mode in Mode::ALL {
                let name = format!("{CHECKPOINT_TEMPLATES}/{task}.{mode}.json");
                write_text(&name, TaskTemplate::built_in_file(Variant::Demo, task, mode)?)?;
            }
        }
        let named: Vec<(&str, &crate::runtime::Tensor)> = parameters.iter().map(|(n, t)| (n.as_str(), t)).collect();
        save_safetensors(&dir.join("model.safetensors"), &named)
    }
}
