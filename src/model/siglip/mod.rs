//! The SigLIP vision tower of LLaVA-OneVision (and so of the UnifiedReward judge), with hand-written forward and
//! backward passes, loaded from any checkpoint that holds it under a prefix, and equal to transformers'
//! `SiglipVisionModel` up to the selected encoder layer:
//!
//! ```text
//! x₀ = patches(pixels)·Kᵀ + b + position      the conv with stride = kernel as a product (patches.rs)
//! xᵢ = encoder_layer(xᵢ₋₁)                     pre-LayerNorm attention and GELU MLP, every patch sees every patch
//! features = x_layers                         no post_layernorm, no head (LLaVA reads a layer's output)
//! ```
//!
//! How a LLaVA config's feature layer maps to the number of layers to run is in [`layers_for_feature_layer`] (both
//! the Hugging Face and the original LLaVA-NeXT conventions). The tower keeps each layer's activations in one arena
//! (or, with [`ForwardOptions::recompute`], only each layer's input), which it keeps between passes like
//! [`crate::model::Qwen2Model`] (inside LLaVA, the same slots lie in the whole model's arena, the tower's scratch
//! overlaid on the language model's activations). The backward gives the gradient of every parameter, under the checkpoint's names
//! relative to the tower's prefix, and of the pixels.

mod activations;
mod config;
mod feature_layer;
mod layer;
mod patches;
mod weights;

pub use config::{SiglipVisionConfig, SO400M_PATCH14_384};
pub use feature_layer::layers_for_feature_layer;
pub use weights::{siglip_weight_names, SiglipLayerWeights, SiglipWeights};

use crate::model::views::{check_gradient_buffers, with_shape};
use crate::model::{ForwardOptions, WeightStore};
use crate::ops::check;
use crate::ops::layernorm::LayerNormConfig;
use crate::ops::linear::{linear_backward_into, linear_into, linear_params_backward_into};
use crate::ops::residual::add_in_place;
use crate::runtime::arena::{ArenaHome, Lease, LentViews, Slot};
use crate::runtime::{DType, Device, Tensor};
use crate::{Error, Result};
use activations::{Activations, InferenceActivations, Shapes};
use layer::{Dims, LayerContext};
use patches::{patches_to_pixels, pixels_to_patches, PatchGrid};

/// A SigLIP vision tower running its first `layers` encoder layers, with its weights in one compute dtype on one
/// device.
#[derive(Debug)]
pub struct SiglipVisionTower {
    pub config: SiglipVisionConfig,
    pub weights: SiglipWeights,
    /// The last pass's activation arena, reused by the next.
    arena: ArenaHome,
}

/// A forward pass over a batch of images, holding what the backward needs. Dropping it hands its activation arena
/// back to the tower for the next pass (or, in a multimodal model's pass, lets that pass's arena go back once its
/// other parts are done).
#[derive(Debug)]
pub struct TowerPass {
    grid: PatchGrid,
    dims: Dims,
    recompute: bool,
    /// `[N,1]` ones: the position embeddings are broadcast over the batch as the product `ones·positionᵀ`, and
    /// their gradient summed over it as `gradᵀ·ones` (the linear op's forward and weight gradient).
    ones: Tensor,
    /// `[N,P]` ones: no patch is padding.
    mask: Tensor,
    acts: Activations,
}

impl TowerPass {
    /// `[N, P, hidden]`: the output of the tower's last layer (the embeddings when it runs none), before any
    /// post-norm.
    pub fn features(&self) -> &Tensor {
        self.acts.xs.last().expect("a pass holds at least the embeddings")
    }

    /// Bytes of activations kept for the backward and of the backward's scratch.
    pub fn activation_bytes(&self) -> usize {
        self.acts.size_in_bytes()
    }
}

/// Gradients of every parameter (under the same layout and names as the weights) and of the pixels.
#[derive(Debug)]
pub struct SiglipGradients {
    pub weights: SiglipWeights,
    /// `[N,C,H,W]` in the tower's dtype (zero for pixels past the last whole patch, which the tower does not read).
    pub pixel_values: Tensor,
}

impl SiglipVisionTower {
    /// A tower over `weights` (its layer count is how many layers run), which must all have one float dtype and
    /// one device and the shapes of `config`.
    pub fn new(config: SiglipVisionConfig, weights: SiglipWeights) -> Result<SiglipVisionTower> {
        config.validate()?;
        weights::check_layers(&config, weights.layers.len())?;
        let (dtype, device) = (weights.patch_embedding.dtype(), weights.patch_embedding.device());
        let expected = siglip_weight_names(&config, weights.layers.len());
        for ((name, t), (_, shape)) in weights.named().into_iter().zip(&expected) {
            if t.dtype() != dtype || t.device() != device || !dtype.is_float() {
                return Err(Error::InvalidArgument(format!(
                    "weight `{name}` is {} on {}, the patch embedding {dtype} on {device}: a tower has one float \
                     dtype and device",
                    t.dtype(),
                    t.device()
                )));
            }
            if t.shape() != shape.as_slice() {
                return Err(Error::Shape(format!("weight `{name}` is {:?}, the config needs {shape:?}", t.shape())));
            }
        }
        Ok(SiglipVisionTower { config, weights, arena: ArenaHome::default() })
    }

    /// Loads the embeddings and the first `layers` encoder layers from `store` under `prefix` (for example
    /// `model.vision_tower.vision_model.` in a Hugging Face llava_onevision checkpoint,
    /// `model.vision_tower.vision_tower.vision_model.` in an original LLaVA-NeXT one, `vision_model.` in a SigLIP
    /// checkpoint), converted to `dtype` on `device`. Later layers, `post_layernorm` and `head` may be absent.
    pub fn load(
        store: &WeightStore,
        prefix: &str,
        config: &SiglipVisionConfig,
        layers: usize,
        dtype: DType,
        device: Device,
    ) -> Result<SiglipVisionTower> {
        config.validate()?;
        let weights = SiglipWeights::load(store, prefix, config, layers, dtype, device)?;
        SiglipVisionTower::new(config.clone(), weights)
    }

    /// The compute dtype (that of the weights).
    pub fn dtype(&self) -> DType {
        self.weights.patch_embedding.dtype()
    }

    pub fn device(&self) -> Device {
        self.weights.patch_embedding.device()
    }

    /// How many encoder layers run.
    pub fn layers(&self) -> usize {
        self.weights.layers.len()
    }

    fn layer_context<'a>(&self, dims: Dims, mask: &'a Tensor) -> Result<LayerContext<'a>> {
        Ok(LayerContext {
            dims,
            norm: LayerNormConfig { eps: self.config.layer_norm_eps as f32 },
            gelu: self.config.gelu()?,
            mask,
        })
    }

    /// The patch embedding's kernel `[hidden, C,p,p]` read as the matrix `[hidden, C·p·p]` (a copy: a few MB).
    fn kernel_matrix(&self) -> Result<Tensor> {
        let kernel = &self.weights.patch_embedding;
        kernel.try_clone()?.reshape(&[kernel.shape()[0], self.config.patch_dim()])
    }

    /// The position embeddings `[P, hidden]` read as the column `[P·hidden, 1]` (a copy).
    fn position_column(&self) -> Result<Tensor> {
        let positions = &self.weights.position_embedding;
        positions.try_clone()?.reshape(&[positions.numel(), 1])
    }

    /// The batch geometry of `pixel_values`, which must be `[N, C, image_size, image_size]` floats with N ≥ 1.
    fn grid(&self, pixel_values: &Tensor) -> Result<PatchGrid> {
        check::float("pixel_values", pixel_values)?;
        let c = &self.config;
        let &[n, ..] = check::rank("pixel_values", pixel_values, 4)? else { unreachable!() };
        check::non_empty("pixel_values (images)", n)?;
        let grid = PatchGrid { n, channels: c.num_channels, image: c.image_size, patch: c.patch_size };
        if pixel_values.shape() != grid.pixels_shape() {
            return Err(Error::Shape(format!(
                "`pixel_values` is {:?}, the vision tower takes [N, {}, {}, {}] (num_channels, image_size, image_size)",
                pixel_values.shape(),
                c.num_channels,
                c.image_size,
                c.image_size
            )));
        }
        Ok(grid)
    }

    /// Forward over `pixel_values` `[N, C, image_size, image_size]` (any float dtype, on any device; converted to
    /// the tower's), keeping what [`SiglipVisionTower::backward`] needs.
    pub fn forward(&self, pixel_values: &Tensor, opts: ForwardOptions) -> Result<TowerPass> {
        self.run(pixel_values, opts, None)
    }

    /// [`SiglipVisionTower::forward`] with the activations in the next views of an arena the caller laid out (with
    /// [`SiglipVisionTower::activation_slots`] of these images and `opts`: the kept slots' views, then the
    /// scratch's), which `lease` keeps: a multimodal model's one arena for its whole pass.
    pub(crate) fn forward_in(
        &self,
        pixel_values: &Tensor,
        opts: ForwardOptions,
        arena: LentViews<'_>,
    ) -> Result<TowerPass> {
        self.run(pixel_values, opts, Some(arena))
    }

    /// The arena slots of a training pass over `images` images under `opts`: those the backward reads, and the
    /// tower's scratch, used only while the tower runs (in its forward and its backward).
    pub(crate) fn activation_slots(&self, images: usize, opts: ForwardOptions) -> (Vec<Slot>, Vec<Slot>) {
        self.shapes(images, opts).slots()
    }

    /// The arena slots of [`SiglipVisionTower::encode_in`] over `images` images.
    pub(crate) fn inference_slots(&self, images: usize) -> Vec<Slot> {
        let shapes = self.shapes(images, ForwardOptions::default());
        InferenceActivations::slots(&shapes.dims, &shapes.patches, shapes.dtype)
    }

    fn shapes(&self, images: usize, opts: ForwardOptions) -> Shapes {
        let c = &self.config;
        let grid = PatchGrid { n: images, channels: c.num_channels, image: c.image_size, patch: c.patch_size };
        Shapes {
            dims: Dims::new(c, images),
            patches: grid.patches_shape(),
            dtype: self.dtype(),
            layers: self.layers(),
            recompute: opts.recompute,
        }
    }

    /// The forward, its activations in the views `arena` gives, or in the tower's own arena.
    fn run(&self, pixel_values: &Tensor, opts: ForwardOptions, arena: Option<LentViews<'_>>) -> Result<TowerPass> {
        let grid = self.grid(pixel_values)?;
        let (dtype, device) = (self.dtype(), self.device());
        let shapes = self.shapes(grid.n, opts);
        let dims = shapes.dims;
        let ones = Tensor::from_f32(&vec![1.0; grid.n], &[grid.n, 1], dtype, device)?;
        let mask = Tensor::from_slice(&vec![1i32; grid.n * dims.t], &[grid.n, dims.t], device)?;
        let mut acts = match arena {
            Some((mut views, lease)) => Activations::from_views(&mut views, lease, shapes)?,
            None => {
                let (kept, scratch) = shapes.slots();
                // SAFETY: the views go into the activations, beside the lease and dropped before it (field order);
                // the layout has no overlay.
                let (views, lease) = unsafe { Lease::take(&self.arena, [kept, scratch].concat(), device)? };
                Activations::from_views(&mut views.into_iter(), lease, shapes)?
            }
        };

        self.embed_into(&grid, pixel_values, &ones, &mut acts.patches, &mut acts.grads.tmp, &mut acts.xs[0])?;
        let ctx = self.layer_context(dims, &mask)?;
        for (l, w) in self.weights.layers.iter().enumerate() {
            let (done, next) = acts.xs.split_at_mut(l + 1);
            let layer_acts = &mut acts.layers[if opts.recompute { 0 } else { l }];
            layer::forward_into(w, &ctx, &done[l], layer_acts, &mut next[0])?;
        }
        Ok(TowerPass { grid, dims, recompute: opts.recompute, ones, mask, acts })
    }

    /// The features `[N, P, hidden]` of `pixel_values` (as [`SiglipVisionTower::forward`] takes them) without
    /// keeping anything for a backward: two residual-stream buffers and one layer's scratch instead of every layer's
    /// activations. The values are those of `forward(..).features()` bitwise (the same kernels in the same order).
    /// What a frozen tower runs.
    pub fn encode(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let grid = self.grid(pixel_values)?;
        let slots = self.inference_slots(grid.n);
        // SAFETY: the views go into the activations, beside the lease and dropped before it (field order); the
        // layout has no overlay.
        let (views, lease) = unsafe { Lease::take(&self.arena, slots, self.device())? };
        let mut acts = InferenceActivations::from_views(&mut views.into_iter(), lease)?;
        self.encode_layers(&grid, pixel_values, &mut acts)?.try_clone()
    }

    /// [`SiglipVisionTower::encode`] into `features` `[N, P, hidden]`, with the scratch in the next views of an
    /// arena the caller laid out with [`SiglipVisionTower::inference_slots`], which `lease` keeps.
    pub(crate) fn encode_in(&self, pixel_values: &Tensor, arena: LentViews<'_>, features: &mut Tensor) -> Result<()> {
        let grid = self.grid(pixel_values)?;
        let (mut views, lease) = arena;
        let mut acts = InferenceActivations::from_views(&mut views, lease)?;
        features.copy_from(self.encode_layers(&grid, pixel_values, &mut acts)?)
    }

    /// The encoder over `pixel_values` (checked into `grid`) in `acts`; returns the buffer holding the features.
    fn encode_layers<'a>(
        &self,
        grid: &PatchGrid,
        pixel_values: &Tensor,
        acts: &'a mut InferenceActivations,
    ) -> Result<&'a Tensor> {
        let (dtype, device) = (self.dtype(), self.device());
        let dims = Dims::new(&self.config, grid.n);
        let ones = Tensor::from_f32(&vec![1.0; grid.n], &[grid.n, 1], dtype, device)?;
        let mask = Tensor::from_slice(&vec![1i32; grid.n * dims.t], &[grid.n, dims.t], device)?;
        let [x, out] = &mut acts.xs;
        let (mut x, mut out) = (x, out);
        self.embed_into(grid, pixel_values, &ones, &mut acts.patches, &mut acts.broadcast, x)?;
        let ctx = self.layer_context(dims, &mask)?;
        for w in &self.weights.layers {
            layer::forward_into(w, &ctx, x, &mut acts.layer, out)?;
            std::mem::swap(&mut x, &mut out);
        }
        Ok(x)
    }

    /// The embeddings `x₀ = patches·Kᵀ + b + ones·positionᵀ` of `pixel_values` into `x0`, cutting the pixels into
    /// `patches` and broadcasting the positions in `broadcast` (both scratch, `[N,P,·]`).
    fn embed_into(
        &self,
        grid: &PatchGrid,
        pixel_values: &Tensor,
        ones: &Tensor,
        patches: &mut Tensor,
        broadcast: &mut Tensor,
        x0: &mut Tensor,
    ) -> Result<()> {
        pixels_to_patches(grid, pixel_values, patches)?;
        linear_into(patches, &self.kernel_matrix()?, Some(&self.weights.patch_bias), x0)?;
        let positions = self.position_column()?;
        with_shape(broadcast, &[grid.n, positions.numel()], |b| linear_into(ones, &positions, None, b))?;
        add_in_place(x0, broadcast)
    }

    /// The gradient of every parameter and of the pixels, from the gradient of the pass's features `[N,P,hidden]`.
    pub fn backward(&self, pass: TowerPass, grad_features: &Tensor) -> Result<SiglipGradients> {
        let mut out = SiglipGradients {
            weights: self.weights.zeros_like()?,
            pixel_values: Tensor::zeros(&pass.grid.pixels_shape(), self.dtype(), self.device())?,
        };
        self.backward_into(pass, grad_features, &mut out)?;
        Ok(out)
    }

    /// [`SiglipVisionTower::backward`] into gradient buffers the caller keeps across steps (every element is
    /// written).
    pub fn backward_into(&self, pass: TowerPass, grad_features: &Tensor, out: &mut SiglipGradients) -> Result<()> {
        self.backward_weights_into(pass, grad_features, &mut out.weights, Some(&mut out.pixel_values))
    }

    /// The parameters' gradients into `weights` and, when `grad_pixels` is given, the pixels' into it (every
    /// element written); without it the pixels' gradient is neither computed nor stored (a model whose pixels are
    /// data).
    pub fn backward_weights_into(
        &self,
        mut pass: TowerPass,
        grad_features: &Tensor,
        weights: &mut SiglipWeights,
        grad_pixels: Option<&mut Tensor>,
    ) -> Result<()> {
        self.check_gradients(&pass, grad_features, weights, grad_pixels.as_deref())?;
        let TowerPass { grid, dims, recompute, ones, mask, acts } = &mut pass;
        let g = &mut acts.grads;
        g.stream.copy_from(grad_features)?;
        let ctx = self.layer_context(*dims, mask)?;
        for (l, w) in self.weights.layers.iter().enumerate().rev() {
            let x = &acts.xs[l];
            let layer_acts = if *recompute {
                let (scratch, spare) = (&mut acts.layers[0], acts.spare.as_mut().expect("recompute keeps a spare"));
                layer::forward_into(w, &ctx, x, scratch, spare)?;
                scratch
            } else {
                &mut acts.layers[l]
            };
            layer::backward_into(w, &ctx, x, layer_acts, g, &mut weights.layers[l])?;
        }

        // Embeddings: x₀ = patches·Kᵀ + b + ones·positionᵀ.
        let w = &self.weights;
        let kernel = self.kernel_matrix()?;
        let kernel_shape = kernel.shape().to_vec();
        let patches = &acts.patches;
        with_shape(&mut weights.patch_embedding, &kernel_shape, |gk| {
            let grad_bias = Some(&mut weights.patch_bias);
            match &grad_pixels {
                Some(_) => linear_backward_into(
                    &g.stream,
                    patches,
                    &kernel,
                    Some(&w.patch_bias),
                    &mut acts.grad_patches,
                    gk,
                    grad_bias,
                ),
                None => linear_params_backward_into(&g.stream, patches, &kernel, Some(&w.patch_bias), gk, grad_bias),
            }
        })?;
        let positions = self.position_column()?;
        with_shape(&mut g.stream, &[grid.n, positions.numel()], |gs| {
            with_shape(&mut weights.position_embedding, positions.shape(), |gp| {
                linear_params_backward_into(gs, ones, &positions, None, gp, None)
            })
        })?;
        match grad_pixels {
            Some(grad_pixels) => patches_to_pixels(grid, &acts.grad_patches, grad_pixels),
            None => Ok(()),
        }
    }

    /// Shapes, dtypes and devices of a backward's inputs and outputs.
    fn check_gradients(
        &self,
        pass: &TowerPass,
        grad_features: &Tensor,
        weights: &SiglipWeights,
        grad_pixels: Option<&Tensor>,
    ) -> Result<()> {
        let (dtype, device) = (self.dtype(), self.device());
        check::shape("grad_features", grad_features, &pass.dims.stream())?;
        check::dtype("grad_features", grad_features, dtype)?;
        check::same_device(&[
            ("grad_features", grad_features),
            ("the tower's weights", &self.weights.patch_embedding),
        ])?;
        if let Some(grad_pixels) = grad_pixels {
            check::output("pixel_values gradient", grad_pixels, &pass.grid.pixels_shape(), dtype, device)?;
        }
        check_gradient_buffers(&self.weights.named(), &weights.named())
    }
}
