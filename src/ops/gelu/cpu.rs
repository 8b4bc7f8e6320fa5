//! CPU GELU: element-wise in f32 straight from and to the storage dtype (no f32 copies of the tensors), rayon over
//! blocks; the tanh form's inner loop vectorises (a branch-free exp), the exact form calls `libm::erff`.

use half::{bf16, f16};
use rayon::prelude::*;

use super::GeluApproximation;
use crate::ops::logprobs::row::exp_approx;
use crate::runtime::{DType, FloatElement, Tensor};
use crate::Result;

/// Elements per rayon task.
const BLOCK: usize = 1 << 14;

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const KAPPA: f32 = 0.044_715;
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;
/// Past this |x| the tanh form's sech² is exactly 0 in f32; clamping x there keeps `x³` finite in the derivative.
const TANH_TAIL: f32 = 100.0;

/// (tanh u, sech² u) from `e = exp(−2|u|)`: exact in the tails, where `1 − tanh²` would cancel.
#[inline(always)]
fn tanh_sech2(u: f32) -> (f32, f32) {
    let e = exp_approx::<false>(-2.0 * u.abs());
    let inv = 1.0 / (1.0 + e);
    (((1.0 - e) * inv).copysign(u), 4.0 * e * inv * inv)
}

/// `gelu(x)` and `gelu'(x)` (the latter only when `GRAD`).
#[inline(always)]
fn gelu<const TANH: bool, const GRAD: bool>(x: f32) -> (f32, f32) {
    if TANH {
        let (t, sech2) = tanh_sech2(SQRT_2_OVER_PI * (x + KAPPA * x * x * x));
        let y = 0.5 * x * (1.0 + t);
        if !GRAD {
            return (y, 0.0);
        }
        let xc = x.clamp(-TANH_TAIL, TANH_TAIL);
        (y, 0.5 * (1.0 + t) + 0.5 * x * sech2 * SQRT_2_OVER_PI * (1.0 + 3.0 * KAPPA * xc * xc))
    } else {
        let cdf = 0.5 * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2));
        if !GRAD {
            return (x * cdf, 0.0);
        }
        (x * cdf, cdf + x * FRAC_1_SQRT_2PI * exp_approx::<false>(-0.5 * x * x))
    }
}

fn forward_typed<T: FloatElement, const TANH: bool>(x: &Tensor, out: &mut Tensor) -> Result<()> {
    let xs = x.as_slice::<T>()?;
    out.as_mut_slice::<T>()?.par_chunks_mut(BLOCK).zip(xs.par_chunks(BLOCK)).for_each(|(y, x)| {
        y.iter_mut().zip(x).for_each(|(y, x)| *y = T::from_f32(gelu::<TANH, false>(x.to_f32()).0));
    });
    Ok(())
}

fn backward_typed<T: FloatElement, const TANH: bool>(grad_y: &Tensor, x: &Tensor, grad_x: &mut Tensor) -> Result<()> {
    let (dy, xs) = (grad_y.as_slice::<T>()?, x.as_slice::<T>()?);
    grad_x.as_mut_slice::<T>()?.par_chunks_mut(BLOCK).zip(dy.par_chunks(BLOCK).zip(xs.par_chunks(BLOCK))).for_each(
        |(dx, (dy, x))| {
            for ((dx, dy), x) in dx.iter_mut().zip(dy).zip(x) {
                *dx = T::from_f32(dy.to_f32() * gelu::<TANH, true>(x.to_f32()).1);
            }
        },
    );
    Ok(())
}

pub(super) fn forward(x: &Tensor, approximation: GeluApproximation, out: &mut Tensor) -> Result<()> {
    match (x.dtype(), approximation) {
        (DType::BF16, GeluApproximation::Tanh) => forward_typed::<bf16, true>(x, out),
        (DType::BF16, GeluApproximation::Exact) => forward_typed::<bf16, false>(x, out),
        (DType::F16, GeluApproximation::Tanh) => forward_typed::<f16, true>(x, out),
        (DType::F16, GeluApproximation::Exact) => forward_typed::<f16, false>(x, out),
        (_, GeluApproximation::Tanh) => forward_typed::<f32, true>(x, out),
        (_, GeluApproximation::Exact) => forward_typed::<f32, false>(x, out),
    }
}

pub(super) fn backward(
    grad_y: &Tensor,
    x: &Tensor,
    approximation: GeluApproximation,
    grad_x: &mut Tensor,
) -> Result<()> {
    match (x.dtype(), approximation) {
        (DType::BF16, GeluApproximation::Tanh) => backward_typed::<bf16, true>(grad_y, x, grad_x),
        (DType::BF16, GeluApproximation::Exact) => backward_typed::<bf16, false>(grad_y, x, grad_x),
        (DType::F16, GeluApproximation::Tanh) => backward_typed::<f16, true>(grad_y, x, grad_x),
        (DType::F16, GeluApproximation::Exact) => backward_typed::<f16, false>(grad_y, x, grad_x),
        (_, GeluApproximation::Tanh) => backward_typed::<f32, true>(grad_y, x, grad_x),
        (_, GeluApproximation::Exact) => backward_typed::<f32, false>(grad_y, x, grad_x),
    }
}
