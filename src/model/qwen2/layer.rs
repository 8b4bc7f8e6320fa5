//! One Qwen2 decoder layer, forward and backward, written out op by op:
//!
//! ```text
//! a   = x + o_proj(attention(rope(q_proj(n1)), rope(k_proj(n1)), v_proj(n1)))    n1 = rmsnorm(x)
//! out = a + down_proj(silu(gate_proj(n2)) ∘ up_proj(n2))                           n2 = rmsnorm(a)
//! ```
//!
//! The forward keeps what the backward reads ([`LayerActivations`]); the layer's output is not kept (it is the next
//! layer's input, or the final norm's).

use super::weights::LayerWeights;
use crate::ops::attention::{attention, attention_backward, AttentionOutput};
use crate::ops::linear::{linear, linear_backward};
use crate::ops::residual::add_in_place;
use crate::ops::rmsnorm::{rmsnorm, rmsnorm_backward, RmsNormConfig, RmsNormOutput};
use crate::ops::rope::{rope_in_place, RopeConfig, Rotation};
use crate::ops::swiglu::{swiglu, swiglu_backward};
use crate::runtime::Tensor;
use crate::{Error, Result};

/// What a layer needs besides its weights: head counts, the norm epsilon, the rotary base, and the batch's
/// positions [N,T] and attention mask [N,T] on the model's device.
pub(super) struct LayerContext<'a> {
    pub heads: usize,
    pub kv_heads: usize,
    pub norm: RmsNormConfig,
    pub rope: RopeConfig,
    pub positions: &'a Tensor,
    pub mask: &'a Tensor,
}

impl LayerContext<'_> {
    /// `x` [N,T,heads·d] viewed as [N,T,heads,d].
    fn split_heads(&self, x: Tensor, heads: usize) -> Result<Tensor> {
        let &[n, t, width] = x.shape() else { unreachable!("projections are [N,T,width]") };
        x.reshape(&[n, t, heads, width / heads])
    }
}

/// `x` [N,T,heads,d] viewed as [N,T,heads·d].
fn merge_heads(x: Tensor) -> Result<Tensor> {
    let &[n, t, heads, d] = x.shape() else { unreachable!("attention tensors are [N,T,heads,d]") };
    x.reshape(&[n, t, heads * d])
}

/// The activations one layer's backward reads.
#[derive(Debug)]
pub(super) struct LayerActivations {
    /// The layer's input [N,T,H].
    pub x: Tensor,
    pub norm1: RmsNormOutput,
    /// Rotated queries [N,T,Hq,d] and keys [N,T,Hkv,d], values [N,T,Hkv,d].
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub attn: AttentionOutput,
    /// After the attention residual [N,T,H].
    pub a: Tensor,
    pub mlp: MlpActivations,
}

/// What the MLP block's backward reads.
#[derive(Debug)]
pub(super) struct MlpActivations {
    pub norm2: RmsNormOutput,
    pub gate: Tensor,
    pub up: Tensor,
    /// silu(gate) ∘ up [N,T,I].
    pub act: Tensor,
}

impl LayerActivations {
    pub fn size_in_bytes(&self) -> usize {
        [
            &self.x,
            &self.norm1.y,
            &self.norm1.rstd,
            &self.q,
            &self.k,
            &self.v,
            &self.attn.out,
            &self.attn.lse,
            &self.a,
            &self.mlp.norm2.y,
            &self.mlp.norm2.rstd,
            &self.mlp.gate,
            &self.mlp.up,
            &self.mlp.act,
        ]
        .iter()
        .map(|t| t.size_in_bytes())
        .sum()
    }
}

/// The attention block's inputs: `n1 = rmsnorm(x)` and the rotated queries [N,T,Hq,d], rotated keys and values
/// [N,T,Hkv,d] at `ctx.positions`.
pub(super) fn project_qkv(
    w: &LayerWeights,
    ctx: &LayerContext<'_>,
    x: &Tensor,
) -> Result<(RmsNormOutput, Tensor, Tensor, Tensor)> {
    let norm1 = rmsnorm(x, &w.input_layernorm, &ctx.norm)?;
    let mut q = ctx.split_heads(linear(&norm1.y, &w.q_proj, Some(&w.q_bias))?, ctx.heads)?;
    let mut k = ctx.split_heads(linear(&norm1.y, &w.k_proj, Some(&w.k_bias))?, ctx.kv_heads)?;
    let v = ctx.split_heads(linear(&norm1.y, &w.v_proj, Some(&w.v_bias))?, ctx.kv_heads)?;
    rope_in_place(&mut q, ctx.positions, &ctx.rope, Rotation::Forward)?;
    rope_in_place(&mut k, ctx.positions, &ctx.rope, Rotation::Forward)?;
    Ok((norm1, q, k, v))
}

/// `x + o_proj(attn)` for the attention output `attn` [N,T,Hq,d], which is handed back unchanged (the projection
/// reads the heads merged, the backward reads them split: the tensor is moved, never copied).
pub(super) fn attention_residual(
    w: &LayerWeights,
    ctx: &LayerContext<'_>,
    x: &Tensor,
    attn: Tensor,
) -> Result<(Tensor, Tensor)> {
    let merged = merge_heads(attn)?;
    let mut a = linear(&merged, &w.o_proj, None)?;
    add_in_place(&mut a, x)?;
    Ok((a, ctx.split_heads(merged, ctx.heads)?))
}

/// The MLP block's output `a + down(silu(gate(n2)) ∘ up(n2))`, `n2 = rmsnorm(a)`, and what its backward reads.
pub(super) fn mlp(w: &LayerWeights, ctx: &LayerContext<'_>, a: &Tensor) -> Result<(Tensor, MlpActivations)> {
    let norm2 = rmsnorm(a, &w.post_attention_layernorm, &ctx.norm)?;
    let gate = linear(&norm2.y, &w.gate_proj, None)?;
    let up = linear(&norm2.y, &w.up_proj, None)?;
    let act = swiglu(&gate, &up)?;
    let mut out = linear(&act, &w.down_proj, None)?;
    add_in_place(&mut out, a)?;
    Ok((out, MlpActivations { norm2, gate, up, act }))
}

/// The layer's output and its saved activations (which own `x`).
pub(super) fn forward(w: &LayerWeights, ctx: &LayerContext<'_>, x: Tensor) -> Result<(Tensor, LayerActivations)> {
    let (norm1, q, k, v) = project_qkv(w, ctx, &x)?;
    let mut attn = attention(&q, &k, &v, ctx.mask)?;
    let (a, attn_out) = attention_residual(w, ctx, &x, attn.out)?;
    attn.out = attn_out;
    let (out, mlp) = mlp(w, ctx, &a)?;
    Ok((out, LayerActivations { x, norm1, q, k, v, attn, a, mlp }))
}

/// From the gradient of the layer's output, the gradient of its input and of every weight of the layer. Consumes
/// the activations (each is read once).
pub(super) fn backward(
    w: &LayerWeights,
    ctx: &LayerContext<'_>,
    s: LayerActivations,
    grad_out: Tensor,
) -> Result<(Tensor, LayerWeights)> {
    // MLP: out = a + down(act).
    let m = &s.mlp;
    let down = linear_backward(&grad_out, &m.act, &w.down_proj, None)?;
    let glu = swiglu_backward(&down.grad_x, &m.gate, &m.up)?;
    let gate = linear_backward(&glu.grad_gate, &m.norm2.y, &w.gate_proj, None)?;
    let up = linear_backward(&glu.grad_up, &m.norm2.y, &w.up_proj, None)?;
    let mut grad_norm2 = gate.grad_x;
    add_in_place(&mut grad_norm2, &up.grad_x)?;
    let norm2 = rmsnorm_backward(&grad_norm2, &s.a, &w.post_attention_layernorm, &m.norm2.rstd)?;
    let mut grad_a = grad_out;
    add_in_place(&mut grad_a, &norm2.grad_x)?;

    // Attention: a = x + o(attention(...)).
    let mut attn = s.attn;
    let merged = merge_heads(attn.out)?;
    let o = linear_backward(&grad_a, &merged, &w.o_proj, None)?;
    attn.out = ctx.split_heads(merged, ctx.heads)?;
    let grad_attn = ctx.split_heads(o.grad_x, ctx.heads)?;
    let att = attention_backward(&grad_attn, &s.q, &s.k, &s.v, ctx.mask, &attn)?;
    let (mut grad_q, mut grad_k) = (att.grad_q, att.grad_k);
    rope_in_place(&mut grad_q, ctx.positions, &ctx.rope, Rotation::Inverse)?;
    rope_in_place(&mut grad_k, ctx.positions, &ctx.rope, Rotation::Inverse)?;
    let q = linear_backward(&merge_heads(grad_q)?, &s.norm1.y, &w.q_proj, Some(&w.q_bias))?;
    let k = linear_backward(&merge_heads(grad_k)?, &s.norm1.y, &w.k_proj, Some(&w.k_bias))?;
    let v = linear_backward(&merge_heads(att.grad_v)?, &s.norm1.y, &w.v_proj, Some(&w.v_bias))?;
    let mut grad_norm1 = q.grad_x;
    add_in_place(&mut grad_norm1, &k.grad_x)?;
    add_in_place(&mut grad_norm1, &v.grad_x)?;
    let norm1 = rmsnorm_backward(&grad_norm1, &s.x, &w.input_layernorm, &s.norm1.rstd)?;
    let mut grad_x = grad_a;
    add_in_place(&mut grad_x, &norm1.grad_x)?;
    let grads = LayerWeights {
        q_proj: q.grad_weight,
        q_bias: bias_grad(q.grad_bias)?,
        k_proj: k.grad_weight,
        k_bias: bias_grad(k.grad_bias)?,
        v_proj: v.grad_weight,
        v_bias: bias_grad(v.grad_bias)?,
        o_proj: o.grad_weight,
        gate_proj: gate.grad_weight,
        up_proj: up.grad_weight,
        down_proj: down.grad_weight,
        input_layernorm: norm1.grad_weight,
        post_attention_layernorm: norm2.grad_weight,
    };
    Ok((grad_x, grads))
}

/// `linear_backward` returns a bias gradient whenever it is given a bias.
fn bias_grad(grad: Option<Tensor>) -> Result<Tensor> {
    grad.ok_or_else(|| Error::InvalidArgument("linear_backward returned no bias gradient".into()))
}
