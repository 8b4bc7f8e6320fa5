//! GELU, element-wise, in f32 whatever the storage dtype, in the two forms the LLaVA-OneVision reward model uses:
//! the tanh approximation `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))` (SigLIP's MLP, `gelu_pytorch_tanh`) and the
//! exact `0.5·x·(1 + erf(x/√2))` (the projector, transformers' `gelu`), as `torch.nn.functional.gelu` with
//! `approximate="tanh"` and `"none"`. Both share one tanh formulation on CPU and CUDA, `e = exp(−2|u|)`,
//! `tanh u = sign(u)·(1 − e)/(1 + e)`, `sech² u = 4e/(1 + e)²`, which stays exact in the tails (no `1 − tanh²`
//! cancellation times a large `x³` factor).

mod cpu;
mod cuda;

use crate::ops::check;
use crate::runtime::cuda::KernelModule;
use crate::runtime::{Device, Tensor};
use crate::{Error, Result};

pub const KERNELS: KernelModule = crate::kernel_module!("gelu");

/// Which GELU: torch's `approximate` argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeluApproximation {
    /// `0.5·x·(1 + erf(x/√2))`: `approximate="none"`.
    Exact,
    /// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`: `approximate="tanh"`.
    Tanh,
}

impl GeluApproximation {
    /// The GELU of a Hugging Face activation name (`hidden_act`, `projector_hidden_act`): `gelu` is exact,
    /// `gelu_pytorch_tanh` and `gelu_new` the tanh approximation.
    pub fn from_hidden_act(name: &str) -> Result<Self> {
        match name {
            "gelu" => Ok(GeluApproximation::Exact),
            "gelu_pytorch_tanh" | "gelu_new" => Ok(GeluApproximation::Tanh),
            _ => Err(Error::InvalidArgument(format!(
                "unsupported activation `{name}`: expected gelu, gelu_pytorch_tanh or gelu_new"
            ))),
        }
    }
}

/// `gelu(x)` element-wise, in `x`'s shape and dtype.
pub fn gelu(x: &Tensor, approximation: GeluApproximation) -> Result<Tensor> {
    let mut out = Tensor::zeros(x.shape(), x.dtype(), x.device())?;
    gelu_into(x, approximation, &mut out)?;
    Ok(out)
}

/// [`gelu`] into `out`, which has `x`'s shape, dtype and device and is overwritten whole (it must not alias `x`).
pub fn gelu_into(x: &Tensor, approximation: GeluApproximation, out: &mut Tensor) -> Result<()> {
    let device = check::elementwise(&[("x", x)])?;
    check::output("out", out, x.shape(), x.dtype(), device)?;
    match device {
        Device::Cpu => cpu::forward(x, approximation, out),
        Device::Cuda(_) => cuda::forward(x, approximation, out),
    }
}

/// The gradient of `Σ grad_y · gelu(x)`: `grad_y · gelu'(x)`, in `x`'s shape and dtype.
pub fn gelu_backward(grad_y: &Tensor, x: &Tensor, approximation: GeluApproximation) -> Result<Tensor> {
    let mut grad_x = Tensor::zeros(x.shape(), x.dtype(), x.device())?;
    gelu_backward_into(grad_y, x, approximation, &mut grad_x)?;
    Ok(grad_x)
}

/// [`gelu_backward`] into `grad_x`, which has `x`'s shape, dtype and device and is overwritten whole (it must not
/// alias an input).
pub fn gelu_backward_into(
    grad_y: &Tensor,
    x: &Tensor,
    approximation: GeluApproximation,
    grad_x: &mut Tensor,
) -> Result<()> {
    let device = check::elementwise(&[("x", x), ("grad_y", grad_y)])?;
    check::output("grad_x", grad_x, x.shape(), x.dtype(), device)?;
    match device {
        Device::Cpu => cpu::backward(grad_y, x, approximation, grad_x),
        Device::Cuda(_) => cuda::backward(grad_y, x, approximation, grad_x),
    }
}
