//! Helpers for models that run ops into views of their activation arena (Qwen2's decoder layers, SigLIP's encoder
//! layers): taking the views in layout order, reading a `[N,T,heads,d]` buffer as `[N,T,heads·d]`, and the
//! attention projections written through that merged view; the check of a backward's kept gradient buffers.

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

/// Gradient buffers `grads` against the `params` they differentiate, both named in one order: the same count and
/// each buffer of its parameter's shape, dtype and device, naming the first that differs.
pub(crate) fn check_gradient_buffers(params: &[(String, &Tensor)], grads: &[(String, &Tensor)]) -> Result<()> {
    if params.len() != grads.len() {
        return Err(Error::Shape(format!("{} gradient buffers for {} parameters", grads.len(), params.len())));
    }
    for ((name, w), (_, g)) in params.iter().zip(grads) {
        if g.shape() != w.shape() || g.dtype() != w.dtype() || g.device() != w.device() {
            return Err(Error::Shape(format!(
                "the gradient buffer for `{name}` is {:?} {} on {}, the parameter {:?} {} on {}",
                g.shape(),
                g.dtype(),
                g.device(),
                w.shape(),
                w.dtype(),
                w.device()
            )));
        }
    }
    Ok(())
}
