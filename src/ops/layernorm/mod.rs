//! LayerNorm over the last dimension, as `torch.nn.LayerNorm` with a weight and a bias (SigLIP's `layer_norm1`,
//! `layer_norm2` and `post_layernorm`): `y = (x − mean) · rstd · w + b` with `rstd = 1 / sqrt(var + eps)` and the
//! biased variance, in f32 whatever the storage dtype. The mean comes first and the variance about it after (no
//! cancellation in `E[x²] − mean²`). The forward saves each row's mean and rstd for the backward, which gives `d_x`
//! per row and `d_w`, `d_b` summed over rows in a fixed order (deterministic on every device).

mod cpu;
mod cuda;

use crate::ops::check;
use crate::runtime::cuda::KernelModule;
use crate::runtime::{DType, Device, Tensor};
use crate::{Error, Result};

pub const KERNELS: KernelModule = crate::kernel_module!("layernorm");

/// The variance epsilon (SigLIP's `layer_norm_eps`, 1e-6; torch's default is 1e-5).
#[derive(Clone, Copy, Debug)]
pub struct LayerNormConfig {
    pub eps: f32,
}

impl Default for LayerNormConfig {
    fn default() -> Self {
        LayerNormConfig { eps: 1e-6 }
    }
}

/// Per-row statistics the forward saves for the backward: f32 `[rows]` each (rows = every dimension of `x` but
/// the last).
#[derive(Debug)]
pub struct LayerNormStats {
    pub mean: Tensor,
    /// `1 / sqrt(var + eps)`.
    pub rstd: Tensor,
}

/// The forward's output and what the backward needs.
#[derive(Debug)]
pub struct LayerNormOutput {
    /// The normalised rows, shape and dtype of `x`.
    pub y: Tensor,
    pub stats: LayerNormStats,
}

/// Gradients, each in the dtype of the input it differentiates.
#[derive(Debug)]
pub struct LayerNormGrads {
    pub grad_x: Tensor,
    pub grad_weight: Tensor,
    pub grad_bias: Tensor,
}

/// The backward's outputs, validated.
struct Outputs<'a> {
    grad_x: &'a mut Tensor,
    grad_weight: &'a mut Tensor,
    grad_bias: &'a mut Tensor,
}

/// Validated sizes: rows and hidden size of `x` [.., H].
#[derive(Clone, Copy)]
struct Plan {
    rows: usize,
    h: usize,
    device: Device,
}

/// Rows and hidden size of `x` [.., H] against `weight` [H]; all tensors on one device.
fn plan(x: &Tensor, weight: &Tensor, others: &[(&'static str, &Tensor)]) -> Result<Plan> {
    check::float("x", x)?;
    check::float("weight", weight)?;
    let h = *x.shape().last().ok_or_else(|| Error::Shape("`x` must have rank at least 1, got a scalar".into()))?;
    check::non_empty("x (H)", h)?;
    check::shape("weight", weight, &[h])?;
    let rows = x.numel() / h;
    check::non_empty("x (rows)", rows)?;
    let mut named = vec![("x", x), ("weight", weight)];
    named.extend_from_slice(others);
    Ok(Plan { rows, h, device: check::same_device(&named)? })
}

/// Checks the saved statistics against the plan.
fn check_stats(stats: &LayerNormStats, p: &Plan) -> Result<()> {
    for (name, t) in [("stats.mean", &stats.mean), ("stats.rstd", &stats.rstd)] {
        check::dtype(name, t, DType::F32)?;
        check::shape(name, t, &[p.rows])?;
    }
    Ok(())
}

/// `(x − mean) / sqrt(var + eps) · weight + bias` over the last dimension of `x` [.., H]; `weight`, `bias` `[H]`.
pub fn layernorm(x: &Tensor, weight: &Tensor, bias: &Tensor, cfg: &LayerNormConfig) -> Result<LayerNormOutput> {
    let p = plan(x, weight, &[("bias", bias)])?;
    let stat = || Tensor::zeros(&[p.rows], DType::F32, p.device);
    let mut out = LayerNormOutput {
        y: Tensor::zeros(x.shape(), x.dtype(), p.device)?,
        stats: LayerNormStats { mean: stat()?, rstd: stat()? },
    };
    layernorm_into(x, weight, bias, cfg, &mut out.y, &mut out.stats)?;
    Ok(out)
}

/// [`layernorm`] into `y` (`x`'s shape, dtype and device) and `stats` (f32 `[rows]` each), overwritten whole; none
/// may alias an input or another output.
pub fn layernorm_into(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    cfg: &LayerNormConfig,
    y: &mut Tensor,
    stats: &mut LayerNormStats,
) -> Result<()> {
    check::finite("eps", cfg.eps)?;
    if cfg.eps < 0.0 {
        return Err(Error::InvalidArgument(format!("`eps` must be non-negative, got {}", cfg.eps)));
    }
    let p = plan(x, weight, &[("bias", bias)])?;
    check::float("bias", bias)?;
    check::shape("bias", bias, &[p.h])?;
    check::output("y", y, x.shape(), x.dtype(), p.device)?;
    check::output("stats.mean", &stats.mean, &[p.rows], DType::F32, p.device)?;
    check::output("stats.rstd", &stats.rstd, &[p.rows], DType::F32, p.device)?;
    match p.device {
        Device::Cpu => cpu::forward(x, weight, bias, cfg.eps, &p, y, stats),
        Device::Cuda(_) => cuda::forward(x, weight, bias, cfg.eps, &p, y, stats),
    }
}

/// Gradients of `Σ grad_y · y` with respect to `x`, `weight` and `bias`, from the forward's saved statistics.
pub fn layernorm_backward(
    grad_y: &Tensor,
    x: &Tensor,
    weight: &Tensor,
    stats: &LayerNormStats,
) -> Result<LayerNormGrads> {
    let p = plan(x, weight, &[("grad_y", grad_y)])?;
    let zeros = |like: &Tensor| Tensor::zeros(like.shape(), like.dtype(), p.device);
    let mut grads = LayerNormGrads { grad_x: zeros(x)?, grad_weight: zeros(weight)?, grad_bias: zeros(weight)? };
    let LayerNormGrads { grad_x, grad_weight, grad_bias } = &mut grads;
    layernorm_backward_into(grad_y, x, weight, stats, grad_x, grad_weight, grad_bias)?;
    Ok(grads)
}

/// [`layernorm_backward`] into `grad_x` (`x`'s shape, dtype and device) and `grad_weight`, `grad_bias` (`weight`'s),
/// overwritten whole; none may alias an input or another output.
pub fn layernorm_backward_into(
    grad_y: &Tensor,
    x: &Tensor,
    weight: &Tensor,
    stats: &LayerNormStats,
    grad_x: &mut Tensor,
    grad_weight: &mut Tensor,
    grad_bias: &mut Tensor,
) -> Result<()> {
    let p = plan(x, weight, &[("grad_y", grad_y), ("stats.mean", &stats.mean), ("stats.rstd", &stats.rstd)])?;
    check::float("grad_y", grad_y)?;
    check::shape("grad_y", grad_y, x.shape())?;
    check_stats(stats, &p)?;
    check::output("grad_x", grad_x, x.shape(), x.dtype(), p.device)?;
    check::output("grad_weight", grad_weight, weight.shape(), weight.dtype(), p.device)?;
    check::output("grad_bias", grad_bias, weight.shape(), weight.dtype(), p.device)?;
    let out = Outputs { grad_x, grad_weight, grad_bias };
    match p.device {
        Device::Cpu => cpu::backward(grad_y, x, weight, stats, &p, out),
        Device::Cuda(_) => cuda::backward(grad_y, x, weight, stats, &p, out),
    }
}
