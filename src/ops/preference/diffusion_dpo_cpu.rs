//! Diffusion-DPO on the CPU: squared-error sums in f64 over fixed chunks (deterministic), then the gradients.

use rayon::prelude::*;

use super::diffusion_dpo::{DiffusionDpoInputs, STREAMS};
use crate::runtime::Device;
use crate::{Result, Tensor};

/// Elements per task.
const CHUNK: usize = 1 << 14;

/// `Σ_d (pred - target)²` per stream and sample, laid out `[stream * B + b]`.
pub(crate) fn squared_errors(inputs: &DiffusionDpoInputs, batch: usize, width: usize) -> Result<Vec<f64>> {
    let streams = inputs.streams();
    let mut data = Vec::with_capacity(STREAMS);
    for (pred, target) in streams {
        data.push((pred.to_f32_cow()?, target.to_f32_cow()?));
    }
    let chunks = width.div_ceil(CHUNK);
    // One task per (stream, sample, chunk); partial sums are added in chunk order.
    let partial: Vec<f64> = (0..STREAMS * batch * chunks)
        .into_par_iter()
        .map(|task| {
            let (row, chunk) = (task / chunks, task % chunks);
            let (pred, target) = &data[row / batch];
            let start = (row % batch) * width + chunk * CHUNK;
            let end = (row % batch) * width + width.min((chunk + 1) * CHUNK);
            pred[start..end].iter().zip(&target[start..end]).map(|(&p, &t)| (p as f64 - t as f64).powi(2)).sum()
        })
        .collect();
    Ok(partial.chunks(chunks).map(|c| c.iter().sum()).collect())
}

/// `coefficient[b] · (pred - target)` for the model's winner and loser predictions (`coefficients`: winner then
/// loser, [2·B]).
pub(crate) fn gradients(inputs: &DiffusionDpoInputs, coefficients: &[f64], width: usize) -> Result<(Tensor, Tensor)> {
    let batch = coefficients.len() / 2;
    let side = |pred: &Tensor, target: &Tensor, coefficients: &[f64]| -> Result<Tensor> {
        let (p, t) = (pred.to_f32_cow()?, target.to_f32_cow()?);
        let mut grad = vec![0.0f32; batch * width];
        grad.par_chunks_mut(CHUNK).enumerate().for_each(|(chunk, g)| {
            for (j, g) in g.iter_mut().enumerate() {
                let i = chunk * CHUNK + j;
                *g = (coefficients[i / width] * (p[i] as f64 - t[i] as f64)) as f32;
            }
        });
        Tensor::from_f32(&grad, pred.shape(), pred.dtype(), Device::Cpu)
    };
    let (winner, loser) = coefficients.split_at(batch);
    Ok((
        side(inputs.model_winner, inputs.target_winner, winner)?,
        side(inputs.model_loser, inputs.target_loser, loser)?,
    ))
}
