//! Linear layers: `y = x·Wᵀ + b` over the last dimension of `x` [.., K] with `W` [M,K] and an optional `b` [M].
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

/// `x·weightᵀ + bias` for `x` [.., K], `weight` [M,K], `bias` [M]: shape [.., M] in `x`'s dtype.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let p = plan(x, weight, bias, &[])?;
    match p.device {
        Device::Cpu => cpu::forward(x, weight, bias, &p),
        Device::Cuda(_) => cuda::forward(x, weight, bias, &p),
    }
}

/// Gradients of `Σ grad_y · linear(x, weight, bias)`; `bias` only says whether (and in which dtype) to return
/// `grad_bias`.
pub fn linear_backward(grad_y: &Tensor, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<LinearGrads> {
    let p = plan(x, weight, bias, &[("grad_y", grad_y)])?;
    check::float("grad_y", grad_y)?;
    check::shape("grad_y", grad_y, &out_shape(x, p.m))?;
    match p.device {
        Device::Cpu => cpu::backward(grad_y, x, weight, bias, &p),
        Device::Cuda(_) => cuda::backward(grad_y, x, weight, bias, &p),
    }
}
