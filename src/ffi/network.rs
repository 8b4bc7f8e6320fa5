//! The model behind a `ur_model` handle: a Qwen2 decoder or the LLaVA-OneVision judge, told apart by the
//! checkpoint's `config.json` (one handle for both: the calls a caller makes — forward to logits, backward, gradients
//! by name, generation — are the same, and a text-only caller never needs to know which it loaded).

use std::path::Path;

use crate::judge::GenerationConfig;
use crate::model::llava::packing::PlaceholderTokens;
use crate::model::llava::{LlavaBatch, LlavaGradients, LlavaOnevisionModel, LlavaPass, MediaInput};
use crate::model::qwen2::{ForwardOptions, ForwardPass, Qwen2Gradients};
use crate::model::{Architecture, LoadOptions, LoadReport, Qwen2Model};
use crate::{DType, Device, Error, Result, Tensor};

/// A loaded model.
#[derive(Debug)]
pub(super) enum Network {
    Qwen2(Box<Qwen2Model>),
    Llava(Box<LlavaOnevisionModel>),
}

/// A forward pass kept for the backward.
pub(super) enum Pass {
    Qwen2(Box<ForwardPass>),
    Llava(Box<LlavaPass>),
}

/// Gradients kept for `ur_model_gradient`.
pub(super) enum Gradients {
    Qwen2(Box<Qwen2Gradients>),
    Llava(Box<LlavaGradients>),
}

impl Network {
    /// Loads the checkpoint in `dir`, of whichever architecture its `config.json` names.
    pub fn load(dir: &Path, dtype: DType, device: Device, options: &LoadOptions) -> Result<(Network, LoadReport)> {
        Ok(match Architecture::of_checkpoint(dir)? {
            Architecture::Qwen2 => {
                let (model, report) = Qwen2Model::load_with(dir, dtype, device, options)?;
                (Network::Qwen2(Box::new(model)), report)
            }
            Architecture::LlavaOnevision => {
                let (model, report) = LlavaOnevisionModel::load_with(dir, dtype, device, options)?;
                (Network::Llava(Box::new(model)), report)
            }
        })
    }

    pub fn architecture(&self) -> Architecture {
        match self {
            Network::Qwen2(_) => Architecture::Qwen2,
            Network::Llava(_) => Architecture::LlavaOnevision,
        }
    }

    /// The decoder (the LLaVA model's language model).
    pub fn language_model(&self) -> &Qwen2Model {
        match self {
            Network::Qwen2(model) => model,
            Network::Llava(model) => &model.language_model,
        }
    }

    /// The image and video placeholder ids (`None` for a text-only model).
    pub fn placeholders(&self) -> Option<PlaceholderTokens> {
        match self {
            Network::Qwen2(_) => None,
            Network::Llava(model) => Some(model.placeholders()),
        }
    }

    /// Every parameter under the checkpoint's name, in a fixed order.
    pub fn named_parameters(&self) -> Vec<(String, &Tensor)> {
        match self {
            Network::Qwen2(model) => model.weights.named(),
            Network::Llava(model) => model.named_parameters(),
        }
    }

    /// Scalar parameters (a tied LM head counted once).
    pub fn numel(&self) -> usize {
        self.named_parameters().iter().map(|(_, t)| t.numel()).sum()
    }

    /// Refuses `count` media for a text-only model (before any file is read).
    pub fn check_media_count(&self, count: usize) -> Result<()> {
        if count > 0 && self.placeholders().is_none() {
            return Err(Error::InvalidArgument(format!(
                "`num_media` is {count}, but the model is a Qwen2 decoder, which takes no images or videos"
            )));
        }
        Ok(())
    }

    /// The forward pass over `ids` `[N,T]` with `mask` and the batch's `media`.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor, media: &[MediaInput<'_>]) -> Result<Pass> {
        self.check_media_count(media.len())?;
        let opts = ForwardOptions::default();
        Ok(match self {
            Network::Qwen2(model) => Pass::Qwen2(Box::new(model.forward(ids, mask, opts)?)),
            Network::Llava(model) => Pass::Llava(Box::new(model.forward(&LlavaBatch { ids, mask, media }, opts)?)),
        })
    }

    /// The logits `[N,T,V]` of a pass.
    pub fn logits(&self, pass: &Pass) -> Result<Tensor> {
        self.language_model().logits(pass.language_model())
    }

    /// Every gradient from that of the pass's logits.
    pub fn backward(&self, pass: Pass, grad_logits: &Tensor) -> Result<Gradients> {
        Ok(match (self, pass) {
            (Network::Qwen2(model), Pass::Qwen2(pass)) => {
                Gradients::Qwen2(Box::new(model.backward_from_logits(*pass, grad_logits)?))
            }
            (Network::Llava(model), Pass::Llava(pass)) => {
                Gradients::Llava(Box::new(model.backward_from_logits(*pass, grad_logits)?))
            }
            _ => return Err(Error::InvalidArgument("the kept forward pass is of another model".into())),
        })
    }

    /// `(checkpoint name, gradient)` of every parameter, then `("inputs_embeds", [N,T,H])`.
    pub fn named_gradients<'a>(&self, grads: &'a Gradients, inputs_embeds: &str) -> Vec<(String, &'a Tensor)> {
        let (mut named, lm) = match (self, grads) {
            (Network::Llava(model), Gradients::Llava(g)) => (model.named_gradients(g), &g.language_model),
            (_, Gradients::Qwen2(g)) => (g.weights.named(), &**g),
            (Network::Qwen2(_), Gradients::Llava(g)) => (Vec::new(), &g.language_model),
        };
        named.push((inputs_embeds.to_string(), &lm.inputs_embeds));
        named
    }

    /// The placeholder ids each item of `media` takes in the input ids.
    pub fn placeholder_counts(&self, media: &[MediaInput<'_>]) -> Result<Vec<usize>> {
        self.check_media_count(media.len())?;
        match self {
            Network::Qwen2(_) => Ok(Vec::new()),
            Network::Llava(model) => model.placeholder_counts(media),
        }
    }

    /// New tokens after `prompt` (with the placeholders of `media`).
    pub fn generate(&self, prompt: &[i64], media: &[MediaInput<'_>], cfg: &GenerationConfig) -> Result<Vec<u32>> {
        self.check_media_count(media.len())?;
        match self {
            Network::Qwen2(model) => {
                let ids = prompt.iter().map(|&id| id as u32).collect();
                Ok(crate::judge::generate(model, &[ids], cfg)?.pop().unwrap_or_default())
            }
            Network::Llava(model) => model.generate(prompt, media, cfg),
        }
    }
}

impl Pass {
    pub fn language_model(&self) -> &ForwardPass {
        match self {
            Pass::Qwen2(pass) => pass,
            Pass::Llava(pass) => &pass.lm,
        }
    }
}
