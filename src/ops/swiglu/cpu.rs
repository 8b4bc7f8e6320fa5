//! CPU SwiGLU: element-wise in f32 through rayon.

use rayon::prelude::*;

use super::SwigluGrads;
use crate::runtime::{Device, Tensor};
use crate::Result;

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

pub(super) fn forward(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let (g, u) = (gate.to_f32_cow()?, up.to_f32_cow()?);
    let y: Vec<f32> = g.par_iter().zip(u.par_iter()).map(|(&g, &u)| g * sigmoid(g) * u).collect();
    Tensor::from_f32(&y, gate.shape(), gate.dtype(), Device::Cpu)
}

pub(super) fn backward(grad_y: &Tensor, gate: &Tensor, up: &Tensor) -> Result<SwigluGrads> {
    let (dy, g, u) = (grad_y.to_f32_cow()?, gate.to_f32_cow()?, up.to_f32_cow()?);
    let (dg, du): (Vec<f32>, Vec<f32>) = dy
        .par_iter()
        .zip(g.par_iter())
        .zip(u.par_iter())
        .map(|((&dy, &g), &u)| {
            let s = sigmoid(g);
            (dy * u * s * (1.0 + g * (1.0 - s)), dy * g * s)
        })
        .unzip();
    Ok(SwigluGrads {
        grad_gate: Tensor::from_f32(&dg, gate.shape(), gate.dtype(), Device::Cpu)?,
        grad_up: Tensor::from_f32(&du, up.shape(), up.dtype(), Device::Cpu)?,
    })
}
