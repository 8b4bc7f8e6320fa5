//! `LlavaLayout`: how a LLaVA-OneVision checkpoint names its tensors. Three namings exist:
//!
//! | part | `llava_qwen` (LLaVA-NeXT) | transformers 4.x files | transformers' parameters |
//! | --- | --- | --- | --- |
//! | vision tower¹ | `model.vision_tower.vision_tower.` | `vision_tower.` | `model.vision_tower.` |
//! | projector² | `model.mm_projector.{0,2}.` | `multi_modal_projector.` | `model.multi_modal_projector.` |
//! | newline | `model.image_newline` | `image_newline` | `model.image_newline` |
//! | language model | `model.` | `language_model.model.` | `model.language_model.` |
//! | LM head | `lm_head.weight` | `language_model.lm_head.weight` | `lm_head.weight` |
//!
//! ¹ each followed by SigLIP's `vision_model.`; ² transformers' two layers are `linear_1.` and `linear_2.`.
//!
//! transformers 4.57 names its parameters as in the last column but `save_pretrained` writes the legacy names of the
//! middle one (the llava-hf conversions on the hub are stored so too) and renames them when it loads
//! (`_checkpoint_conversion_mapping`); the original layout's names are those of transformers' conversion script
//! (`convert_llava_onevision_weights_to_hf.py`) read backwards. The layout is detected from the weights (the
//! language model's embeddings) and must agree with the config's format.

use std::collections::HashSet;

use super::config::{LlavaConfigFormat, LlavaOnevisionConfig};
use crate::model::{Qwen2Names, WeightStore};
use crate::{Error, Result};

/// A checkpoint's tensor naming.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LlavaLayout {
    /// LLaVA-NeXT's `LlavaQwenForCausalLM` (`model_type: "llava_qwen"`): UnifiedReward's released checkpoints.
    LlavaQwen,
    /// `llava_onevision` as transformers 4.x writes it.
    HfLegacy,
    /// `llava_onevision` under transformers' parameter names.
    Hf,
}

/// The parts of a checkpoint, each at one prefix (or, for single tensors, one name) per layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Vision,
    Linear1,
    Linear2,
    Newline,
    LmHead,
    LanguageModel,
}

/// `LanguageModel` last: `llava_qwen`'s `model.` prefix also starts the other parts' names.
const PARTS: [Part; 6] = [Part::Vision, Part::Linear1, Part::Linear2, Part::Newline, Part::LmHead, Part::LanguageModel];
/// What follows the language model's prefix (so that an unknown `model.*` tensor is not taken for one of its own).
const LANGUAGE_MODEL_TENSORS: [&str; 3] = ["embed_tokens.", "layers.", "norm."];

impl LlavaLayout {
    pub const ALL: [LlavaLayout; 3] = [LlavaLayout::LlavaQwen, LlavaLayout::HfLegacy, LlavaLayout::Hf];

    fn at(self, part: Part) -> &'static str {
        use LlavaLayout::*;
        match (part, self) {
            (Part::Vision, LlavaQwen) => "model.vision_tower.vision_tower.vision_model.",
            (Part::Vision, HfLegacy) => "vision_tower.vision_model.",
            (Part::Vision, Hf) => "model.vision_tower.vision_model.",
            (Part::Linear1, LlavaQwen) => "model.mm_projector.0.",
            (Part::Linear1, HfLegacy) => "multi_modal_projector.linear_1.",
            (Part::Linear1, Hf) => "model.multi_modal_projector.linear_1.",
            (Part::Linear2, LlavaQwen) => "model.mm_projector.2.",
            (Part::Linear2, HfLegacy) => "multi_modal_projector.linear_2.",
            (Part::Linear2, Hf) => "model.multi_modal_projector.linear_2.",
            (Part::Newline, LlavaQwen | Hf) => "model.image_newline",
            (Part::Newline, HfLegacy) => "image_newline",
            (Part::LmHead, LlavaQwen | Hf) => "lm_head.weight",
            (Part::LmHead, HfLegacy) => "language_model.lm_head.weight",
            (Part::LanguageModel, LlavaQwen) => "model.",
            (Part::LanguageModel, HfLegacy) => "language_model.model.",
            (Part::LanguageModel, Hf) => "model.language_model.",
        }
    }

    /// The prefix of the SigLIP vision transformer's tensors (`embeddings.*`, `encoder.layers.<i>.*`,
    /// `post_layernorm.*`).
    pub fn vision_prefix(self) -> &'static str {
        self.at(Part::Vision)
    }

    /// The prefixes of the projector's first and second linear layers (each `weight` and, with biases, `bias`).
    pub fn projector_prefixes(self) -> [&'static str; 2] {
        [self.at(Part::Linear1), self.at(Part::Linear2)]
    }

    /// The name of the `[H]` newline embedding.
    pub fn image_newline(self) -> &'static str {
        self.at(Part::Newline)
    }

    /// Every tensor of the model under its checkpoint name, in one order (tower, projector, newline, language
    /// model): `vision` named relative to the tower and `language` already under this layout's names. Shared by the
    /// parameters and the gradients, read-only or writable.
    pub fn named<T>(
        self,
        vision: Vec<(String, T)>,
        projector: [(T, T); 2],
        image_newline: T,
        language: Vec<(String, T)>,
    ) -> Vec<(String, T)> {
        let prefix = self.vision_prefix();
        let mut named: Vec<(String, T)> = vision.into_iter().map(|(n, t)| (format!("{prefix}{n}"), t)).collect();
        for (p, (w, b)) in self.projector_prefixes().into_iter().zip(projector) {
            named.push((format!("{p}weight"), w));
            named.push((format!("{p}bias"), b));
        }
        named.push((self.image_newline().to_string(), image_newline));
        named.extend(language);
        named
    }

    /// Where the language model's tensors are (its LM head included).
    pub fn language_model(self) -> Qwen2Names {
        Qwen2Names { prefix: self.at(Part::LanguageModel).into(), lm_head: self.at(Part::LmHead).into() }
    }

    /// `name` of this layout under `to`'s naming; `None` for a name no part of the model has.
    pub fn rename(self, name: &str, to: LlavaLayout) -> Option<String> {
        PARTS.iter().find_map(|&part| {
            let at = self.at(part);
            match part {
                Part::Newline | Part::LmHead => (name == at).then(|| to.at(part).to_string()),
                Part::LanguageModel => name
                    .strip_prefix(at)
                    .filter(|rest| LANGUAGE_MODEL_TENSORS.iter().any(|t| rest.starts_with(t)))
                    .map(|rest| format!("{}{rest}", to.at(part))),
                _ => name.strip_prefix(at).map(|rest| format!("{}{rest}", to.at(part))),
            }
        })
    }

    /// The layout of `store`'s names, which must be one `config`'s format allows.
    pub fn detect(config: &LlavaOnevisionConfig, store: &WeightStore) -> Result<LlavaLayout> {
        let embeds = |layout: LlavaLayout| layout.language_model().embed_tokens();
        let found: Vec<LlavaLayout> =
            LlavaLayout::ALL.into_iter().filter(|&layout| store.shape(&embeds(layout)).is_some()).collect();
        let allowed = match config.format {
            LlavaConfigFormat::HuggingFace => [LlavaLayout::HfLegacy, LlavaLayout::Hf].as_slice(),
            LlavaConfigFormat::LlavaNext => [LlavaLayout::LlavaQwen].as_slice(),
        };
        match found.as_slice() {
            [layout] if allowed.contains(layout) => Ok(*layout),
            [layout] => Err(Error::Checkpoint(format!(
                "config.json is in the {:?} format, but {store:?} names its tensors as {} does (`{}`)",
                config.format,
                layout.describe(),
                embeds(*layout)
            ))),
            [] => {
                let names: Vec<String> = LlavaLayout::ALL.into_iter().map(|l| format!("`{}`", embeds(l))).collect();
                Err(Error::Checkpoint(format!(
                    "{store:?} holds no language model embeddings (none of {}): not a LLaVA-OneVision checkpoint",
                    names.join(", ")
                )))
            }
            several => {
                let names: Vec<String> = several.iter().map(|&l| format!("`{}`", embeds(l))).collect();
                Err(Error::Checkpoint(format!("{store:?} mixes layouts: it holds {}", names.join(" and "))))
            }
        }
    }

    /// Checks that `store` holds, under this layout's names, the language model `config` describes, the projector
    /// (its input width that of the tower's patch embedding), the newline and a vision tower, and nothing else:
    /// every other tensor must be under the vision prefix (the SigLIP loader checks those). All problems are
    /// reported at once; with `lenient`, unknown tensors are returned instead of refused.
    pub fn check(self, config: &LlavaOnevisionConfig, store: &WeightStore, lenient: bool) -> Result<Vec<String>> {
        let patch = format!("{}embeddings.patch_embedding.weight", self.vision_prefix());
        let vision_hidden = match store.shape(&patch) {
            Some(&[width, ..]) => width,
            _ => {
                return Err(Error::Checkpoint(format!(
                    "{store:?} has no vision tower: `{patch}` is missing (layout {})",
                    self.describe()
                )))
            }
        };
        let hidden = config.text.hidden_size;
        let mut expected = store.qwen2_expected(&config.text, &self.language_model())?;
        for (prefix, width) in self.projector_prefixes().into_iter().zip([vision_hidden, hidden]) {
            expected.push((format!("{prefix}weight"), vec![hidden, width]));
            if config.projector_bias {
                expected.push((format!("{prefix}bias"), vec![hidden]));
            }
        }
        expected.push((self.image_newline().to_string(), vec![hidden]));
        let wanted: HashSet<&str> = expected.iter().map(|(name, _)| name.as_str()).collect();
        let vision = self.vision_prefix();
        store.check_expected_except(&expected, |name| wanted.contains(name) || name.starts_with(vision), lenient)
    }

    /// The layout in words, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            LlavaLayout::LlavaQwen => "LLaVA-NeXT's llava_qwen",
            LlavaLayout::HfLegacy => "transformers 4.x's llava_onevision files",
            LlavaLayout::Hf => "transformers' llava_onevision parameters",
        }
    }
}
