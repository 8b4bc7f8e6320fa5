//! Diffusion-DPO (Wallace et al. 2023), as the paper's authors' code computes it, fused: per-sample squared errors
//! of the model's and the reference's noise predictions, then
//! `loss = mean_b -logσ(-½β((mse_w - mse_l) - (ref_mse_w - ref_mse_l)))` and its gradient with respect to the
//! model's predictions. diffusers' `train_diffusion_dpo.py` writes the same loss without the ½: its `beta_dpo` is
//! β / 2. The reductions over D are in f64 on both devices, so β = 5000 costs no accuracy; the
//! per-sample math (B values) is done here on the host, once for both backends.

use crate::ops::check;
use crate::runtime::{Device, Tensor};
use crate::{Error, Result};

use super::args::{non_finite_is_an_error, same_float_dtype};
use super::math::sigmoid;
use super::{cuda, diffusion_dpo_cpu};

/// Predictions and targets, each of shape [B, D...] (flattened after B), one float dtype, one device. Winner and
/// loser may have different targets (diffusers uses the same noise for both).
#[derive(Clone, Copy, Debug)]
pub struct DiffusionDpoInputs<'a> {
    /// The trained model's prediction for the preferred sample; the gradient is taken with respect to it.
    pub model_winner: &'a Tensor,
    /// The trained model's prediction for the dispreferred sample.
    pub model_loser: &'a Tensor,
    /// The frozen reference model's prediction for the preferred sample.
    pub ref_winner: &'a Tensor,
    /// The frozen reference model's prediction for the dispreferred sample.
    pub ref_loser: &'a Tensor,
    /// The regression target of the preferred sample (the added noise, or the velocity).
    pub target_winner: &'a Tensor,
    /// The regression target of the dispreferred sample.
    pub target_loser: &'a Tensor,
}

/// Hyper-parameters of [`diffusion_dpo_loss`].
#[derive(Clone, Copy, Debug)]
pub struct DiffusionDpoConfig {
    /// β > 0, the paper's (5000 for Stable Diffusion 1.5); diffusers' `beta_dpo` is β / 2.
    pub beta: f32,
    /// The upstream gradient of the loss.
    pub grad_output: f32,
}

impl Default for DiffusionDpoConfig {
    fn default() -> Self {
        DiffusionDpoConfig { beta: 2500.0, grad_output: 1.0 }
    }
}

/// diffusers' logged values, means over the batch.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DiffusionDpoMetrics {
    /// Share of samples with `-½β(model_diff - ref_diff) > 0`.
    pub implicit_accuracy: f32,
    /// Mean per-sample MSE of the model on the winners.
    pub model_mse_winner: f32,
    /// Mean per-sample MSE of the model on the losers.
    pub model_mse_loser: f32,
    /// Mean per-sample MSE of the reference on the winners.
    pub ref_mse_winner: f32,
    /// Mean per-sample MSE of the reference on the losers.
    pub ref_mse_loser: f32,
}

/// The loss, its gradient with respect to the model's winner and loser predictions (their dtype and shape,
/// scaled by `grad_output`) and the metrics.
#[derive(Debug)]
pub struct DiffusionDpoOutput {
    /// Mean over the batch.
    pub loss: f32,
    /// d loss / d `model_winner`.
    pub grad_model_winner: Tensor,
    /// d loss / d `model_loser`.
    pub grad_model_loser: Tensor,
    /// diffusers' logged values.
    pub metrics: DiffusionDpoMetrics,
}

/// The four squared-error streams, in the order of the backends' sums.
pub(crate) const STREAMS: usize = 4;

impl<'a> DiffusionDpoInputs<'a> {
    /// (prediction, target) of model winner, model loser, reference winner, reference loser.
    pub(crate) fn streams(&self) -> [(&'a Tensor, &'a Tensor); STREAMS] {
        [
            (self.model_winner, self.target_winner),
            (self.model_loser, self.target_loser),
            (self.ref_winner, self.target_winner),
            (self.ref_loser, self.target_loser),
        ]
    }
}

/// Diffusion-DPO loss, gradient and metrics; CPU or CUDA by the device of the inputs.
pub fn diffusion_dpo_loss(inputs: &DiffusionDpoInputs, cfg: &DiffusionDpoConfig) -> Result<DiffusionDpoOutput> {
    let named = [
        ("model_winner", inputs.model_winner),
        ("model_loser", inputs.model_loser),
        ("ref_winner", inputs.ref_winner),
        ("ref_loser", inputs.ref_loser),
        ("target_winner", inputs.target_winner),
        ("target_loser", inputs.target_loser),
    ];
    let first = inputs.model_winner;
    check::float("model_winner", first)?;
    let shape = first.shape();
    if shape.is_empty() {
        return Err(Error::Shape("`model_winner` must have shape [B, D...], got a scalar".into()));
    }
    let batch = shape[0];
    check::non_empty("model_winner", batch)?;
    let width: usize = shape[1..].iter().product();
    if width == 0 {
        return Err(Error::Shape(format!("`model_winner` has shape {shape:?}: no elements per sample")));
    }
    for (arg, t) in &named[1..] {
        same_float_dtype(arg, t, first.dtype(), "model_winner")?;
        check::shape(arg, t, shape)?;
    }
    let device = check::same_device(&named)?;
    check::finite("beta", cfg.beta)?;
    check::finite("grad_output", cfg.grad_output)?;
    if cfg.beta <= 0.0 {
        return Err(Error::InvalidArgument(format!("`beta` must be positive, got {}", cfg.beta)));
    }

    let sse = match device {
        Device::Cpu => diffusion_dpo_cpu::squared_errors(inputs, batch, width)?,
        Device::Cuda(_) => cuda::diffusion_squared_errors(inputs, batch, width)?,
    };
    let per_sample = PerSample::new(&sse, batch, width, cfg);
    non_finite_is_an_error(per_sample.loss as f32, "predictions or targets")?;
    let (grad_model_winner, grad_model_loser) = match device {
        Device::Cpu => diffusion_dpo_cpu::gradients(inputs, &per_sample.coefficients, width)?,
        Device::Cuda(_) => cuda::diffusion_gradients(inputs, &per_sample.coefficients, width)?,
    };
    Ok(DiffusionDpoOutput {
        loss: per_sample.loss as f32,
        grad_model_winner,
        grad_model_loser,
        metrics: per_sample.metrics,
    })
}

/// The per-sample math, from the squared-error sums `sse[stream * B + b]`.
struct PerSample {
    loss: f64,
    metrics: DiffusionDpoMetrics,
    /// `d loss / d (pred - target)` per sample: winner then loser, [2·B].
    coefficients: Vec<f64>,
}

impl PerSample {
    fn new(sse: &[f64], batch: usize, width: usize, cfg: &DiffusionDpoConfig) -> PerSample {
        let mse = |stream: usize, b: usize| sse[stream * batch + b] / width as f64;
        let beta = cfg.beta as f64;
        let (mut loss, mut correct) = (0.0, 0.0);
        let mut coefficients = vec![0.0; 2 * batch];
        for b in 0..batch {
            // diffusers: inside = -½β(model_diff - ref_diff); loss = -logσ(inside); the model MSEs' gradient is
            // 2(pred - target)/D, and d inside / d mse_w = -½β = -d inside / d mse_l.
            let inside = -0.5 * beta * ((mse(0, b) - mse(1, b)) - (mse(2, b) - mse(3, b)));
            let s = sigmoid(inside);
            loss -= s.log_pos;
            correct += if inside > 0.0 { 1.0 } else { 0.0 };
            let c = cfg.grad_output as f64 * s.neg * beta / (batch * width) as f64;
            coefficients[b] = c;
            coefficients[batch + b] = -c;
        }
        let n = batch as f64;
        let mean_mse = |stream: usize| ((0..batch).map(|b| mse(stream, b)).sum::<f64>() / n) as f32;
        let metrics = DiffusionDpoMetrics {
            implicit_accuracy: (correct / n) as f32,
            model_mse_winner: mean_mse(0),
            model_mse_loser: mean_mse(1),
            ref_mse_winner: mean_mse(2),
            ref_mse_loser: mean_mse(3),
        };
        PerSample { loss: loss / n, metrics, coefficients }
    }
}
