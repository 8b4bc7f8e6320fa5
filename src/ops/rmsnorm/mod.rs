//! RMSNorm over the last dimension, as Qwen2RMSNorm: `y = x / sqrt(mean(x²) + eps) · w`, in f32 whatever the
//! storage dtype. The forward saves each row's `rstd = 1 / sqrt(mean(x²) + eps)` for the backward, which gives
//! `d_x` per row and `d_w` summed over rows in a fixed order (deterministic on every device).

mod cpu;
mod cuda;

use crate::ops::check;
use crate::runtime::cuda::KernelModule;
use crate::runtime::{DType, Device, Tensor};
use crate::{Error, Result};

pub const KERNELS: KernelModule = crate::kernel_module!("rmsnorm");

/// The variance epsilon (Qwen2's `rms_norm_eps`, typically 1e-6).
#[derive(Clone, Copy, Debug)]
pub struct RmsNormConfig {
    pub eps: f32,
}

impl Default for RmsNormConfig {
    fn default() -> Self {
        RmsNormConfig { eps: 1e-6 }
    }
}

/// The forward's output and what the backward needs.
#[derive(Debug)]
pub struct RmsNormOutput {
    /// The normalised rows, shape and dtype of `x`.
    pub y: Tensor,
    /// f32 `[rows]`: `1 / sqrt(mean(x²) + eps)` per row (rows = every dimension of `x` but the last).
    pub rstd: Tensor,
}

/// Gradients, each in the dtype of the input it differentiates.
#[derive(Debug)]
pub struct RmsNormGrads {
    pub grad_x: Tensor,
    pub grad_weight: Tensor,
}

/// The backward's outputs, validated.
struct Outputs<'a> {
    grad_x: &'a mut Tensor,
    grad_weight: &'a mut Tensor,
}

/// Rows and hidden size of `x` [.., H] against `weight` [H]; all tensors on one device.
fn sizes(x: &Tensor, weight: &Tensor, others: &[(&str, &Tensor)]) -> Result<(usize, usize, Device)> {
    check::float("x", x)?;
    check::float("weight", weight)?;
    let h = *x.shape().last().ok_or_else(|| Error::Shape("`x` must have rank at least 1, got a scalar".into()))?;
    check::non_empty("x (H)", h)?;
    check::shape("weight", weight, &[h])?;
    let rows = x.numel() / h;
    check::non_empty("x (rows)", rows)?;
    let mut named = vec![("x", x), ("weight", weight)];
    named.extend_from_slice(others);
    Ok((rows, h, check::same_device(&named)?))
}

/// `x / sqrt(mean(x²) + eps) · weight` over the last dimension of `x` [.., H], `weight` `[H]`.
pub fn rmsnorm(x: &Tensor, weight: &Tensor, cfg: &RmsNormConfig) -> Result<RmsNormOutput> {
    let (rows, _, device) = sizes(x, weight, &[])?;
    let mut y = Tensor::zeros(x.shape(), x.dtype(), device)?;
    let mut rstd = Tensor::zeros(&[rows], DType::F32, device)?;
    rmsnorm_into(x, weight, cfg, &mut y, &mut rstd)?;
    Ok(RmsNormOutput { y, rstd })
}

/// [`rmsnorm`] into `y` (`x`'s shape, dtype and device) and `rstd` (f32 `[rows]`), overwritten whole; neither may
/// alias an input or the other.
pub fn rmsnorm_into(x: &Tensor, weight: &Tensor, cfg: &RmsNormConfig, y: &mut Tensor, rstd: &mut Tensor) -> Result<()> {
    check::finite("eps", cfg.eps)?;
    if cfg.eps < 0.0 {
        return Err(Error::InvalidArgument(format!("`eps` must be non-negative, got {}", cfg.eps)));
    }
    let (rows, h, device) = sizes(x, weight, &[])?;
    check::output("y", y, x.shape(), x.dtype(), device)?;
    check::output("rstd", rstd, &[rows], DType::F32, device)?;
    match device {
        Device::Cpu => cpu::forward(x, weight, cfg.eps, h, y, rstd),
        Device::Cuda(_) => cuda::forward(x, weight, cfg.eps, rows, h, y, rstd),
    }
}

/// Gradients of `Σ grad_y · y` with respect to `x` and `weight`, from the forward's saved `rstd`.
pub fn rmsnorm_backward(grad_y: &Tensor, x: &Tensor, weight: &Tensor, rstd: &Tensor) -> Result<RmsNormGrads> {
    let (_, _, device) = sizes(x, weight, &[("grad_y", grad_y), ("rstd", rstd)])?;
    let mut grad_x = Tensor::zeros(x.shape(), x.dtype(), device)?;
    let mut grad_weight = Tensor::zeros(weight.shape(), weight.dtype(), device)?;
    rmsnorm_backward_into(grad_y, x, weight, rstd, &mut grad_x, &mut grad_weight)?;
    Ok(RmsNormGrads { grad_x, grad_weight })
}

/// [`rmsnorm_backward`] into `grad_x` and `grad_weight` (each with the shape, dtype and device of what it
/// differentiates), overwritten whole; neither may alias an input or the other.
pub fn rmsnorm_backward_into(
    grad_y: &Tensor,
    x: &Tensor,
    weight: &Tensor,
    rstd: &Tensor,
    grad_x: &mut Tensor,
    grad_weight: &mut Tensor,
) -> Result<()> {
    let (rows, h, device) = sizes(x, weight, &[("grad_y", grad_y), ("rstd", rstd)])?;
    check::float("grad_y", grad_y)?;
    check::shape("grad_y", grad_y, x.shape())?;
    check::dtype("rstd", rstd, DType::F32)?;
    check::shape("rstd", rstd, &[rows])?;
    check::output("grad_x", grad_x, x.shape(), x.dtype(), device)?;
    check::output("grad_weight", grad_weight, weight.shape(), weight.dtype(), device)?;
    let out = Outputs { grad_x, grad_weight };
    match device {
        Device::Cpu => cpu::backward(grad_y, x, weight, rstd, rows, h, out),
        Device::Cuda(_) => cuda::backward(grad_y, x, weight, rstd, rows, h, out),
    }
}
