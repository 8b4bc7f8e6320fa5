//! CPU SwiGLU: element-wise in f32, rayon over blocks whose inner loops vectorise (a branch-free exp).

use rayon::prelude::*;

use super::SwigluGrads;
use crate::ops::convert::{f32_values, float_tensor};
use crate::ops::logprobs::row::exp_approx;
use crate::runtime::Tensor;
use crate::Result;

/// Elements per rayon task.
const BLOCK: usize = 1 << 14;

/// σ(x) = 1 / (1 + e^(−x)); the exponent is clamped where σ is 0 or 1 to f32 precision anyway.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp_approx::<false>((-x).min(88.0)))
}

pub(super) fn forward(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let (g, u) = (f32_values(gate)?, f32_values(up)?);
    let mut y = vec![0.0f32; g.len()];
    y.par_chunks_mut(BLOCK).zip(g.par_chunks(BLOCK)).zip(u.par_chunks(BLOCK)).for_each(|((y, g), u)| {
        for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
            *y = g * sigmoid(g) * u;
        }
    });
    float_tensor(&y, gate.shape(), gate.dtype())
}

pub(super) fn backward(grad_y: &Tensor, gate: &Tensor, up: &Tensor) -> Result<SwigluGrads> {
    let (dy, g, u) = (f32_values(grad_y)?, f32_values(gate)?, f32_values(up)?);
    let (mut dg, mut du) = (vec![0.0f32; g.len()], vec![0.0f32; g.len()]);
    dg.par_chunks_mut(BLOCK)
        .zip(du.par_chunks_mut(BLOCK))
        .zip(dy.par_chunks(BLOCK).zip(g.par_chunks(BLOCK)).zip(u.par_chunks(BLOCK)))
        .for_each(|((dg, du), ((dy, g), u))| {
            for i in 0..dg.len() {
                let s = sigmoid(g[i]);
                dg[i] = dy[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
                du[i] = dy[i] * g[i] * s;
            }
        });
    Ok(SwigluGrads {
        grad_gate: float_tensor(&dg, gate.shape(), gate.dtype())?,
        grad_up: float_tensor(&du, up.shape(), up.dtype())?,
    })
}
