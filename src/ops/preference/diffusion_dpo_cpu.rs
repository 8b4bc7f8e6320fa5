//! Diffusion-DPO on the CPU: squared-error sums in f64 over fixed chunks (deterministic), then the gradients.
//! Reads bf16/f16 elements in place (no f32 copies), so both passes stay parallel end to end.

use rayon::prelude::*;

use super::diffusion_dpo::{DiffusionDpoInputs, STREAMS};
use crate::runtime::{DType, FloatElement, Tensor};
use crate::{Error, Result};

/// Elements per task.
const CHUNK: usize = 1 << 14;

/// `Σ_d (pred - target)²` per stream and sample, laid out `[stream * B + b]`.
pub(crate) fn squared_errors(inputs: &DiffusionDpoInputs, batch: usize, width: usize) -> Result<Vec<f64>> {
    match inputs.model_winner.dtype() {
        DType::F32 => squared_errors_of::<f32>(inputs, batch, width),
        DType::BF16 => squared_errors_of::<half::bf16>(inputs, batch, width),
        DType::F16 => squared_errors_of::<half::f16>(inputs, batch, width),
        other => Err(not_float(other)),
    }
}

fn squared_errors_of<T: FloatElement>(inputs: &DiffusionDpoInputs, batch: usize, width: usize) -> Result<Vec<f64>> {
    let mut data = Vec::with_capacity(STREAMS);
    for (pred, target) in inputs.streams() {
        data.push((pred.as_slice::<T>()?, target.as_slice::<T>()?));
    }
    let chunks = width.div_ceil(CHUNK);
    // One task per (stream, sample, chunk); partial sums are added in chunk order.
    let partial: Vec<f64> = (0..STREAMS * batch * chunks)
        .into_par_iter()
        .map(|task| {
            let (row, chunk) = (task / chunks, task % chunks);
            let (pred, target) = data[row / batch];
            let sample = (row % batch) * width;
            let range = sample + chunk * CHUNK..sample + width.min((chunk + 1) * CHUNK);
            pred[range.clone()]
                .iter()
                .zip(&target[range])
                .map(|(&p, &t)| (p.to_f32() as f64 - t.to_f32() as f64).powi(2))
                .sum()
        })
        .collect();
    Ok(partial.chunks(chunks).map(|c| c.iter().sum()).collect())
}

/// `coefficient[b] · (pred - target)` for the model's winner and loser predictions (`coefficients`: winner then
/// loser, [2·B]).
pub(crate) fn gradients(inputs: &DiffusionDpoInputs, coefficients: &[f64], width: usize) -> Result<(Tensor, Tensor)> {
    let (winner, loser) = coefficients.split_at(coefficients.len() / 2);
    let side = |pred: &Tensor, target: &Tensor, coefficients: &[f64]| match pred.dtype() {
        DType::F32 => gradient_of::<f32>(pred, target, coefficients, width),
        DType::BF16 => gradient_of::<half::bf16>(pred, target, coefficients, width),
        DType::F16 => gradient_of::<half::f16>(pred, target, coefficients, width),
        other => Err(not_float(other)),
    };
    Ok((
        side(inputs.model_winner, inputs.target_winner, winner)?,
        side(inputs.model_loser, inputs.target_loser, loser)?,
    ))
}

fn gradient_of<T: FloatElement>(pred: &Tensor, target: &Tensor, coefficients: &[f64], width: usize) -> Result<Tensor> {
    let mut grad = Tensor::zeros(pred.shape(), pred.dtype(), pred.device())?;
    let (p, t) = (pred.as_slice::<T>()?, target.as_slice::<T>()?);
    grad.as_mut_slice::<T>()?.par_chunks_mut(CHUNK).enumerate().for_each(|(chunk, g)| {
        for (j, g) in g.iter_mut().enumerate() {
            let i = chunk * CHUNK + j;
            let diff = p[i].to_f32() as f64 - t[i].to_f32() as f64;
            *g = T::from_f32((coefficients[i / width] * diff) as f32);
        }
    });
    Ok(grad)
}

fn not_float(dtype: DType) -> Error {
    Error::DType { arg: "model_winner", got: dtype, expected: "f32, bf16 or f16".into() }
}
