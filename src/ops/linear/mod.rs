//! Linear layers: `y = x·Wᵀ + b` over the last dimension of `x` [.., K] with `W` `[M,K]` and an optional `b` `[M]`.
//! Products accumulate in f32 (the CPU `gemm` crate, cuBLAS `GemmEx` on the GPU); the backward gives `d_x = g·W`,
//! `d_W = gᵀ·x` and `d_b = Σ_rows g`, each in the dtype of what it differentiates.

mod cpu;
mod cuda;

use crate::ops::check;
use crate::runtime::cuda::KernelModule;
use crate::runtime::{Device, Tensor};
use crate::{Error, Result};

pub const KERNELS: KernelModule = crate::kernel_module!("linear");

/// Gradients, each in the dtype of the input it differentiates.
#[derive(Debug)]
pub struct LinearGrads {
    pub grad_x: Tensor,
    pub grad_weight: Tensor,
    pub grad_bias: Option<Tensor>,
}

/// The backward's outputs, validated.
struct Outputs<'a> {
    /// `None`: the input's gradient is not wanted and not computed.
    grad_x: Option<&'a mut Tensor>,
    grad_weight: &'a mut Tensor,
    grad_bias: Option<&'a mut Tensor>,
}

/// Validated sizes of a linear layer: rows of `x`, input size K, output size M.
struct Plan {
    rows: usize,
    k: usize,
    m: usize,
    device: Device,
}

fn plan(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, others: &[(&str, &Tensor)]) -> Result<Plan> {
    check::float("x", x)?;
    check::float("weight", weight)?;
    let &[m, k] = check::rank("weight", weight, 2)? else { unreachable!() };
    let kx = *x.shape().last().ok_or_else(|| Error::Shape("`x` must have rank at least 1, got a scalar".into()))?;
    if kx != k {
        return Err(Error::Shape(format!("`x` has {kx} features but `weight` is [{m}, {k}]")));
    }
    check::non_empty("weight (K)", k)?;
    check::non_empty("weight (M)", m)?;
    let rows = x.numel() / k;
    check::non_empty("x (rows)", rows)?;
    let mut named = vec![("x", x), ("weight", weight)];
    if let Some(b) = bias {
        check::float("bias", b)?;
        check::shape("bias", b, &[m])?;
        named.push(("bias", b));
    }
    named.extend_from_slice(others);
    Ok(Plan { rows, k, m, device: check::same_device(&named)? })
}

/// The output shape: `x`'s with the last dimension replaced by M.
fn out_shape(x: &Tensor, m: usize) -> Vec<usize> {
    let mut shape = x.shape().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = m;
    }
    shape
}

/// `x·weightᵀ + bias` for `x` [.., K], `weight` `[M,K]`, `bias` `[M]`: shape [.., M] in `x`'s dtype.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let p = plan(x, weight, bias, &[])?;
    let mut out = Tensor::zeros(&out_shape(x, p.m), x.dtype(), p.device)?;
    linear_into(x, weight, bias, &mut out)?;
    Ok(out)
}

/// [`linear`] into `out` ([.., M], `x`'s dtype and device), which is overwritten whole and must not alias an input.
pub fn linear_into(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, out: &mut Tensor) -> Result<()> {
    let p = plan(x, weight, bias, &[])?;
    check::output("out", out, &out_shape(x, p.m), x.dtype(), p.device)?;
    match p.device {
        Device::Cpu => cpu::forward(x, weight, bias, &p, out),
        Device::Cuda(_) => cuda::forward(x, weight, bias, &p, out),
    }
}

/// Gradients of `Σ grad_y · linear(x, weight, bias)`; `bias` only says whether (and in which dtype) to return
/// `grad_bias`.
pub fn linear_backward(grad_y: &Tensor, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<LinearGrads> {
    let p = plan(x, weight, bias, &[("grad_y", grad_y)])?;
    let zeros = |like: &Tensor| Tensor::zeros(like.shape(), like.dtype(), p.device);
    let (mut grad_x, mut grad_weight) = (zeros(x)?, zeros(weight)?);
    let mut grad_bias = bias.map(zeros).transpose()?;
    linear_backward_into(grad_y, x, weight, bias, &mut grad_x, &mut grad_weight, grad_bias.as_mut())?;
    Ok(LinearGrads { grad_x, grad_weight, grad_bias })
}

/// [`linear_backward`] into `grad_x`, `grad_weight` and `grad_bias` (each with the shape, dtype and device of what
/// it differentiates), overwritten whole; none may alias an input or another output. `grad_bias` is computed when
/// given, which needs `bias`; with a `bias` but no `grad_bias` the bias gradient is skipped.
pub fn linear_backward_into(
    grad_y: &Tensor,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    grad_x: &mut Tensor,
    grad_weight: &mut Tensor,
    grad_bias: Option<&mut Tensor>,
) -> Result<()> {
    backward_into(grad_y, x, weight, bias, Outputs { grad_x: Some(grad_x), grad_weight, grad_bias })
}

/// [`linear_backward_into`] without the input's gradient, which is neither computed nor written: the parameters'
/// gradients of a layer whose input is data (a patch embedding's pixels, a broadcast's ones).
pub fn linear_params_backward_into(
    grad_y: &Tensor,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    grad_weight: &mut Tensor,
    grad_bias: Option<&mut Tensor>,
) -> Result<()> {
    backward_into(grad_y, x, weight, bias, Outputs { grad_x: None, grad_weight, grad_bias })
}

fn backward_into(grad_y: &Tensor, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, out: Outputs<'_>) -> Result<()> {
    let p = plan(x, weight, bias, &[("grad_y", grad_y)])?;
    check::float("grad_y", grad_y)?;
    check::shape("grad_y", grad_y, &out_shape(x, p.m))?;
    let Outputs { grad_x, grad_weight, grad_bias } = out;
    if let Some(grad_x) = &grad_x {
        check::output("grad_x", grad_x, x.shape(), x.dtype(), p.device)?;
    }
    check::output("grad_weight", grad_weight, weight.shape(), weight.dtype(), p.device)?;
    let grad_bias = match (bias, grad_bias) {
        (Some(b), Some(db)) => {
            check::output("grad_bias", db, b.shape(), b.dtype(), p.device)?;
            Some(db)
        }
        (None, Some(_)) => return Err(Error::InvalidArgument("`grad_bias` is given but `bias` is not".into())),
        (_, None) => None,
    };
    let grads = Outputs { grad_x, grad_weight, grad_bias };
    match p.device {
        Device::Cpu => cpu::backward(grad_y, x, weight, &p, grads),
        Device::Cuda(_) => cuda::backward(grad_y, x, weight, bias, &p, grads),
    }
}
