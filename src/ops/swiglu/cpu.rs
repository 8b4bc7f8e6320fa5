//! CPU SwiGLU: element-wise in f32 straight from and to the storage dtype (no f32 copies of the tensors), rayon
//! over blocks whose inner loops vectorise (a branch-free exp).

use half::{bf16, f16};
use rayon::prelude::*;

use crate::ops::logprobs::row::exp_approx;
use crate::runtime::{DType, FloatElement, Tensor};
use crate::Result;

/// Elements per rayon task.
const BLOCK: usize = 1 << 14;

/// σ(x) = 1 / (1 + e^(−x)); the exponent is clamped where σ is 0 or 1 to f32 precision anyway.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp_approx::<false>((-x).min(88.0)))
}

fn forward_typed<T: FloatElement>(gate: &Tensor, up: &Tensor, out: &mut Tensor) -> Result<()> {
    let (g, u) = (gate.as_slice::<T>()?, up.as_slice::<T>()?);
    out.as_mut_slice::<T>()?.par_chunks_mut(BLOCK).zip(g.par_chunks(BLOCK)).zip(u.par_chunks(BLOCK)).for_each(
        |((y, g), u)| {
            for ((y, g), u) in y.iter_mut().zip(g).zip(u) {
                let g = g.to_f32();
                *y = T::from_f32(g * sigmoid(g) * u.to_f32());
            }
        },
    );
    Ok(())
}

fn backward_typed<T: FloatElement>(
    grad_y: &Tensor,
    gate: &Tensor,
    up: &Tensor,
    grad_gate: &mut Tensor,
    grad_up: &mut Tensor,
) -> Result<()> {
    let (dy, g, u) = (grad_y.as_slice::<T>()?, gate.as_slice::<T>()?, up.as_slice::<T>()?);
    grad_gate
        .as_mut_slice::<T>()?
        .par_chunks_mut(BLOCK)
        .zip(grad_up.as_mut_slice::<T>()?.par_chunks_mut(BLOCK))
        .zip(dy.par_chunks(BLOCK).zip(g.par_chunks(BLOCK)).zip(u.par_chunks(BLOCK)))
        .for_each(|((dg, du), ((dy, g), u))| {
            for i in 0..dg.len() {
                let (d, g, u) = (dy[i].to_f32(), g[i].to_f32(), u[i].to_f32());
                let s = sigmoid(g);
                dg[i] = T::from_f32(d * u * s * (1.0 + g * (1.0 - s)));
                du[i] = T::from_f32(d * g * s);
            }
        });
    Ok(())
}

pub(super) fn forward(gate: &Tensor, up: &Tensor, out: &mut Tensor) -> Result<()> {
    match gate.dtype() {
        DType::BF16 => forward_typed::<bf16>(gate, up, out),
        DType::F16 => forward_typed::<f16>(gate, up, out),
        _ => forward_typed::<f32>(gate, up, out),
    }
}

pub(super) fn backward(
    grad_y: &Tensor,
    gate: &Tensor,
    up: &Tensor,
    grad_gate: &mut Tensor,
    grad_up: &mut Tensor,
) -> Result<()> {
    match gate.dtype() {
        DType::BF16 => backward_typed::<bf16>(grad_y, gate, up, grad_gate, grad_up),
        DType::F16 => backward_typed::<f16>(grad_y, gate, up, grad_gate, grad_up),
        _ => backward_typed::<f32>(grad_y, gate, up, grad_gate, grad_up),
    }
}
