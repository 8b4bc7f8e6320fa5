//! The Qwen2 decoder (the language half of the reward model and of the policies it judges), with hand-written
//! forward and backward passes, loaded from Hugging Face checkpoints and equal to transformers' `Qwen2ForCausalLM`.
//!
//! Training: [`Qwen2Model::forward`] keeps each layer's activations in one arena (or, with
//! [`ForwardOptions::recompute`], only each layer's input, recomputing the rest in the backward); the final hidden
//! states go to the fused log-prob and DPO kernels (or to [`Qwen2Model::causal_lm_loss`], or to materialised
//! logits), whose gradient [`Qwen2Model::backward`] turns into the gradient of every parameter and of the input
//! embeddings. The arena outlives the pass: the model keeps it for the next one (a multimodal model lays the same
//! slots out in its own arena for its whole pass: [`crate::model::llava`]). Inference:
//! [`Qwen2Model::extend`] runs new tokens against a [`KvCache`], which a prompt encoded once can fork into many
//! rows ([`KvCache::fork`]).

mod activations;
mod cache;
mod layer;
mod loss;
mod weights;

pub use cache::KvCache;
pub use loss::{CausalLmLoss, LabelExtras, LabelLogps};
pub use weights::{LayerWeights, Qwen2Weights};

use crate::model::views::check_gradient_buffers;
use crate::model::{LoadOptions, LoadReport, Qwen2Config, WeightStore};
use crate::ops::check;
use crate::ops::embedding::{embedding_backward_accumulate, embedding_backward_into, embedding_into};
use crate::ops::linear::{linear, linear_backward};
use crate::ops::residual::add_in_place;
use crate::ops::rmsnorm::{rmsnorm_backward_into, rmsnorm_into, RmsNormConfig};
use crate::ops::rope::RopeConfig;
use crate::runtime::arena::{ArenaHome, Lease, LentViews, Slot};
use crate::runtime::{DType, Device, Tensor};
use crate::{Error, Result};
use activations::Activations;
use layer::{Dims, LayerContext};
use std::path::Path;

/// A Qwen2 decoder with its weights in one compute dtype on one device.
#[derive(Debug)]
pub struct Qwen2Model {
    pub config: Qwen2Config,
    pub weights: Qwen2Weights,
    /// The last pass's activation arena, reused by the next.
    arena: ArenaHome,
}

/// How much the forward keeps for the backward.
#[derive(Clone, Copy, Debug, Default)]
pub struct ForwardOptions {
    /// Keep only each layer's input and recompute the layer in the backward: activation memory drops from about
    /// `N·T·(5·H + 3·I + 2·Hkv·d)` values per layer to `N·T·H` (plus one layer's worth, shared), for one more
    /// forward pass of compute.
    pub recompute: bool,
}

/// A forward pass over a batch, holding what the backward needs. Dropping it hands its activation arena back to the
/// model for the next pass (or, in a multimodal model's pass, lets that pass's arena go back once its other parts
/// are done).
#[derive(Debug)]
pub struct ForwardPass {
    /// Token ids [N,T] when the pass started from ids (the embedding backward reads them).
    ids: Option<Tensor>,
    mask: Tensor,
    positions: Tensor,
    dims: Dims,
    recompute: bool,
    acts: Activations,
}

impl ForwardPass {
    /// The final hidden states `[N,T,H]` (after the final norm): the LM head's input.
    pub fn hidden(&self) -> &Tensor {
        &self.acts.norm.y
    }

    /// The attention mask `[N,T]` on the model's device.
    pub fn mask(&self) -> &Tensor {
        &self.mask
    }

    /// Bytes of activations kept for the backward and of the backward's scratch (the arena holding them may be
    /// larger when a larger batch ran before).
    pub fn activation_bytes(&self) -> usize {
        self.acts.size_in_bytes()
    }
}

/// The gradient a loss hands back to the model: of the final hidden states `[N,T,H]` and, when the loss applied the LM
/// head itself (fused kernels, materialised logits), of the head's weight `[V,H]`.
#[derive(Debug)]
pub struct OutputGrads {
    pub hidden: Tensor,
    pub lm_head: HeadGradient,
}

/// The LM head weight's gradient as a loss hands it back.
#[derive(Debug)]
pub enum HeadGradient {
    /// The loss started from the hidden states: the head has no gradient.
    None,
    /// A `[V,H]` gradient of its own.
    Tensor(Tensor),
    /// Already in the head's buffer of the [`Qwen2Gradients`] that [`Qwen2Model::backward_into`] gets (the
    /// embedding's when the head is tied), as [`Qwen2Model::causal_lm_loss_into`] leaves it.
    InBuffers,
}

/// Gradients of every parameter (under the same layout and names as the weights) and of the input embeddings.
#[derive(Debug)]
pub struct Qwen2Gradients {
    pub weights: Qwen2Weights,
    /// `[N,T,H]`: the gradient of the embeddings fed to the first layer (a vision tower's output, for the judge).
    pub inputs_embeds: Tensor,
}

/// Memory held by a model and by one forward pass over a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryReport {
    pub parameters: usize,
    /// Parameter gradients (the same size as the parameters).
    pub gradients: usize,
    /// The pass's activations and the backward's scratch, in the arena.
    pub activations: usize,
}

impl std::fmt::Display for MemoryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: usize| b as f64 / (1 << 20) as f64;
        write!(
            f,
            "parameters {:.2} MiB, gradients {:.2} MiB, activations {:.2} MiB",
            mib(self.parameters),
            mib(self.gradients),
            mib(self.activations)
        )
    }
}

/// Where the first layer's input comes from.
enum Inputs<'a> {
    Ids(&'a Tensor),
    Embeds(&'a Tensor),
}

impl Qwen2Model {
    /// A model over `weights`, which must all have one float dtype and one device.
    pub fn new(config: Qwen2Config, weights: Qwen2Weights) -> Result<Qwen2Model> {
        config.validate()?;
        let (dtype, device) = (weights.embed_tokens.dtype(), weights.embed_tokens.device());
        if let Some((name, t)) = weights.named().into_iter().find(|(_, t)| t.dtype() != dtype || t.device() != device) {
            return Err(Error::InvalidArgument(format!(
                "weight `{name}` is {} on {}, the embeddings {dtype} on {device}: a model has one dtype and device",
                t.dtype(),
                t.device()
            )));
        }
        Ok(Qwen2Model { config, weights, arena: ArenaHome::default() })
    }

    /// Loads `dir`'s `config.json` and safetensors weights (one file or sharded), converted to `dtype` on `device`.
    pub fn load(dir: &Path, dtype: DType, device: Device) -> Result<Qwen2Model> {
        Qwen2Model::load_with(dir, dtype, device, &LoadOptions::default()).map(|(model, _)| model)
    }

    /// [`Qwen2Model::load`] under `options` (lenient about unused tensors, checking finiteness), with what the load
    /// ignored.
    pub fn load_with(
        dir: &Path,
        dtype: DType,
        device: Device,
        options: &LoadOptions,
    ) -> Result<(Qwen2Model, LoadReport)> {
        let config = Qwen2Config::from_file(&dir.join("config.json"))?;
        let store = WeightStore::open(dir)?;
        let (weights, report) = Qwen2Weights::load_with(&store, &config, dtype, device, options)?;
        Ok((Qwen2Model::new(config, weights)?, report))
    }

    /// The compute dtype (that of the weights).
    pub fn dtype(&self) -> DType {
        self.weights.embed_tokens.dtype()
    }

    pub fn device(&self) -> Device {
        self.weights.embed_tokens.device()
    }

    /// Parameter, gradient and activation bytes for `pass`.
    pub fn memory_report(&self, pass: &ForwardPass) -> MemoryReport {
        let parameters = self.weights.size_in_bytes();
        MemoryReport { parameters, gradients: parameters, activations: pass.activation_bytes() }
    }

    fn layer_context<'a>(&self, dims: Dims, positions: &'a Tensor, mask: &'a Tensor) -> LayerContext<'a> {
        LayerContext {
            dims,
            norm: self.norm_config(),
            rope: RopeConfig { theta: self.config.rope_theta as f32 },
            positions,
            mask,
        }
    }

    fn norm_config(&self) -> RmsNormConfig {
        RmsNormConfig { eps: self.config.rms_norm_eps as f32 }
    }

    /// The mask checked against [N,T] and moved to the model's device, with positions 0..T per row (as
    /// transformers numbers a batch without a cache).
    fn mask_and_positions(&self, (n, t): (usize, usize), mask: &Tensor) -> Result<(Tensor, Tensor)> {
        check::integer("mask", mask)?;
        check::shape("mask", mask, &[n, t])?;
        check::non_empty("the batch (N·T)", n * t)?;
        if t > self.config.max_position_embeddings {
            return Err(Error::Shape(format!(
                "sequences of {t} tokens exceed the model's max_position_embeddings ({})",
                self.config.max_position_embeddings
            )));
        }
        let positions: Vec<i64> = (0..n).flat_map(|_| 0..t as i64).collect();
        let device = self.device();
        Ok((mask.to_device(device)?, Tensor::from_slice(&positions, &[n, t], device)?))
    }

    /// Forward over token ids `[N,T]` with an attention mask `[N,T]` (i32 or i64, nonzero = real token; typically right
    /// padding), keeping what [`Qwen2Model::backward`] needs.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor, opts: ForwardOptions) -> Result<ForwardPass> {
        let &[n, t] = check::rank("ids", ids, 2)? else { unreachable!() };
        check::integer("ids", ids)?;
        self.run(Inputs::Ids(ids), (n, t), mask, opts, None)
    }

    /// Forward from input embeddings `[N,T,H]` in the model's dtype (token embeddings with, for the judge, image
    /// features spliced in).
    pub fn forward_embeds(&self, embeds: &Tensor, mask: &Tensor, opts: ForwardOptions) -> Result<ForwardPass> {
        let (n, t) = self.embeds_batch(embeds)?;
        self.run(Inputs::Embeds(embeds), (n, t), mask, opts, None)
    }

    /// [`Qwen2Model::forward_embeds`] with the activations in the next views of an arena the caller laid out
    /// (with [`Qwen2Model::activation_slots`] of this batch and `opts`), which `lease` keeps: a multimodal model's
    /// one arena for its whole pass.
    pub(crate) fn forward_embeds_in(
        &self,
        embeds: &Tensor,
        mask: &Tensor,
        opts: ForwardOptions,
        arena: LentViews<'_>,
    ) -> Result<ForwardPass> {
        let (n, t) = self.embeds_batch(embeds)?;
        self.run(Inputs::Embeds(embeds), (n, t), mask, opts, Some(arena))
    }

    /// The arena slots of a pass over `[n, t]` tokens under `opts`, in the order [`Qwen2Model::forward_embeds_in`]
    /// takes their views.
    pub(crate) fn activation_slots(&self, (n, t): (usize, usize), opts: ForwardOptions) -> Vec<Slot> {
        activations::slots(&Dims::new(&self.config, n, t), self.dtype(), self.weights.layers.len(), opts.recompute)
    }

    /// `(N, T)` of input embeddings `[N,T,H]`, checked against the model's width and dtype.
    fn embeds_batch(&self, embeds: &Tensor) -> Result<(usize, usize)> {
        let &[n, t, h] = check::rank("inputs_embeds", embeds, 3)? else { unreachable!() };
        if h != self.config.hidden_size {
            return Err(Error::Shape(format!("`inputs_embeds` has width {h}, the model {}", self.config.hidden_size)));
        }
        check::dtype("inputs_embeds", embeds, self.dtype())?;
        Ok((n, t))
    }

    /// The forward, its activations in the views `arena` gives, or in the model's own arena.
    fn run(
        &self,
        inputs: Inputs<'_>,
        (n, t): (usize, usize),
        mask: &Tensor,
        opts: ForwardOptions,
        arena: Option<LentViews<'_>>,
    ) -> Result<ForwardPass> {
        let (mask, positions) = self.mask_and_positions((n, t), mask)?;
        let dims = Dims::new(&self.config, n, t);
        let layers = self.weights.layers.len();
        let (dtype, recompute) = (self.dtype(), opts.recompute);
        let mut acts = match arena {
            Some((mut views, lease)) => Activations::from_views(&mut views, lease, dims, dtype, layers, recompute)?,
            None => {
                let slots = activations::slots(&dims, dtype, layers, recompute);
                // SAFETY: the views go into the activations, beside the lease and dropped before it (field order);
                // the layout has no overlay.
                let (views, lease) = unsafe { Lease::take(&self.arena, slots, self.device())? };
                Activations::from_views(&mut views.into_iter(), lease, dims, dtype, layers, recompute)?
            }
        };
        let ids = match inputs {
            Inputs::Ids(ids) => {
                let ids = ids.to_device(self.device())?;
                embedding_into(&self.weights.embed_tokens, &ids, &mut acts.xs[0])?;
                Some(ids)
            }
            Inputs::Embeds(embeds) => {
                acts.xs[0].copy_from(&embeds.to_device(self.device())?)?;
                None
            }
        };
        let ctx = self.layer_context(dims, &positions, &mask);
        for (l, w) in self.weights.layers.iter().enumerate() {
            let (done, next) = acts.xs.split_at_mut(l + 1);
            let layer_acts = &mut acts.layers[if opts.recompute { 0 } else { l }];
            layer::forward_causal(w, &ctx, &done[l], layer_acts, &mut next[0])?;
        }
        let norm = &mut acts.norm;
        rmsnorm_into(&acts.xs[layers], &self.weights.norm, &self.norm_config(), &mut norm.y, &mut norm.rstd)?;
        Ok(ForwardPass { ids, mask, positions, dims, recompute, acts })
    }

    /// The logits `[N,T,V]` of a pass, materialised in the model's dtype (prefer the fused kernels for losses).
    pub fn logits(&self, pass: &ForwardPass) -> Result<Tensor> {
        linear(pass.hidden(), self.weights.head(), None)
    }

    /// [`Qwen2Model::backward`] from the gradient of materialised logits `[N,T,V]`.
    pub fn backward_from_logits(&self, pass: ForwardPass, grad_logits: &Tensor) -> Result<Qwen2Gradients> {
        let grads = self.output_grads_from_logits(&pass, grad_logits)?;
        self.backward(pass, grads)
    }

    /// The gradient of a pass's outputs (final hidden states and LM head) from that of its logits `[N,T,V]`.
    pub fn output_grads_from_logits(&self, pass: &ForwardPass, grad_logits: &Tensor) -> Result<OutputGrads> {
        let head = linear_backward(grad_logits, pass.hidden(), self.weights.head(), None)?;
        Ok(OutputGrads { hidden: head.grad_x, lm_head: HeadGradient::Tensor(head.grad_weight) })
    }

    /// The gradient of every parameter and of the input embeddings, from the gradient of the pass's outputs.
    pub fn backward(&self, pass: ForwardPass, grads: OutputGrads) -> Result<Qwen2Gradients> {
        if matches!(grads.lm_head, HeadGradient::InBuffers) {
            return Err(Error::InvalidArgument(
                "the head's gradient is in the buffers `causal_lm_loss_into` wrote: pass them to `backward_into`"
                    .into(),
            ));
        }
        let stream = pass.dims.stream();
        let mut out = Qwen2Gradients {
            weights: self.weights.zeros_like()?,
            inputs_embeds: Tensor::zeros(&stream, self.dtype(), self.device())?,
        };
        self.backward_into(pass, grads, &mut out)?;
        Ok(out)
    }

    /// [`Qwen2Model::backward`] into gradient buffers the caller keeps across steps (every element is written).
    pub fn backward_into(&self, mut pass: ForwardPass, grads: OutputGrads, out: &mut Qwen2Gradients) -> Result<()> {
        self.check_gradients(&pass, &grads, out)?;
        let ForwardPass { ids, mask, positions, dims, recompute, acts } = &mut pass;
        let layers = self.weights.layers.len();
        let g = &mut acts.grads;
        rmsnorm_backward_into(
            &grads.hidden,
            &acts.xs[layers],
            &self.weights.norm,
            &acts.norm.rstd,
            &mut g.stream,
            &mut out.weights.norm,
        )?;
        let ctx = self.layer_context(*dims, positions, mask);
        for (l, w) in self.weights.layers.iter().enumerate().rev() {
            let x = &acts.xs[l];
            let layer_acts = if *recompute {
                let (scratch, spare) = (&mut acts.layers[0], acts.spare.as_mut().expect("recompute keeps a spare"));
                layer::forward_causal(w, &ctx, x, scratch, spare)?;
                scratch
            } else {
                &mut acts.layers[l]
            };
            layer::backward_into(w, &ctx, x, layer_acts, g, &mut out.weights.layers[l])?;
        }
        out.inputs_embeds.copy_from(&g.stream)?;
        let embed = &mut out.weights.embed_tokens;
        let vocab = self.config.vocab_size;
        // A tied head's gradient already in the embedding's buffer keeps it: the embedding's share is added.
        let keep_head_share = out.weights.lm_head.is_none() && matches!(grads.lm_head, HeadGradient::InBuffers);
        match (ids, keep_head_share) {
            (Some(ids), true) => embedding_backward_accumulate(&g.stream, ids, vocab, embed)?,
            (Some(ids), false) => embedding_backward_into(&g.stream, ids, vocab, embed)?,
            (None, true) => {}
            (None, false) => embed.fill_zeros()?,
        }
        match (grads.lm_head, out.weights.lm_head.as_mut()) {
            (HeadGradient::Tensor(head), None) => add_in_place(embed, &head)?,
            (HeadGradient::Tensor(head), Some(lm_head)) => lm_head.copy_from(&head)?,
            (HeadGradient::None, Some(lm_head)) => lm_head.fill_zeros()?,
            (HeadGradient::None, None) | (HeadGradient::InBuffers, _) => {}
        }
        Ok(())
    }

    /// Shapes, dtypes and devices of a backward's inputs and outputs.
    fn check_gradients(&self, pass: &ForwardPass, grads: &OutputGrads, out: &Qwen2Gradients) -> Result<()> {
        let stream = pass.dims.stream();
        check::output("grad hidden", &grads.hidden, &stream, self.dtype(), self.device())?;
        if let HeadGradient::Tensor(head) = &grads.lm_head {
            check::output("grad lm_head", head, self.weights.head().shape(), self.dtype(), self.device())?;
        }
        check::output("inputs_embeds gradient", &out.inputs_embeds, &stream, self.dtype(), self.device())?;
        check_gradient_buffers(&self.weights.named(), &out.weights.named())
    }
}
