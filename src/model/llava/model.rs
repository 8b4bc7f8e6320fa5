//! `LlavaOnevisionModel`: the whole judge (SigLIP tower → projector → packing → Qwen2), loaded from either layout,
//! forward to logits or the causal-LM loss and backward to every parameter under the checkpoint's own names.
//!
//! ```text
//! tiles/frames [K,3,S,S] ─tower─▶ [K,P,C] ─projector─▶ [K,P,H] ─pack─▶ [R,H] ─scatter─▶ embeds [N,T,H] ─Qwen2─▶
//! ```
//!
//! The token embeddings are looked up with every placeholder id replaced by 0 (a valid row; `llava_qwen`'s
//! placeholders are negative), and the placeholder rows are then overwritten by the packed features, as
//! transformers' `masked_scatter` does. The backward runs the chain in reverse: the language model's
//! `inputs_embeds` gradient is split by [`ScatterMap::backward`] into the packed features' gradient and the token
//! embeddings' (added onto the embedding table's gradient, after the tied head's share when there is one).
//!
//! A pass lays out one activation arena for all of it, reused by the next pass ([`super::pass_arena`]).

use std::path::Path;
use std::sync::Arc;

use super::config::{LlavaOnevisionConfig, VisionTower};
use super::layout::LlavaLayout;
use super::packing::{
    pack_backward_into, pack_into, FeatureSelect, Media, PackingConfig, PackingPlan, PlaceholderTokens, ScatterMap,
    UnpadRounding,
};
use super::pass_arena::{self, Parts, PassShape, PassViews, VisionViews};
use super::projector::{Projector, ProjectorActivations, ProjectorWeights};
use crate::judge::generate::{generate_with_prefilled_prefix, GenerationConfig};
use crate::media::Size;
use crate::model::loading::check_finite;
use crate::model::qwen2::{CausalLmLoss, ForwardPass, OutputGrads, Qwen2Gradients, Qwen2Weights};
use crate::model::siglip::{layers_for_feature_layer, SiglipVisionConfig, SiglipVisionTower, SiglipWeights, TowerPass};
use crate::model::views::check_gradient_buffers;
use crate::model::{ForwardOptions, LoadOptions, LoadReport, Qwen2Model, WeightStore};
use crate::ops::check;
use crate::ops::embedding::{embedding_backward_accumulate, embedding_into};
use crate::ops::fused_linear::FusedLinearConfig;
use crate::ops::launch::host_ids;
use crate::ops::rows::copy_rows;
use crate::runtime::arena::{ArenaHome, Lease, LentViews};
use crate::runtime::{DType, Device, Tensor};
use crate::{Error, Result};

/// One image or video of a batch, in the order their placeholders appear over the batch (sample by sample).
#[derive(Clone, Copy, Debug)]
pub enum MediaInput<'a> {
    /// An image's tiles `[tiles, 3, S, S]` as the image processor made them (anyres: the base image, then the
    /// grid's tiles; square: one tile) and its `(height, width)` before preprocessing.
    Image { pixel_values: &'a Tensor, size: Size },
    /// A video's frames `[F, 3, S, S]`.
    Video { frames: &'a Tensor },
}

impl<'a> MediaInput<'a> {
    /// The pixels and the original size of preprocessed image (`media::ImagePixels`).
    pub fn image(pixels: &'a crate::media::ImagePixels) -> MediaInput<'a> {
        MediaInput::Image { pixel_values: &pixels.pixel_values, size: pixels.image_size }
    }

    fn pixels(&self) -> &'a Tensor {
        match *self {
            MediaInput::Image { pixel_values, .. } => pixel_values,
            MediaInput::Video { frames } => frames,
        }
    }
}

/// A batch: token ids `[N,T]` (i32 or i64) with one placeholder per packed feature row, the attention mask `[N,T]`
/// and the media in placeholder order.
#[derive(Clone, Copy, Debug)]
pub struct LlavaBatch<'a> {
    pub ids: &'a Tensor,
    pub mask: &'a Tensor,
    pub media: &'a [MediaInput<'a>],
}

/// A forward pass, holding what the backward needs. Its activations (the tower's, the projector's, the packed
/// features, the language model's) live in one arena, which goes back to the model for the next pass when the
/// pass ends.
#[derive(Debug)]
pub struct LlavaPass {
    pub lm: ForwardPass,
    inputs: InputsProvenance,
}

impl LlavaPass {
    /// Bytes of the pass's activations and backward scratch in its arena (the overlaid parts counted once: see
    /// [`Layout::overlay`](crate::runtime::arena::Layout::overlay)).
    pub fn activation_bytes(&self) -> usize {
        self.inputs.lease.used_bytes()
    }

    /// Bytes of the arena holding them (more than [`LlavaPass::activation_bytes`] after a larger pass).
    pub fn arena_bytes(&self) -> usize {
        self.inputs.lease.size_in_bytes()
    }
}

/// How a batch's input embeddings were made, as the backward and the loss need it. Field order matters: the views
/// are dropped before the lease that keeps their arena.
#[derive(Debug)]
struct InputsProvenance {
    /// The tower's and the projector's passes; `None` for a batch without media.
    vision: Option<VisionPass>,
    plan: PackingPlan,
    scatter: ScatterMap,
    /// The ids the token embeddings were looked up with (placeholders replaced by 0), on the model's device.
    lookup_ids: Tensor,
    /// The batch's own ids (the loss's labels), on the host.
    ids: Tensor,
    /// `[N,T,H]`: the language model's input embeddings, in the arena.
    embeds: Tensor,
    /// The language model's views of the arena, until its forward takes them.
    language_model: Vec<Tensor>,
    lease: Arc<Lease>,
}

/// The vision half of a pass: what the backward reads, and its gradient buffers in the arena.
#[derive(Debug)]
struct VisionPass {
    tower: TowerOutput,
    projector: ProjectorActivations,
    /// `[R,H]`: the packed features' gradient.
    grad_packed: Tensor,
    /// `[K,P,H]`: the projector output's gradient.
    grad_projected: Tensor,
    /// The gradients of the projector's two saved activations.
    projector_grads: ProjectorActivations,
    /// `[K,P,C]`: the tower features' gradient.
    grad_features: Tensor,
}

/// What the vision tower's forward left for the backward.
#[derive(Debug)]
enum TowerOutput {
    /// A pass the tower's backward runs through.
    Pass(Box<TowerPass>),
    /// The features of a frozen tower: the backward stops at the projector.
    Frozen(Tensor),
}

impl TowerOutput {
    fn features(&self) -> &Tensor {
        match self {
            TowerOutput::Pass(pass) => pass.features(),
            TowerOutput::Frozen(features) => features,
        }
    }
}

/// Gradients of every parameter, in the model's parts.
#[derive(Debug)]
pub struct LlavaGradients {
    pub vision_tower: SiglipWeights,
    /// `(weight, bias)` of the projector's two layers.
    pub projector: [(Tensor, Tensor); 2],
    pub image_newline: Tensor,
    /// The language model's parameters and the `[N,T,H]` gradient of its input embeddings (of the last batch).
    pub language_model: Qwen2Gradients,
}

/// The multimodal judge.
#[derive(Debug)]
pub struct LlavaOnevisionModel {
    pub config: LlavaOnevisionConfig,
    pub layout: LlavaLayout,
    pub vision_tower: SiglipVisionTower,
    pub projector: Projector,
    /// `[H]`.
    pub image_newline: Tensor,
    pub language_model: Qwen2Model,
    pub packing: PackingConfig,
    /// The tower needs no gradient: see [`LlavaOnevisionModel::set_vision_tower_frozen`].
    vision_tower_frozen: bool,
    /// The last pass's activation arena (the whole model's: [`super::pass_arena`]), reused by the next.
    arena: ArenaHome,
}

/// The tower's configuration: the checkpoint's, or the shipped one of a known hub id.
fn tower_config(tower: &VisionTower) -> Result<SiglipVisionConfig> {
    match tower {
        VisionTower::Config(value) => SiglipVisionConfig::from_value(value),
        VisionTower::Known(name) => SiglipVisionConfig::for_tower_name(name),
    }
}

impl LlavaOnevisionModel {
    /// Loads `dir`'s `config.json` and safetensors weights in either layout, converted to `dtype` on `device`.
    pub fn load(dir: &Path, dtype: DType, device: Device) -> Result<LlavaOnevisionModel> {
        LlavaOnevisionModel::load_with(dir, dtype, device, &LoadOptions::default()).map(|(model, _)| model)
    }

    /// [`LlavaOnevisionModel::load`] under `options` (lenient about unused tensors, checking finiteness), with
    /// what the load ignored. The vision tower's own unused tensors (later layers, `post_layernorm`, `head`) are
    /// always left alone and not reported.
    pub fn load_with(
        dir: &Path,
        dtype: DType,
        device: Device,
        options: &LoadOptions,
    ) -> Result<(LlavaOnevisionModel, LoadReport)> {
        let config = LlavaOnevisionConfig::from_file(&dir.join("config.json"))?;
        let store = WeightStore::open(dir)?;
        let layout = LlavaLayout::detect(&config, &store)?;
        let ignored = layout.check(&config, &store, options.lenient)?;
        if !config.projector_bias {
            return Err(Error::Checkpoint(
                "config: `multimodal_projector_bias` = false is not implemented (the projector has biases)".into(),
            ));
        }
        let tower_config = tower_config(&config.vision_tower)?;
        let layers = layers_for_feature_layer(tower_config.num_hidden_layers, config.vision_feature_layer)?;
        let vision_tower =
            SiglipVisionTower::load(&store, layout.vision_prefix(), &tower_config, layers, dtype, device)?;
        let hidden = config.text.hidden_size;
        let vision_hidden = tower_config.hidden_size;
        let linear = |prefix: &str, width: usize| -> Result<(Tensor, Tensor)> {
            Ok((
                store.get_as(&format!("{prefix}weight"), &[hidden, width], dtype, device)?,
                store.get_as(&format!("{prefix}bias"), &[hidden], dtype, device)?,
            ))
        };
        let [first, second] = layout.projector_prefixes();
        let weights = ProjectorWeights { linear_1: linear(first, vision_hidden)?, linear_2: linear(second, hidden)? };
        // Both formats' config readers accept only the exact GELU.
        let projector = Projector::new(weights, "gelu")?;
        let image_newline = store.get_as(layout.image_newline(), &[hidden], dtype, device)?;
        let lm_weights = Qwen2Weights::load_under(&store, &config.text, &layout.language_model(), dtype, device)?;
        let language_model = Qwen2Model::new(config.text.clone(), lm_weights)?;
        let packing = PackingConfig {
            image_size: tower_config.image_size,
            patch_size: tower_config.patch_size,
            grid_pinpoints: config.image_grid_pinpoints.clone(),
            anyres_max: Some(config.max_anyres_tiles),
            feature_select: FeatureSelect::Full,
            unpad_rounding: match layout {
                LlavaLayout::LlavaQwen => UnpadRounding::LlavaNext,
                LlavaLayout::Hf | LlavaLayout::HfLegacy => UnpadRounding::Transformers,
            },
        };
        packing.validate()?;
        let model = LlavaOnevisionModel {
            config,
            layout,
            vision_tower,
            projector,
            image_newline,
            language_model,
            packing,
            vision_tower_frozen: false,
            arena: ArenaHome::default(),
        };
        if options.check_finite {
            check_finite(model.named_parameters())?;
        }
        Ok((model, LoadReport { ignored }))
    }

    pub fn dtype(&self) -> DType {
        self.language_model.dtype()
    }

    pub fn device(&self) -> Device {
        self.language_model.device()
    }

    pub fn placeholders(&self) -> PlaceholderTokens {
        PlaceholderTokens { image: self.config.image_token_id, video: self.config.video_token_id }
    }

    /// Every media item's pixels checked (`[k, C, S, S]` floats, k ≥ 1, naming the item), as the packing sees them.
    fn media_items(&self, media: &[MediaInput<'_>]) -> Result<Vec<Media>> {
        let tile = self.tile_shape();
        let mut items = Vec::with_capacity(media.len());
        for (i, item) in media.iter().enumerate() {
            let pixels = item.pixels();
            let (kind, what) = match item {
                MediaInput::Image { .. } => ("image", "tiles"),
                MediaInput::Video { .. } => ("video", "frames"),
            };
            check::float("pixel values", pixels)?;
            let ok = pixels.shape().len() == 4 && pixels.shape()[1..] == tile && pixels.shape()[0] > 0;
            if !ok {
                return Err(Error::Shape(format!(
                    "media item {i} (a {kind}) has pixel values of shape {:?}; the vision tower takes [{what}, {}, {}, \
                     {}] with at least one of the {what}",
                    pixels.shape(),
                    tile[0],
                    tile[1],
                    tile[2]
                )));
            }
            let count = pixels.shape()[0];
            items.push(match *item {
                MediaInput::Image { size, .. } => Media::Image { size, tiles: count },
                MediaInput::Video { .. } => Media::Video { frames: count },
            });
        }
        Ok(items)
    }

    /// `[C, S, S]` of one tile or frame.
    fn tile_shape(&self) -> [usize; 3] {
        let c = &self.vision_tower.config;
        [c.num_channels, c.image_size, c.image_size]
    }

    /// The media's pixels checked ([`LlavaOnevisionModel::media_items`]) and gathered into one `[K, C, S, S]`
    /// tensor in the tower's dtype on its device, with the packing's view of each item.
    fn gather_media(&self, media: &[MediaInput<'_>]) -> Result<(Option<Tensor>, Vec<Media>)> {
        let items = self.media_items(media)?;
        let tile = self.tile_shape();
        let total: usize = items.iter().map(Media::tiles).sum();
        if total == 0 {
            return Ok((None, items));
        }
        let per_tile: usize = tile.iter().product();
        let (dtype, device) = (self.vision_tower.dtype(), self.vision_tower.device());
        let mut all = Tensor::zeros(&[total, per_tile], dtype, device)?;
        let mut start = 0;
        for item in media {
            let pixels = item.pixels();
            let count = pixels.shape()[0];
            let rows = pixels.to_dtype(dtype)?.to_device(device)?.reshape(&[count, per_tile])?;
            copy_rows(&rows, &(0..count).collect::<Vec<_>>(), &mut all, &(start..start + count).collect::<Vec<_>>())?;
            start += count;
        }
        Ok((Some(all.reshape(&[total, tile[0], tile[1], tile[2]])?), items))
    }

    /// How many placeholder tokens each item of `media` takes in the input ids (its packed feature rows), from the
    /// pixels' shapes and the images' sizes alone: what a prompt's `<image>` / `<video>` expands to. The pixels are
    /// checked as [`LlavaOnevisionModel::forward`] checks them.
    pub fn placeholder_counts(&self, media: &[MediaInput<'_>]) -> Result<Vec<usize>> {
        let patches = self.vision_tower.config.num_patches();
        self.media_items(media)?.iter().map(|item| item.packed_rows(&self.packing, patches)).collect()
    }

    /// Forward over `batch`, keeping what [`LlavaOnevisionModel::backward`] needs. Everything is checked (the
    /// pixels' shapes, the placeholder counts against the media's packed rows) before the tower runs.
    pub fn forward(&self, batch: &LlavaBatch<'_>, opts: ForwardOptions) -> Result<LlavaPass> {
        let mut inputs = self.embed(batch, opts, !self.vision_tower_frozen, true)?;
        let mut views = std::mem::take(&mut inputs.language_model).into_iter();
        let arena: LentViews<'_> = (&mut views, inputs.lease.clone());
        let lm = self.language_model.forward_embeds_in(&inputs.embeds, batch.mask, opts, arena)?;
        Ok(LlavaPass { lm, inputs })
    }

    /// The language model's input embeddings of `batch`: token embeddings with the packed vision features at the
    /// placeholders, in the pass's arena ([`super::pass_arena`]), which also holds the language model's views when
    /// `language_model` says so; the tower keeps its activations for a backward only when `tower_backward` says so.
    fn embed(
        &self,
        batch: &LlavaBatch<'_>,
        opts: ForwardOptions,
        tower_backward: bool,
        language_model: bool,
    ) -> Result<InputsProvenance> {
        let &[n, t] = check::rank("ids", batch.ids, 2)? else { unreachable!() };
        check::integer("ids", batch.ids)?;
        check::non_empty("the batch (N·T)", n * t)?;
        // Checked here too so that a bad mask is refused before the tower runs.
        check::integer("mask", batch.mask)?;
        check::shape("mask", batch.mask, &[n, t])?;
        let (pixels, media) = self.gather_media(batch.media)?;
        let patches = self.vision_tower.config.num_patches();
        let tiles = media.iter().map(Media::tiles).sum();
        let plan = PackingPlan::new(&self.packing, &media, [tiles, patches])?;
        let placeholders = self.placeholders();
        let scatter = ScatterMap::new(batch.ids, placeholders, &plan)?;

        let host = host_ids(batch.ids)?;
        let lookup: Vec<i64> =
            host.iter().map(|&id| if id == placeholders.image || id == placeholders.video { 0 } else { id }).collect();
        let device = self.device();
        let lookup_ids = Tensor::from_slice(&lookup, &[n, t], device)?;
        let shape = PassShape { tokens: (n, t), tiles, packed_rows: plan.rows(), opts, tower_backward, language_model };
        let parts =
            Parts { tower: &self.vision_tower, language_model: &self.language_model, dtype: self.dtype(), device };
        // The views go into the provenance (or the passes made from it) beside a clone of the lease, dropped before it.
        // SAFETY: that drop order, and the overlay used in turn: the vision scratch here and in the backward after
        // the language model's pass is consumed, the language model's views only by that pass.
        let PassViews { vision, mut embeds, language_model, lease } =
            unsafe { pass_arena::take(&self.arena, &parts, &shape)? };
        embedding_into(&self.language_model.weights.embed_tokens, &lookup_ids, &mut embeds)?;
        let vision = match (pixels, vision) {
            (Some(pixels), Some(views)) => {
                Some(self.encode_media(&pixels, views, opts, &lease, &plan, &scatter, &mut embeds)?)
            }
            _ => None,
        };
        let ids = Tensor::from_slice(&host, &[n, t], Device::Cpu)?;
        Ok(InputsProvenance { vision, plan, scatter, lookup_ids, ids, embeds, language_model, lease })
    }

    /// The tower, the projector and the packing over `pixels` in the arena's vision `views`, the packed features
    /// scattered into `embeds`.
    #[allow(clippy::too_many_arguments)]
    fn encode_media(
        &self,
        pixels: &Tensor,
        views: VisionViews,
        opts: ForwardOptions,
        lease: &Arc<Lease>,
        plan: &PackingPlan,
        scatter: &ScatterMap,
        embeds: &mut Tensor,
    ) -> Result<VisionPass> {
        let VisionViews {
            tower,
            features,
            mut projector,
            mut projected,
            mut packed,
            grad_packed,
            grad_projected,
            projector_grads,
            grad_features,
        } = views;
        let mut tower_views = tower.into_iter();
        let arena: LentViews<'_> = (&mut tower_views, lease.clone());
        let tower = match features {
            None => TowerOutput::Pass(Box::new(self.vision_tower.forward_in(pixels, opts, arena)?)),
            Some(mut features) => {
                self.vision_tower.encode_in(pixels, arena, &mut features)?;
                TowerOutput::Frozen(features)
            }
        };
        self.projector.forward_into(tower.features(), &mut projector, &mut projected)?;
        pack_into(plan, &projected, &self.image_newline, &mut packed)?;
        scatter.scatter(&packed, embeds)?;
        Ok(VisionPass { tower, projector, grad_packed, grad_projected, projector_grads, grad_features })
    }

    /// The new tokens after one prompt `ids` (with its placeholders) and its `media`, greedy or sampled as `cfg`
    /// says, with the KV cache: the media are encoded once, in the prefill from the prompt's embeddings.
    pub fn generate(&self, ids: &[i64], media: &[MediaInput<'_>], cfg: &GenerationConfig) -> Result<Vec<u32>> {
        Ok(self.generate_with_prefix(ids, media, &[Vec::new()], cfg)?.remove(0))
    }

    /// The new tokens after `prefix + suffixes[i]` for each i, where the prefix `ids` holds the placeholders of
    /// `media`: the media are encoded and the prefix prefilled once, and its keys and values forked to every
    /// continuation (K answers to one image and question).
    pub fn generate_with_prefix(
        &self,
        ids: &[i64],
        media: &[MediaInput<'_>],
        suffixes: &[Vec<u32>],
        cfg: &GenerationConfig,
    ) -> Result<Vec<Vec<u32>>> {
        let embeds = self.prompt_embeds(ids, media)?;
        let lm = &self.language_model;
        let mut cfg = cfg.clone();
        // An answer never holds a media placeholder (a vocabulary id in transformers' layout; LLaVA-NeXT's -200 is
        // none).
        let placeholders = self.placeholders();
        cfg.suppress_tokens
            .extend([placeholders.image, placeholders.video].into_iter().filter_map(|id| u32::try_from(id).ok()));
        generate_with_prefilled_prefix(lm, ids.len(), |cache| lm.extend_embeds(cache, &embeds), suffixes, &cfg)
    }

    /// The input embeddings `[1,T,H]` of one prompt `ids` with the placeholders of `media` (the media encoded and
    /// spliced in), for a prefill through [`Qwen2Model::extend_embeds`].
    pub fn prompt_embeds(&self, ids: &[i64], media: &[MediaInput<'_>]) -> Result<Tensor> {
        let ids = Tensor::from_slice(ids, &[1, ids.len()], Device::Cpu)?;
        let mask = Tensor::from_slice(&vec![1i64; ids.numel()], ids.shape(), Device::Cpu)?;
        let inputs =
            self.embed(&LlavaBatch { ids: &ids, mask: &mask, media }, ForwardOptions::default(), false, false)?;
        inputs.embeds.try_clone()
    }

    /// The logits `[N,T,V]` of a pass, in the model's dtype.
    pub fn logits(&self, pass: &LlavaPass) -> Result<Tensor> {
        self.language_model.logits(&pass.lm)
    }

    /// Whether the tower needs no gradient ([`LlavaOnevisionModel::set_vision_tower_frozen`]).
    pub fn vision_tower_frozen(&self) -> bool {
        self.vision_tower_frozen
    }

    /// Marks the vision tower as frozen (every one of its parameters left untrained) or not. A frozen tower's
    /// forward keeps no activations ([`SiglipVisionTower::encode`]) and the backward stops at the projector: the
    /// projector, the newline and the language model get the same gradients bitwise, the tower's buffers are
    /// allocated by [`LlavaOnevisionModel::zero_gradients`] as always but never written (zero), so an optimizer
    /// that freezes the tower's parameters steps exactly as with the full backward, for about a quarter less work.
    pub fn set_vision_tower_frozen(&mut self, frozen: bool) {
        self.vision_tower_frozen = frozen;
    }

    /// Zeroed gradient buffers for every parameter.
    pub fn zero_gradients(&self) -> Result<LlavaGradients> {
        let (vision_tower, projector, image_newline) = self.zero_vision_gradients()?;
        Ok(LlavaGradients {
            vision_tower,
            projector,
            image_newline,
            language_model: Qwen2Gradients {
                weights: self.language_model.weights.zeros_like()?,
                inputs_embeds: Tensor::zeros(&[1, 1, self.config.text.hidden_size], self.dtype(), self.device())?,
            },
        })
    }

    /// Zero gradients of the tower, the projector and the newline.
    #[allow(clippy::type_complexity)]
    fn zero_vision_gradients(&self) -> Result<(SiglipWeights, [(Tensor, Tensor); 2], Tensor)> {
        let zeros = |t: &Tensor| Tensor::zeros(t.shape(), t.dtype(), t.device());
        let w = self.projector.weights();
        let projector =
            [(zeros(&w.linear_1.0)?, zeros(&w.linear_1.1)?), (zeros(&w.linear_2.0)?, zeros(&w.linear_2.1)?)];
        Ok((self.vision_tower.weights.zeros_like()?, projector, zeros(&self.image_newline)?))
    }

    /// The mean next-token loss over the real, non-placeholder tokens (transformers' labels: −100 at padding and at
    /// the placeholders), through the fused head kernels; the head's gradient goes straight into `out`.
    pub fn causal_lm_loss_into(
        &self,
        pass: &LlavaPass,
        cfg: &FusedLinearConfig,
        out: &mut LlavaGradients,
    ) -> Result<CausalLmLoss> {
        let placeholders = self.placeholders();
        let excluded = [placeholders.image, placeholders.video];
        self.language_model.causal_lm_loss_into_excluding(
            &pass.lm,
            &pass.inputs.ids,
            &excluded,
            cfg,
            &mut out.language_model,
        )
    }

    /// The next-token loss on explicit `labels` `[N,T]` aligned with the ids (an SFT batch's: −100 on prompts,
    /// padding and placeholders), as [`Qwen2Model::causal_lm_loss_into_labels`] computes it on the language model.
    pub fn causal_lm_loss_into_labels(
        &self,
        pass: &LlavaPass,
        labels: &[i64],
        cfg: &FusedLinearConfig,
        out: &mut LlavaGradients,
    ) -> Result<CausalLmLoss> {
        self.language_model.causal_lm_loss_into_labels(&pass.lm, labels, cfg, &mut out.language_model)
    }

    /// `out`'s input-embedding buffer resized to the pass's `[N,T,H]` when it holds another batch's.
    fn fit_inputs_embeds(&self, pass: &ForwardPass, out: &mut Qwen2Gradients) -> Result<()> {
        let stream = pass.hidden().shape();
        if out.inputs_embeds.shape() != stream {
            out.inputs_embeds = Tensor::zeros(stream, self.dtype(), self.device())?;
        }
        Ok(())
    }

    /// The gradient of every parameter from the gradient of the pass's outputs, into `out`'s buffers (every element
    /// written, except that a head gradient [`LlavaOnevisionModel::causal_lm_loss_into`] left in the buffers is
    /// kept, and that a frozen tower's buffers are not touched: they keep what they held, zero from
    /// [`LlavaOnevisionModel::zero_gradients`]). The vision buffers are checked before anything is written.
    pub fn backward_into(&self, pass: LlavaPass, grads: OutputGrads, out: &mut LlavaGradients) -> Result<()> {
        let LlavaPass { lm, inputs: InputsProvenance { mut vision, plan, scatter, lookup_ids, .. } } = pass;
        self.check_vision_gradients(out)?;
        self.fit_inputs_embeds(&lm, &mut out.language_model)?;
        self.language_model.backward_into(lm, grads, &mut out.language_model)?;
        let lm_grads = &mut out.language_model;
        let inputs_embeds = &mut lm_grads.inputs_embeds;
        // The placeholder rows go to the packed features; the rest is the token embeddings' gradient. (A batch
        // without media has no placeholder.)
        if let Some(vision) = vision.as_mut() {
            scatter.backward_into(inputs_embeds, &mut vision.grad_packed)?;
        }
        let vocab = self.config.text.vocab_size;
        embedding_backward_accumulate(inputs_embeds, &lookup_ids, vocab, &mut lm_grads.weights.embed_tokens)?;
        let Some(VisionPass {
            tower,
            projector: acts,
            grad_packed,
            mut grad_projected,
            mut projector_grads,
            mut grad_features,
        }) = vision
        else {
            // A batch without media: the vision parameters get zero gradients.
            let [(w1, b1), (w2, b2)] = &mut out.projector;
            let tower = if self.vision_tower_frozen { Vec::new() } else { out.vision_tower.named_mut() };
            let vision = self.layout.named(tower, [(w1, b1), (w2, b2)], &mut out.image_newline, Vec::new());
            return vision.into_iter().try_for_each(|(_, t)| t.fill_zeros());
        };
        pack_backward_into(&plan, &grad_packed, &mut grad_projected, &mut out.image_newline)?;
        let features = tower.features();
        let scratch = Some(&mut projector_grads);
        self.projector.backward_into(
            &grad_projected,
            features,
            &acts,
            &mut grad_features,
            &mut out.projector,
            scratch,
        )?;
        drop((grad_packed, grad_projected, acts, projector_grads));
        match tower {
            TowerOutput::Pass(pass) => {
                self.vision_tower.backward_weights_into(*pass, &grad_features, &mut out.vision_tower, None)
            }
            TowerOutput::Frozen(_) => Ok(()),
        }
    }

    /// `out`'s vision buffers (the tower's, the projector's, the newline's) against the parameters.
    fn check_vision_gradients(&self, out: &LlavaGradients) -> Result<()> {
        let [(w1, b1), (w2, b2)] = &out.projector;
        let grads = self.layout.named(out.vision_tower.named(), [(w1, b1), (w2, b2)], &out.image_newline, Vec::new());
        let params = self.named_parameters();
        check_gradient_buffers(&params[..grads.len()], &grads)
    }

    /// [`LlavaOnevisionModel::backward`] from the gradient of materialised logits `[N,T,V]`.
    pub fn backward_from_logits(&self, pass: LlavaPass, grad_logits: &Tensor) -> Result<LlavaGradients> {
        let grads = self.language_model.output_grads_from_logits(&pass.lm, grad_logits)?;
        self.backward(pass, grads)
    }

    /// [`LlavaOnevisionModel::backward_into`] into fresh buffers.
    pub fn backward(&self, pass: LlavaPass, grads: OutputGrads) -> Result<LlavaGradients> {
        let mut out = self.zero_gradients()?;
        self.backward_into(pass, grads, &mut out)?;
        Ok(out)
    }

    /// `(checkpoint name, gradient)` for every parameter of `grads`, under this model's layout.
    pub fn named_gradients<'a>(&self, grads: &'a LlavaGradients) -> Vec<(String, &'a Tensor)> {
        let [(w1, b1), (w2, b2)] = &grads.projector;
        let projector = [(w1, b1), (w2, b2)];
        let language = grads.language_model.weights.named();
        self.layout.named(grads.vision_tower.named(), projector, &grads.image_newline, language)
    }

    /// `(checkpoint name, parameter)` for every parameter, in the order of
    /// [`LlavaOnevisionModel::named_gradients`].
    pub fn named_parameters(&self) -> Vec<(String, &Tensor)> {
        let w = self.projector.weights();
        let projector = [(&w.linear_1.0, &w.linear_1.1), (&w.linear_2.0, &w.linear_2.1)];
        let language = self.language_model.weights.named();
        self.layout.named(self.vision_tower.weights.named(), projector, &self.image_newline, language)
    }

    /// [`LlavaOnevisionModel::named_parameters`], writable: what an optimizer steps.
    pub fn named_parameters_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        let w = self.projector.weights_mut();
        let projector = [(&mut w.linear_1.0, &mut w.linear_1.1), (&mut w.linear_2.0, &mut w.linear_2.1)];
        let language = self.language_model.weights.named_mut();
        self.layout.named(self.vision_tower.weights.named_mut(), projector, &mut self.image_newline, language)
    }
}
