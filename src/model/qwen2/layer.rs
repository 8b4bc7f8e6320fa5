//! One Qwen2 decoder layer, forward and backward, written out op by op:
//!
//! ```text
//! a   = x + o_proj(attention(rope(q_proj(n1)), rope(k_proj(n1)), v_proj(n1)))    n1 = rmsnorm(x)
//! out = a + down_proj(silu(gate_proj(n2)) ∘ up_proj(n2))                           n2 = rmsnorm(a)
//! ```
//!
//! Every op writes into tensors the caller provides (views of the model's activation arena): the forward into the
//! layer's [`LayerActivations`] and its output, the backward into a [`GradScratch`] that all layers share and into
//! the layer's parameter gradients.

use super::weights::LayerWeights;
use crate::model::views::{next_view, project, project_backward, with_shape};
use crate::model::Qwen2Config;
use crate::ops::attention::{attention_backward_into, attention_into, AttentionOutput, Masking};
use crate::ops::linear::{linear_backward_into, linear_into};
use crate::ops::residual::add_in_place;
use crate::ops::rmsnorm::{rmsnorm_backward_into, rmsnorm_into, RmsNormConfig, RmsNormOutput};
use crate::ops::rope::{rope_in_place, RopeConfig, Rotation};
use crate::ops::swiglu::{swiglu_backward_into, swiglu_into};
use crate::runtime::arena::Slot;
use crate::runtime::{DType, Tensor};
use crate::Result;

/// The sizes of one batch through the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Dims {
    pub n: usize,
    pub t: usize,
    pub hidden: usize,
    pub inter: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl Dims {
    pub fn new(config: &Qwen2Config, n: usize, t: usize) -> Dims {
        Dims {
            n,
            t,
            hidden: config.hidden_size,
            inter: config.intermediate_size,
            heads: config.num_attention_heads,
            kv_heads: config.num_key_value_heads,
            head_dim: config.head_dim(),
        }
    }

    /// [N,T,H]: the residual stream.
    pub fn stream(&self) -> [usize; 3] {
        [self.n, self.t, self.hidden]
    }

    fn heads(&self, heads: usize) -> [usize; 4] {
        [self.n, self.t, heads, self.head_dim]
    }

    fn mlp(&self) -> [usize; 3] {
        [self.n, self.t, self.inter]
    }
}

/// What a layer needs besides its weights: the batch's sizes, the norm epsilon, the rotary base, and the positions
/// [N,T] and attention mask [N,T] (or KV-cache slot mask) on the model's device.
pub(super) struct LayerContext<'a> {
    pub dims: Dims,
    pub norm: RmsNormConfig,
    pub rope: RopeConfig,
    pub positions: &'a Tensor,
    pub mask: &'a Tensor,
}

/// The activations one layer's backward reads (its input, the residual stream, is kept by the model).
#[derive(Debug)]
pub(super) struct LayerActivations {
    pub norm1: RmsNormOutput,
    /// Rotated queries [N,T,Hq,d], rotated keys and values [N,T,Hkv,d].
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub attn: AttentionOutput,
    /// After the attention residual [N,T,H].
    pub a: Tensor,
    pub norm2: RmsNormOutput,
    pub gate: Tensor,
    pub up: Tensor,
    /// silu(gate) ∘ up [N,T,I].
    pub act: Tensor,
}

impl LayerActivations {
    /// The arena slots of one layer, in the order [`LayerActivations::from_views`] takes them.
    pub fn slots(d: &Dims, dtype: DType) -> Vec<Slot> {
        let rows = [d.n * d.t];
        vec![
            Slot::new(&d.stream(), dtype),
            Slot::new(&rows, DType::F32),
            Slot::new(&d.heads(d.heads), dtype),
            Slot::new(&d.heads(d.kv_heads), dtype),
            Slot::new(&d.heads(d.kv_heads), dtype),
            Slot::new(&d.heads(d.heads), dtype),
            Slot::new(&[d.n, d.heads, d.t], DType::F32),
            Slot::new(&d.stream(), dtype),
            Slot::new(&d.stream(), dtype),
            Slot::new(&rows, DType::F32),
            Slot::new(&d.mlp(), dtype),
            Slot::new(&d.mlp(), dtype),
            Slot::new(&d.mlp(), dtype),
        ]
    }

    pub fn from_views(views: &mut impl Iterator<Item = Tensor>) -> Result<LayerActivations> {
        let mut next = || next_view(views);
        Ok(LayerActivations {
            norm1: RmsNormOutput { y: next()?, rstd: next()? },
            q: next()?,
            k: next()?,
            v: next()?,
            attn: AttentionOutput { out: next()?, lse: next()? },
            a: next()?,
            norm2: RmsNormOutput { y: next()?, rstd: next()? },
            gate: next()?,
            up: next()?,
            act: next()?,
        })
    }
}

/// Gradient buffers of one layer's backward, shared by all layers.
#[derive(Debug)]
pub(super) struct GradScratch {
    /// The gradient of the residual stream [N,T,H]: of the layer's output on entry, of its input on return.
    pub stream: Tensor,
    /// Of a norm's output, and a second [N,T,H] buffer for the terms summed into it.
    norm: Tensor,
    tmp: Tensor,
    act: Tensor,
    gate: Tensor,
    up: Tensor,
    attn: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
}

impl GradScratch {
    /// The arena slots, in the order [`GradScratch::from_views`] takes them.
    pub fn slots(d: &Dims, dtype: DType) -> Vec<Slot> {
        let mut slots = vec![Slot::new(&d.stream(), dtype); 3];
        slots.extend(vec![Slot::new(&d.mlp(), dtype); 3]);
        slots.extend(vec![Slot::new(&d.heads(d.heads), dtype); 2]);
        slots.extend(vec![Slot::new(&d.heads(d.kv_heads), dtype); 2]);
        slots
    }

    pub fn from_views(views: &mut impl Iterator<Item = Tensor>) -> Result<GradScratch> {
        let mut next = || next_view(views);
        Ok(GradScratch {
            stream: next()?,
            norm: next()?,
            tmp: next()?,
            act: next()?,
            gate: next()?,
            up: next()?,
            attn: next()?,
            q: next()?,
            k: next()?,
            v: next()?,
        })
    }
}

/// Runs the layer on `x` [N,T,H], writing its activations into `acts` and its output into `out`. `attend` fills
/// `acts.attn` from the rotated queries, keys and values: causal attention over the batch, or over a KV cache.
pub(super) fn forward_into(
    w: &LayerWeights,
    ctx: &LayerContext<'_>,
    x: &Tensor,
    acts: &mut LayerActivations,
    out: &mut Tensor,
    attend: impl FnOnce(&Tensor, &Tensor, &Tensor, &mut AttentionOutput) -> Result<()>,
) -> Result<()> {
    let s = acts;
    rmsnorm_into(x, &w.input_layernorm, &ctx.norm, &mut s.norm1.y, &mut s.norm1.rstd)?;
    project(&s.norm1.y, &w.q_proj, Some(&w.q_bias), &mut s.q)?;
    project(&s.norm1.y, &w.k_proj, Some(&w.k_bias), &mut s.k)?;
    project(&s.norm1.y, &w.v_proj, Some(&w.v_bias), &mut s.v)?;
    rope_in_place(&mut s.q, ctx.positions, &ctx.rope, Rotation::Forward)?;
    rope_in_place(&mut s.k, ctx.positions, &ctx.rope, Rotation::Forward)?;
    attend(&s.q, &s.k, &s.v, &mut s.attn)?;
    let stream = ctx.dims.stream();
    with_shape(&mut s.attn.out, &stream, |o| linear_into(o, &w.o_proj, None, &mut s.a))?;
    add_in_place(&mut s.a, x)?;
    rmsnorm_into(&s.a, &w.post_attention_layernorm, &ctx.norm, &mut s.norm2.y, &mut s.norm2.rstd)?;
    linear_into(&s.norm2.y, &w.gate_proj, None, &mut s.gate)?;
    linear_into(&s.norm2.y, &w.up_proj, None, &mut s.up)?;
    swiglu_into(&s.gate, &s.up, &mut s.act)?;
    linear_into(&s.act, &w.down_proj, None, out)?;
    add_in_place(out, &s.a)
}

/// [`forward_into`] with causal attention over the batch under `ctx.mask` (training and scoring).
pub(super) fn forward_causal(
    w: &LayerWeights,
    ctx: &LayerContext<'_>,
    x: &Tensor,
    acts: &mut LayerActivations,
    out: &mut Tensor,
) -> Result<()> {
    forward_into(w, ctx, x, acts, out, |q, k, v, attn| {
        attention_into(q, k, v, ctx.mask, Masking::Causal, &mut attn.out, &mut attn.lse)
    })
}

/// The layer's backward: `g.stream` holds the gradient of the layer's output on entry and of its input `x` on
/// return; the gradient of every weight of the layer is written into `grads`.
pub(super) fn backward_into(
    w: &LayerWeights,
    ctx: &LayerContext<'_>,
    x: &Tensor,
    s: &mut LayerActivations,
    g: &mut GradScratch,
    grads: &mut LayerWeights,
) -> Result<()> {
    // MLP: out = a + down(act).
    linear_backward_into(&g.stream, &s.act, &w.down_proj, None, &mut g.act, &mut grads.down_proj, None)?;
    swiglu_backward_into(&g.act, &s.gate, &s.up, &mut g.gate, &mut g.up)?;
    linear_backward_into(&g.gate, &s.norm2.y, &w.gate_proj, None, &mut g.norm, &mut grads.gate_proj, None)?;
    linear_backward_into(&g.up, &s.norm2.y, &w.up_proj, None, &mut g.tmp, &mut grads.up_proj, None)?;
    add_in_place(&mut g.norm, &g.tmp)?;
    let post_norm = &mut grads.post_attention_layernorm;
    rmsnorm_backward_into(&g.norm, &s.a, &w.post_attention_layernorm, &s.norm2.rstd, &mut g.tmp, post_norm)?;
    add_in_place(&mut g.stream, &g.tmp)?;

    // Attention: a = x + o(attention(...)).
    let stream = ctx.dims.stream();
    with_shape(&mut s.attn.out, &stream, |o| {
        with_shape(&mut g.attn, &stream, |ga| {
            linear_backward_into(&g.stream, o, &w.o_proj, None, ga, &mut grads.o_proj, None)
        })
    })?;
    let (q, k, v) = (&mut g.q, &mut g.k, &mut g.v);
    attention_backward_into(&g.attn, &s.q, &s.k, &s.v, ctx.mask, Masking::Causal, &s.attn, q, k, v)?;
    rope_in_place(&mut g.q, ctx.positions, &ctx.rope, Rotation::Inverse)?;
    rope_in_place(&mut g.k, ctx.positions, &ctx.rope, Rotation::Inverse)?;
    let n1 = &s.norm1.y;
    project_backward(
        &mut g.q,
        n1,
        &w.q_proj,
        Some(&w.q_bias),
        &mut g.norm,
        (&mut grads.q_proj, Some(&mut grads.q_bias)),
    )?;
    project_backward(
        &mut g.k,
        n1,
        &w.k_proj,
        Some(&w.k_bias),
        &mut g.tmp,
        (&mut grads.k_proj, Some(&mut grads.k_bias)),
    )?;
    add_in_place(&mut g.norm, &g.tmp)?;
    project_backward(
        &mut g.v,
        n1,
        &w.v_proj,
        Some(&w.v_bias),
        &mut g.tmp,
        (&mut grads.v_proj, Some(&mut grads.v_bias)),
    )?;
    add_in_place(&mut g.norm, &g.tmp)?;
    rmsnorm_backward_into(&g.norm, x, &w.input_layernorm, &s.norm1.rstd, &mut g.tmp, &mut grads.input_layernorm)?;
    add_in_place(&mut g.stream, &g.tmp)
}
