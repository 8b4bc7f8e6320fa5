//! Helpers for models that run ops into views of their activation arena (Qwen2's decoder layers, SigLIP's encoder
//! layers): taking the views in layout order, reading a `[N,T,heads,d]` buffer as `[N,T,heads·d]`, and the
//! attention projections written through that merged view.

use crate::ops::linear::{linear_backward_into, linear_into};
use crate::runtime::Tensor;
use crate::{Error, Result};

/// Runs `f` on `t` viewed under `shape`, then restores `t`'s shape (also when `f` fails).
pub(crate) fn with_shape<R>(t: &mut Tensor, shape: &[usize], f: impl FnOnce(&mut Tensor) -> Result<R>) -> Result<R> {
    let original = t.shape().to_vec();
    t.reshape_in_place(shape)?;
    let result = f(t);
    t.reshape_in_place(&original)?;
    result
}

/// `t` [N,T,heads,d] read as [N,T,heads·d].
pub(crate) fn merged(t: &Tensor) -> [usize; 3] {
    let s = t.shape();
    [s[0], s[1], s[2] * s[3]]
}

/// The next view of an arena, in layout order.
pub(crate) fn next_view(views: &mut impl Iterator<Item = Tensor>) -> Result<Tensor> {
    views
        .next()
        .ok_or_else(|| Error::InvalidArgument("the activation arena holds fewer tensors than its layout".into()))
}

/// `out` [N,T,heads,d] = `x·Wᵀ + b`, the projection written through its merged [N,T,heads·d] view.
pub(crate) fn project(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, out: &mut Tensor) -> Result<()> {
    let shape = merged(out);
    with_shape(out, &shape, |o| linear_into(x, weight, bias, o))
}

/// The gradient of a projection's input and parameters from the gradient of its [N,T,heads,d] output.
pub(crate) fn project_backward(
    grad_y: &mut Tensor,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    grad_x: &mut Tensor,
    grads: (&mut Tensor, Option<&mut Tensor>),
) -> Result<()> {
    let shape = merged(grad_y);
    with_shape(grad_y, &shape, |g| linear_backward_into(g, x, weight, bias, grad_x, grads.0, grads.1))
}
