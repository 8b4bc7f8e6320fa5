//! The model a trainer trains: a text-only Qwen2 judge or a LLaVA-OneVision one, behind one set of calls. A
//! trainer loads it from a checkpoint directory (the architecture from `config.json`'s `model_type`), prepares each
//! [`SequenceBatch`] (a LLaVA model decodes and preprocesses the batch's media with the checkpoint's image
//! processor and checks each row's placeholders against them), runs the forward, a loss on the language model's
//! head, the backward into gradient buffers it keeps, and saves in the layout it was loaded from.
//!
//! Both models end in the same Qwen2 language model, so every loss on the head is the language model's:
//! [`TrainPass::lm`], [`TrainModel::language_model`] and [`TrainGradients::language_model_mut`] give a trainer its
//! pass, head and head-gradient buffers whatever the architecture, and [`TrainModel::backward_into`] takes the
//! [`OutputGrads`] any of the language model's head losses returns.

use std::path::Path;

use super::checkpoint::{save_llava_with, save_qwen2_with, SaveOptions};
use super::data::{LoadedMedia, MediaLoader, SequenceBatch};
use super::optim::ParamGroup;
use crate::judge::{Judge, JudgeModel};
use crate::model::architecture::Architecture;
use crate::model::llava::{LlavaBatch, LlavaGradients, LlavaOnevisionModel, LlavaPass, MediaInput};
use crate::model::qwen2::{CausalLmLoss, ForwardPass, OutputGrads, Qwen2Gradients};
use crate::model::{ForwardOptions, LoadOptions, Qwen2Model};
use crate::ops::fused_linear::FusedLinearConfig;
use crate::runtime::{DType, Device, Tensor};
use crate::{Error, Result};

/// A trainable model.
#[derive(Debug)]
pub enum TrainModel {
    Qwen2(Box<Qwen2Model>),
    Llava(Box<LlavaTrainModel>),
}

/// A LLaVA-OneVision model and the loader of its batches' media.
#[derive(Debug)]
pub struct LlavaTrainModel {
    pub model: LlavaOnevisionModel,
    pub media: MediaLoader,
}

/// Gradient buffers of every parameter of a [`TrainModel`], kept across steps.
#[derive(Debug)]
pub enum TrainGradients {
    Qwen2(Box<Qwen2Gradients>),
    Llava(Box<LlavaGradients>),
}

/// A forward pass of a [`TrainModel`].
#[derive(Debug)]
pub enum TrainPass {
    Qwen2(Box<ForwardPass>),
    Llava(Box<LlavaPass>),
}

/// A batch ready for the forward: its ids and mask on the model's device and its media decoded.
#[derive(Debug)]
pub struct PreparedBatch<'a> {
    pub batch: &'a SequenceBatch,
    ids: Tensor,
    mask: Tensor,
    /// Every row's media, rows in order.
    media: Vec<LoadedMedia>,
}

impl From<Qwen2Model> for TrainModel {
    fn from(model: Qwen2Model) -> TrainModel {
        TrainModel::Qwen2(Box::new(model))
    }
}

impl TrainPass {
    /// The language model's pass (its final hidden states feed the head).
    pub fn lm(&self) -> &ForwardPass {
        match self {
            TrainPass::Qwen2(pass) => pass,
            TrainPass::Llava(pass) => &pass.lm,
        }
    }
}

impl TrainGradients {
    /// The language model's buffers (where a head loss writes the head's gradient).
    pub fn language_model_mut(&mut self) -> &mut Qwen2Gradients {
        match self {
            TrainGradients::Qwen2(grads) => grads,
            TrainGradients::Llava(grads) => &mut grads.language_model,
        }
    }
}

impl TrainModel {
    /// The checkpoint in `dir` (a Qwen2 or a LLaVA-OneVision one, by `config.json`'s `model_type`) in `dtype` on
    /// `device`; a LLaVA model samples `video_frames` frames from each video of its batches.
    pub fn load(dir: &Path, dtype: DType, device: Device, video_frames: usize) -> Result<TrainModel> {
        TrainModel::load_with(dir, dtype, device, video_frames, &LoadOptions::default())
    }

    /// [`TrainModel::load`] under `options` (lenient: a reward checkpoint's `score.weight` is not the model's).
    pub fn load_with(
        dir: &Path,
        dtype: DType,
        device: Device,
        video_frames: usize,
        options: &LoadOptions,
    ) -> Result<TrainModel> {
        Ok(match Architecture::of_checkpoint(dir)? {
            Architecture::Qwen2 => TrainModel::from(Qwen2Model::load_with(dir, dtype, device, options)?.0),
            Architecture::LlavaOnevision => {
                let (model, _) = LlavaOnevisionModel::load_with(dir, dtype, device, options)?;
                let media = MediaLoader::for_checkpoint(dir, &model, video_frames)?;
                TrainModel::Llava(Box::new(LlavaTrainModel { model, media }))
            }
        })
    }

    pub fn architecture(&self) -> Architecture {
        match self {
            TrainModel::Qwen2(_) => Architecture::Qwen2,
            TrainModel::Llava(_) => Architecture::LlavaOnevision,
        }
    }

    /// The Qwen2 language model (the whole model for Qwen2): its head scores every token.
    pub fn language_model(&self) -> &Qwen2Model {
        match self {
            TrainModel::Qwen2(model) => model,
            TrainModel::Llava(llava) => &llava.model.language_model,
        }
    }

    /// The longest sequence the model takes: its language model's `max_position_embeddings` (a LLaVA model's
    /// image and video tokens counted).
    pub fn max_positions(&self) -> usize {
        self.language_model().config.max_position_embeddings
    }

    /// The loader of a LLaVA model's media (`None` for a text-only model).
    pub fn media_loader(&self) -> Option<&MediaLoader> {
        match self {
            TrainModel::Qwen2(_) => None,
            TrainModel::Llava(llava) => Some(&llava.media),
        }
    }

    /// What is wrong with a batch's input `ids`, if anything: each must be in the language model's vocabulary or be
    /// one of a LLaVA model's placeholder ids (`llava_qwen`'s are negative).
    pub fn check_input_ids(&self, ids: &[i64]) -> std::result::Result<(), String> {
        let vocab = self.language_model().config.vocab_size;
        let placeholders = self.media_loader().map(|loader| loader.placeholders());
        let accepted =
            |id: i64| (0..vocab as i64).contains(&id) || placeholders.is_some_and(|p| id == p.image || id == p.video);
        match ids.iter().find(|&&id| !accepted(id)) {
            Some(id) => Err(format!("token id {id} in `ids` is outside the vocabulary of {vocab}")),
            None => Ok(()),
        }
    }

    pub fn device(&self) -> Device {
        self.language_model().device()
    }

    pub fn dtype(&self) -> DType {
        self.language_model().dtype()
    }

    /// Tells the model which gradients the optimizer's `groups` leave unused: a LLaVA vision tower every parameter
    /// of which is frozen runs no backward ([`LlavaOnevisionModel::set_vision_tower_frozen`]); a partly frozen tower
    /// keeps the full backward. The trained parameters step bitwise as with the full backward (the optimizer reads
    /// no frozen gradient, the clipping norm included).
    pub fn skip_frozen_gradients(&mut self, groups: &[ParamGroup]) {
        if let TrainModel::Llava(llava) = self {
            let model = &mut llava.model;
            // The tower's parameters come first in `named_parameters`.
            let tower = model.vision_tower.weights.named().len();
            let frozen = model.named_parameters()[..tower].iter().all(|(name, _)| ParamGroup::is_frozen(groups, name));
            model.set_vision_tower_frozen(frozen);
        }
    }

    /// Zeroed buffers for every parameter's gradient.
    pub fn zero_gradients(&self) -> Result<TrainGradients> {
        Ok(match self {
            TrainModel::Qwen2(model) => TrainGradients::Qwen2(Box::new(Qwen2Gradients {
                weights: model.weights.zeros_like()?,
                inputs_embeds: Tensor::zeros(&[0, 0, model.config.hidden_size], model.dtype(), model.device())?,
            })),
            TrainModel::Llava(llava) => TrainGradients::Llava(Box::new(llava.model.zero_gradients()?)),
        })
    }

    /// `batch`'s tensors on the model's device and its media decoded and preprocessed, each row's placeholder ids
    /// checked against its media's packed rows: what can fail before a forward fails here, naming the row.
    pub fn prepare<'a>(&self, batch: &'a SequenceBatch) -> Result<PreparedBatch<'a>> {
        let [ids, mask, _] = batch.tensors(self.device())?;
        let mut media = Vec::new();
        match self {
            TrainModel::Qwen2(_) => {
                if let Some(row) = batch.media.iter().position(|m| !m.is_empty()) {
                    return Err(Error::InvalidArgument(format!(
                        "row {row} has images or videos but the model is a text-only Qwen2"
                    )));
                }
            }
            TrainModel::Llava(llava) => {
                let loader = &llava.media;
                for (row, refs) in batch.media.iter().enumerate() {
                    let loaded = loader.load(refs).map_err(|e| Error::InvalidArgument(format!("row {row}: {e}")))?;
                    check_row_placeholders(loader, batch, row, &loaded)?;
                    media.extend(loaded);
                }
            }
        }
        Ok(PreparedBatch { batch, ids, mask, media })
    }

    /// The forward over a prepared batch.
    pub fn forward(&self, batch: &PreparedBatch<'_>, opts: ForwardOptions) -> Result<TrainPass> {
        Ok(match self {
            TrainModel::Qwen2(model) => TrainPass::Qwen2(Box::new(model.forward(&batch.ids, &batch.mask, opts)?)),
            TrainModel::Llava(llava) => {
                let media: Vec<MediaInput<'_>> = batch.media.iter().map(LoadedMedia::input).collect();
                let batch = LlavaBatch { ids: &batch.ids, mask: &batch.mask, media: &media };
                TrainPass::Llava(Box::new(llava.model.forward(&batch, opts)?))
            }
        })
    }

    /// The mean next-token loss on `labels` (aligned with the ids, −100 where nothing is learnt) through the fused
    /// head, the head's gradient written into `out` ([`Qwen2Model::causal_lm_loss_into_labels`]).
    pub fn causal_lm_loss_into_labels(
        &self,
        pass: &TrainPass,
        labels: &[i64],
        cfg: &FusedLinearConfig,
        out: &mut TrainGradients,
    ) -> Result<CausalLmLoss> {
        match (self, pass, out) {
            (TrainModel::Qwen2(model), TrainPass::Qwen2(pass), TrainGradients::Qwen2(out)) => {
                model.causal_lm_loss_into_labels(pass, labels, cfg, out)
            }
            (TrainModel::Llava(llava), TrainPass::Llava(pass), TrainGradients::Llava(out)) => {
                llava.model.causal_lm_loss_into_labels(pass, labels, cfg, out)
            }
            _ => Err(mismatched()),
        }
    }

    /// Every parameter's gradient from the gradient of the pass's outputs (a head loss's [`OutputGrads`]) into
    /// `out`'s buffers, overwritten (a head gradient the loss left there is kept).
    pub fn backward_into(&self, pass: TrainPass, grads: OutputGrads, out: &mut TrainGradients) -> Result<()> {
        match (self, pass, out) {
            (TrainModel::Qwen2(model), TrainPass::Qwen2(pass), TrainGradients::Qwen2(out)) => {
                let stream = pass.hidden().shape();
                if out.inputs_embeds.shape() != stream {
                    out.inputs_embeds = Tensor::zeros(stream, model.dtype(), model.device())?;
                }
                model.backward_into(*pass, grads, out)
            }
            (TrainModel::Llava(llava), TrainPass::Llava(pass), TrainGradients::Llava(out)) => {
                llava.model.backward_into(*pass, grads, out)
            }
            _ => Err(mismatched()),
        }
    }

    /// `(checkpoint name, parameter)` for every parameter, in the order of [`TrainModel::named_gradients`].
    pub fn named_parameters(&self) -> Vec<(String, &Tensor)> {
        match self {
            TrainModel::Qwen2(model) => model.weights.named(),
            TrainModel::Llava(llava) => llava.model.named_parameters(),
        }
    }

    /// [`TrainModel::named_parameters`], writable: what the optimizer steps.
    pub fn named_parameters_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        match self {
            TrainModel::Qwen2(model) => model.weights.named_mut(),
            TrainModel::Llava(llava) => llava.model.named_parameters_mut(),
        }
    }

    /// `(checkpoint name, gradient)` of `grads` (from [`TrainModel::zero_gradients`]).
    pub fn named_gradients<'a>(&self, grads: &'a TrainGradients) -> Vec<(String, &'a Tensor)> {
        match (self, grads) {
            (TrainModel::Qwen2(_), TrainGradients::Qwen2(grads)) => grads.weights.named(),
            (TrainModel::Llava(llava), TrainGradients::Llava(grads)) => llava.model.named_gradients(grads),
            _ => Vec::new(),
        }
    }

    /// Saves the model as a checkpoint in `out` in the layout of `source` (the checkpoint it was loaded from), with
    /// `extra` writing into the checkpoint's temporary directory (see [`super::checkpoint::save_checkpoint`]).
    pub fn save(
        &self,
        source: &Path,
        out: &Path,
        options: &SaveOptions,
        extra: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<()> {
        self.save_with(&[], source, out, options, extra)
    }

    /// [`TrainModel::save`] with `beside` (tensors that are not the model's, as a reward head's `score.weight`)
    /// saved among its weights.
    pub fn save_with(
        &self,
        beside: &[(String, &Tensor)],
        source: &Path,
        out: &Path,
        options: &SaveOptions,
        extra: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<()> {
        match self {
            TrainModel::Qwen2(model) => save_qwen2_with(model, beside, source, out, options, extra),
            TrainModel::Llava(llava) => save_llava_with(&llava.model, beside, source, out, options, extra),
        }
    }

    /// Runs `f` on a judge over this model — moved into the judge and back, not copied — and the judging files of
    /// the checkpoint directory `dir` ([`Judge::with_model`]), then gives the model back. On an error the model is
    /// dropped (the run training it ends).
    pub fn judge_with<R>(self, dir: &Path, f: impl FnOnce(&Judge) -> Result<R>) -> Result<(TrainModel, R)> {
        let (model, media) = match self {
            TrainModel::Qwen2(model) => (JudgeModel::Text(model), None),
            TrainModel::Llava(llava) => {
                let LlavaTrainModel { model, media } = *llava;
                (JudgeModel::Llava(Box::new(model)), Some(media))
            }
        };
        let judge = Judge::with_model(model, dir)?;
        let out = f(&judge)?;
        let model = match (judge.into_model(), media) {
            (JudgeModel::Text(model), None) => TrainModel::Qwen2(model),
            (JudgeModel::Llava(model), Some(media)) => {
                TrainModel::Llava(Box::new(LlavaTrainModel { model: *model, media }))
            }
            _ => unreachable!("a judge gives back the model it was given"),
        };
        Ok((model, out))
    }
}

fn mismatched() -> Error {
    Error::InvalidArgument("a pass or gradient buffers of another architecture than the model's".into())
}

/// Checks that `row` of `batch` holds as many image (video) placeholder ids as its images' (videos') packed rows.
fn check_row_placeholders(
    loader: &MediaLoader,
    batch: &SequenceBatch,
    row: usize,
    media: &[LoadedMedia],
) -> Result<()> {
    let counts = loader.placeholder_counts(media)?;
    let ids = &batch.ids[row * batch.len..(row + 1) * batch.len];
    let placeholders = loader.placeholders();
    for (kind, id, placeholder) in [
        (super::data::MediaKind::Image, placeholders.image, "image"),
        (super::data::MediaKind::Video, placeholders.video, "video"),
    ] {
        let want: usize = media.iter().zip(&counts).filter(|(m, _)| m.kind == kind).map(|(_, c)| c).sum();
        let found = ids.iter().filter(|&&t| t == id).count();
        if found != want {
            return Err(Error::InvalidArgument(format!(
                "row {row} has {found} {placeholder} placeholder ids ({id}) but its {placeholder}s take {want}"
            )));
        }
    }
    Ok(())
}
