//! One SigLIP encoder layer (pre-LayerNorm, attention and MLP with biases), forward and backward, op by op:
//!
//! ```text
//! a   = x + out_proj(attention(q_proj(n1), k_proj(n1), v_proj(n1)))    n1 = layer_norm1(x), every patch sees every patch
//! out = a + fc2(gelu(fc1(n2)))                                         n2 = layer_norm2(a)
//! ```
//!
//! As in Qwen2's layer, every op writes into views of the tower's activation arena: the forward into the layer's
//! [`LayerActivations`] and its output, the backward into a [`GradScratch`] shared by all layers and into the
//! layer's parameter gradients.

use super::weights::SiglipLayerWeights;
use super::SiglipVisionConfig;
use crate::model::views::{next_view, project, project_backward, with_shape};
use crate::ops::attention::{attention_backward_into, attention_into, AttentionOutput, Masking};
use crate::ops::gelu::{gelu_backward_into, gelu_into, GeluApproximation};
use crate::ops::layernorm::{
    layernorm_backward_into, layernorm_into, LayerNormConfig, LayerNormOutput, LayerNormStats,
};
use crate::ops::linear::{linear_backward_into, linear_into};
use crate::ops::residual::add_in_place;
use crate::runtime::arena::Slot;
use crate::runtime::{DType, Tensor};
use crate::Result;

/// The sizes of one batch of images through the tower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Dims {
    pub n: usize,
    /// Patches per image (the sequence length).
    pub t: usize,
    pub hidden: usize,
    pub inter: usize,
    pub heads: usize,
    pub head_dim: usize,
}

impl Dims {
    pub fn new(config: &SiglipVisionConfig, n: usize) -> Dims {
        Dims {
            n,
            t: config.num_patches(),
            hidden: config.hidden_size,
            inter: config.intermediate_size,
            heads: config.num_attention_heads,
            head_dim: config.head_dim(),
        }
    }

    /// [N,P,H]: the residual stream.
    pub fn stream(&self) -> [usize; 3] {
        [self.n, self.t, self.hidden]
    }

    fn heads(&self) -> [usize; 4] {
        [self.n, self.t, self.heads, self.head_dim]
    }

    fn mlp(&self) -> [usize; 3] {
        [self.n, self.t, self.inter]
    }
}

/// What a layer needs besides its weights: the sizes, the norms' epsilon, the GELU, and the all-ones attention mask
/// [N,P] on the tower's device (no image patch is padding).
pub(super) struct LayerContext<'a> {
    pub dims: Dims,
    pub norm: LayerNormConfig,
    pub gelu: GeluApproximation,
    pub mask: &'a Tensor,
}

/// The arena slots of a LayerNorm's output and statistics.
fn norm_slots(d: &Dims, dtype: DType) -> [Slot; 3] {
    let rows = [d.n * d.t];
    [Slot::new(&d.stream(), dtype), Slot::new(&rows, DType::F32), Slot::new(&rows, DType::F32)]
}

fn norm_from_views(views: &mut impl Iterator<Item = Tensor>) -> Result<LayerNormOutput> {
    let y = next_view(views)?;
    Ok(LayerNormOutput { y, stats: LayerNormStats { mean: next_view(views)?, rstd: next_view(views)? } })
}

/// The activations one layer's backward reads (its input, the residual stream, is kept by the tower).
#[derive(Debug)]
pub(super) struct LayerActivations {
    pub norm1: LayerNormOutput,
    /// Queries, keys and values [N,P,heads,d].
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub attn: AttentionOutput,
    /// After the attention residual [N,P,H].
    pub a: Tensor,
    pub norm2: LayerNormOutput,
    /// fc1's output [N,P,I] and its GELU.
    pub fc1: Tensor,
    pub act: Tensor,
}

impl LayerActivations {
    /// The arena slots of one layer, in the order [`LayerActivations::from_views`] takes them.
    pub fn slots(d: &Dims, dtype: DType) -> Vec<Slot> {
        let mut slots = norm_slots(d, dtype).to_vec();
        slots.extend(vec![Slot::new(&d.heads(), dtype); 4]);
        slots.push(Slot::new(&[d.n, d.heads, d.t], DType::F32));
        slots.push(Slot::new(&d.stream(), dtype));
        slots.extend(norm_slots(d, dtype));
        slots.extend(vec![Slot::new(&d.mlp(), dtype); 2]);
        slots
    }

    pub fn from_views(views: &mut impl Iterator<Item = Tensor>) -> Result<LayerActivations> {
        Ok(LayerActivations {
            norm1: norm_from_views(views)?,
            q: next_view(views)?,
            k: next_view(views)?,
            v: next_view(views)?,
            attn: AttentionOutput { out: next_view(views)?, lse: next_view(views)? },
            a: next_view(views)?,
            norm2: norm_from_views(views)?,
            fc1: next_view(views)?,
            act: next_view(views)?,
        })
    }
}

/// Gradient buffers of one layer's backward, shared by all layers.
#[derive(Debug)]
pub(super) struct GradScratch {
    /// The gradient of the residual stream [N,P,H]: of the layer's output on entry, of its input on return.
    pub stream: Tensor,
    /// Of a norm's output, and a second [N,P,H] buffer for the terms summed into it (also the forward's scratch).
    pub norm: Tensor,
    pub tmp: Tensor,
    act: Tensor,
    fc1: Tensor,
    attn: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
}

impl GradScratch {
    /// The arena slots, in the order [`GradScratch::from_views`] takes them.
    pub fn slots(d: &Dims, dtype: DType) -> Vec<Slot> {
        let mut slots = vec![Slot::new(&d.stream(), dtype); 3];
        slots.extend(vec![Slot::new(&d.mlp(), dtype); 2]);
        slots.extend(vec![Slot::new(&d.heads(), dtype); 4]);
        slots
    }

    pub fn from_views(views: &mut impl Iterator<Item = Tensor>) -> Result<GradScratch> {
        let mut next = || next_view(views);
        Ok(GradScratch {
            stream: next()?,
            norm: next()?,
            tmp: next()?,
            act: next()?,
            fc1: next()?,
            attn: next()?,
            q: next()?,
            k: next()?,
            v: next()?,
        })
    }
}

/// Runs the layer on `x` [N,P,H], writing its activations into `acts` and its output into `out`.
pub(super) fn forward_into(
    w: &SiglipLayerWeights,
    ctx: &LayerContext<'_>,
    x: &Tensor,
    s: &mut LayerActivations,
    out: &mut Tensor,
) -> Result<()> {
    layernorm_into(x, &w.layer_norm1, &w.layer_norm1_bias, &ctx.norm, &mut s.norm1.y, &mut s.norm1.stats)?;
    project(&s.norm1.y, &w.q_proj, Some(&w.q_bias), &mut s.q)?;
    project(&s.norm1.y, &w.k_proj, Some(&w.k_bias), &mut s.k)?;
    project(&s.norm1.y, &w.v_proj, Some(&w.v_bias), &mut s.v)?;
    attention_into(&s.q, &s.k, &s.v, ctx.mask, Masking::Bidirectional, &mut s.attn.out, &mut s.attn.lse)?;
    let stream = ctx.dims.stream();
    with_shape(&mut s.attn.out, &stream, |o| linear_into(o, &w.out_proj, Some(&w.out_bias), &mut s.a))?;
    add_in_place(&mut s.a, x)?;
    layernorm_into(&s.a, &w.layer_norm2, &w.layer_norm2_bias, &ctx.norm, &mut s.norm2.y, &mut s.norm2.stats)?;
    linear_into(&s.norm2.y, &w.fc1, Some(&w.fc1_bias), &mut s.fc1)?;
    gelu_into(&s.fc1, ctx.gelu, &mut s.act)?;
    linear_into(&s.act, &w.fc2, Some(&w.fc2_bias), out)?;
    add_in_place(out, &s.a)
}

/// The layer's backward: `g.stream` holds the gradient of the layer's output on entry and of its input `x` on
/// return; the gradient of every weight of the layer is written into `grads`.
pub(super) fn backward_into(
    w: &SiglipLayerWeights,
    ctx: &LayerContext<'_>,
    x: &Tensor,
    s: &mut LayerActivations,
    g: &mut GradScratch,
    grads: &mut SiglipLayerWeights,
) -> Result<()> {
    // MLP: out = a + fc2(gelu(fc1(n2))).
    let fc2 = (&mut grads.fc2, Some(&mut grads.fc2_bias));
    linear_backward_into(&g.stream, &s.act, &w.fc2, Some(&w.fc2_bias), &mut g.act, fc2.0, fc2.1)?;
    gelu_backward_into(&g.act, &s.fc1, ctx.gelu, &mut g.fc1)?;
    let fc1 = (&mut grads.fc1, Some(&mut grads.fc1_bias));
    linear_backward_into(&g.fc1, &s.norm2.y, &w.fc1, Some(&w.fc1_bias), &mut g.norm, fc1.0, fc1.1)?;
    let (ln2, ln2_bias) = (&mut grads.layer_norm2, &mut grads.layer_norm2_bias);
    layernorm_backward_into(&g.norm, &s.a, &w.layer_norm2, &s.norm2.stats, &mut g.tmp, ln2, ln2_bias)?;
    add_in_place(&mut g.stream, &g.tmp)?;

    // Attention: a = x + out_proj(attention(...)).
    let stream = ctx.dims.stream();
    let out = (&mut grads.out_proj, Some(&mut grads.out_bias));
    with_shape(&mut s.attn.out, &stream, |o| {
        with_shape(&mut g.attn, &stream, |ga| {
            linear_backward_into(&g.stream, o, &w.out_proj, Some(&w.out_bias), ga, out.0, out.1)
        })
    })?;
    let (q, k, v) = (&mut g.q, &mut g.k, &mut g.v);
    attention_backward_into(&g.attn, &s.q, &s.k, &s.v, ctx.mask, Masking::Bidirectional, &s.attn, q, k, v)?;
    let n1 = &s.norm1.y;
    let q = (&mut grads.q_proj, Some(&mut grads.q_bias));
    project_backward(&mut g.q, n1, &w.q_proj, Some(&w.q_bias), &mut g.norm, q)?;
    let k = (&mut grads.k_proj, Some(&mut grads.k_bias));
    project_backward(&mut g.k, n1, &w.k_proj, Some(&w.k_bias), &mut g.tmp, k)?;
    add_in_place(&mut g.norm, &g.tmp)?;
    let v = (&mut grads.v_proj, Some(&mut grads.v_bias));
    project_backward(&mut g.v, n1, &w.v_proj, Some(&w.v_bias), &mut g.tmp, v)?;
    add_in_place(&mut g.norm, &g.tmp)?;
    let (ln1, ln1_bias) = (&mut grads.layer_norm1, &mut grads.layer_norm1_bias);
    layernorm_backward_into(&g.norm, x, &w.layer_norm1, &s.norm1.stats, &mut g.tmp, ln1, ln1_bias)?;
    add_in_place(&mut g.stream, &g.tmp)
}
