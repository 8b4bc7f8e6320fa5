//! The Qwen2 decoder (the language half of the reward model and of the policies it judges), with hand-written
//! forward and backward passes, loaded from Hugging Face checkpoints and equal to transformers' `Qwen2ForCausalLM`.
//!
//! Training: [`Qwen2Model::forward`] keeps each layer's activations in a [`ForwardPass`] (or, with
//! [`ForwardOptions::recompute`], only each layer's input, recomputing the rest in the backward); the final hidden
//! states go to the fused log-prob and DPO kernels (or to [`Qwen2Model::causal_lm_loss`], or to materialised
//! logits), whose gradient [`Qwen2Model::backward`] turns into the gradient of every parameter and of the input
//! embeddings. Inference: [`Qwen2Model::extend`] runs new tokens against a [`KvCache`], which a prompt encoded once
//! can fork into many rows ([`KvCache::fork`]).

mod cache;
mod layer;
mod loss;
mod weights;

pub use cache::KvCache;
pub use loss::CausalLmLoss;
pub use weights::{LayerWeights, Qwen2Weights};

use std::path::Path;

use crate::model::{Qwen2Config, WeightStore};
use crate::ops::check;
use crate::ops::embedding::{embedding, embedding_backward};
use crate::ops::linear::{linear, linear_backward};
use crate::ops::residual::add_in_place;
use crate::ops::rmsnorm::{rmsnorm, rmsnorm_backward, RmsNormConfig, RmsNormOutput};
use crate::ops::rope::RopeConfig;
use crate::runtime::{DType, Device, Tensor};
use crate::{Error, Result};
use layer::{LayerActivations, LayerContext};

/// A Qwen2 decoder with its weights in one compute dtype on one device.
#[derive(Debug)]
pub struct Qwen2Model {
    pub config: Qwen2Config,
    pub weights: Qwen2Weights,
}

/// How much the forward keeps for the backward.
#[derive(Clone, Copy, Debug, Default)]
pub struct ForwardOptions {
    /// Keep only each layer's input and recompute the layer in the backward: activation memory drops from about
    /// `N·T·(10·H + 3·I)` values per layer to `N·T·H`, for one more forward pass of compute.
    pub recompute: bool,
}

/// What one layer kept for the backward.
#[derive(Debug)]
enum Saved {
    All(Box<LayerActivations>),
    /// The layer's input only (recompute).
    Input(Tensor),
}

/// A forward pass over a batch, holding what the backward needs.
#[derive(Debug)]
pub struct ForwardPass {
    /// Token ids [N,T] when the pass started from ids (the embedding backward reads them).
    ids: Option<Tensor>,
    mask: Tensor,
    positions: Tensor,
    layers: Vec<Saved>,
    /// The final norm's input and output; `norm.y` is the hidden states [N,T,H] the LM head reads.
    last: Tensor,
    norm: RmsNormOutput,
}

impl ForwardPass {
    /// The final hidden states [N,T,H] (after the final norm): the LM head's input.
    pub fn hidden(&self) -> &Tensor {
        &self.norm.y
    }

    /// The attention mask [N,T] on the model's device.
    pub fn mask(&self) -> &Tensor {
        &self.mask
    }

    /// Bytes of activations kept for the backward.
    pub fn activation_bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|s| match s {
                Saved::All(a) => a.size_in_bytes(),
                Saved::Input(x) => x.size_in_bytes(),
            })
            .sum();
        layers
            + [&self.last, &self.norm.y, &self.norm.rstd, &self.positions]
                .iter()
                .map(|t| t.size_in_bytes())
                .sum::<usize>()
    }
}

/// The gradient a loss hands back to the model: of the final hidden states [N,T,H] and, when the loss applied the LM
/// head itself (fused kernels, materialised logits), of the head's weight [V,H].
#[derive(Debug)]
pub struct OutputGrads {
    pub hidden: Tensor,
    pub lm_head: Option<Tensor>,
}

/// Gradients of every parameter (under the same layout and names as the weights) and of the input embeddings.
#[derive(Debug)]
pub struct Qwen2Gradients {
    pub weights: Qwen2Weights,
    /// [N,T,H]: the gradient of the embeddings fed to the first layer (a vision tower's output, for the judge).
    pub inputs_embeds: Tensor,
}

/// Memory held by a model and by one forward pass over a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryReport {
    pub parameters: usize,
    /// Parameter gradients (the same size as the parameters).
    pub gradients: usize,
    pub activations: usize,
}

impl std::fmt::Display for MemoryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: usize| b as f64 / (1 << 20) as f64;
        write!(
            f,
            "parameters {:.1} MiB, gradients {:.1} MiB, activations {:.1} MiB",
            mib(self.parameters),
            mib(self.gradients),
            mib(self.activations)
        )
    }
}

impl Qwen2Model {
    /// Loads `dir`'s `config.json` and safetensors weights (one file or sharded), converted to `dtype` on `device`.
    pub fn load(dir: &Path, dtype: DType, device: Device) -> Result<Qwen2Model> {
        let config = Qwen2Config::from_file(&dir.join("config.json"))?;
        let store = WeightStore::open(dir)?;
        let weights = Qwen2Weights::load(&store, &config, dtype, device)?;
        Ok(Qwen2Model { config, weights })
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

    fn layer_context<'a>(&self, positions: &'a Tensor, mask: &'a Tensor) -> LayerContext<'a> {
        LayerContext {
            heads: self.config.num_attention_heads,
            kv_heads: self.config.num_key_value_heads,
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
        check::integer("attention_mask", mask)?;
        check::shape("attention_mask", mask, &[n, t])?;
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

    /// Forward over token ids [N,T] with an attention mask [N,T] (i32 or i64, nonzero = real token; typically right
    /// padding), keeping what [`Qwen2Model::backward`] needs.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor, opts: ForwardOptions) -> Result<ForwardPass> {
        let &[n, t] = check::rank("input_ids", ids, 2)? else { unreachable!() };
        check::integer("input_ids", ids)?;
        let (mask, positions) = self.mask_and_positions((n, t), mask)?;
        let ids = ids.to_device(self.device())?;
        let embeds = embedding(&self.weights.embed_tokens, &ids)?;
        self.run_layers(Some(ids), embeds, mask, positions, opts)
    }

    /// Forward from input embeddings [N,T,H] in the model's dtype (token embeddings with, for the judge, image
    /// features spliced in).
    pub fn forward_embeds(&self, embeds: &Tensor, mask: &Tensor, opts: ForwardOptions) -> Result<ForwardPass> {
        let &[n, t, h] = check::rank("inputs_embeds", embeds, 3)? else { unreachable!() };
        if h != self.config.hidden_size {
            return Err(Error::Shape(format!("`inputs_embeds` has width {h}, the model {}", self.config.hidden_size)));
        }
        check::dtype("inputs_embeds", embeds, self.dtype())?;
        let (mask, positions) = self.mask_and_positions((n, t), mask)?;
        self.run_layers(None, embeds.to_device(self.device())?, mask, positions, opts)
    }

    fn run_layers(
        &self,
        ids: Option<Tensor>,
        mut x: Tensor,
        mask: Tensor,
        positions: Tensor,
        opts: ForwardOptions,
    ) -> Result<ForwardPass> {
        let ctx = self.layer_context(&positions, &mask);
        let mut layers = Vec::with_capacity(self.weights.layers.len());
        for w in &self.weights.layers {
            let (out, acts) = layer::forward(w, &ctx, x)?;
            layers.push(if opts.recompute { Saved::Input(acts.x) } else { Saved::All(Box::new(acts)) });
            x = out;
        }
        let norm = rmsnorm(&x, &self.weights.norm, &self.norm_config())?;
        Ok(ForwardPass { ids, mask, positions, layers, last: x, norm })
    }

    /// The logits [N,T,V] of a pass, materialised in the model's dtype (prefer the fused kernels for losses).
    pub fn logits(&self, pass: &ForwardPass) -> Result<Tensor> {
        linear(pass.hidden(), self.weights.head(), None)
    }

    /// [`Qwen2Model::backward`] from the gradient of materialised logits [N,T,V].
    pub fn backward_from_logits(&self, pass: ForwardPass, grad_logits: &Tensor) -> Result<Qwen2Gradients> {
        let head = linear_backward(grad_logits, pass.hidden(), self.weights.head(), None)?;
        self.backward(pass, OutputGrads { hidden: head.grad_x, lm_head: Some(head.grad_weight) })
    }

    /// The gradient of every parameter and of the input embeddings, from the gradient of the pass's outputs.
    /// Consumes the pass (its activations are freed layer by layer as the backward goes).
    pub fn backward(&self, pass: ForwardPass, grads: OutputGrads) -> Result<Qwen2Gradients> {
        let ForwardPass { ids, mask, positions, layers, last, norm } = pass;
        check::shape("grad hidden", &grads.hidden, norm.y.shape())?;
        check::dtype("grad hidden", &grads.hidden, self.dtype())?;
        let final_norm = rmsnorm_backward(&grads.hidden, &last, &self.weights.norm, &norm.rstd)?;
        drop((last, norm));
        let ctx = self.layer_context(&positions, &mask);
        let mut grad_x = final_norm.grad_x;
        let mut layer_grads = Vec::with_capacity(layers.len());
        for (saved, w) in layers.into_iter().zip(&self.weights.layers).rev() {
            let acts = match saved {
                Saved::All(acts) => *acts,
                Saved::Input(x) => layer::forward(w, &ctx, x)?.1,
            };
            let (g, lw) = layer::backward(w, &ctx, acts, grad_x)?;
            grad_x = g;
            layer_grads.push(lw);
        }
        layer_grads.reverse();
        let vocab = self.config.vocab_size;
        let mut embed_tokens = match &ids {
            Some(ids) => embedding_backward(&grad_x, ids, vocab)?,
            None => Tensor::zeros(self.weights.embed_tokens.shape(), self.dtype(), self.device())?,
        };
        let lm_head = match (grads.lm_head, self.config.tie_word_embeddings) {
            (Some(head), true) => {
                add_in_place(&mut embed_tokens, &head)?;
                None
            }
            (Some(head), false) => Some(head),
            (None, true) => None,
            (None, false) => Some(Tensor::zeros(self.weights.head().shape(), self.dtype(), self.device())?),
        };
        let weights = Qwen2Weights { embed_tokens, layers: layer_grads, norm: final_norm.grad_weight, lm_head };
        Ok(Qwen2Gradients { weights, inputs_embeds: grad_x })
    }
}
