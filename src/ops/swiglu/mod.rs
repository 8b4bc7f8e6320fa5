//! The SwiGLU gate of Qwen2's MLP: `y = silu(gate) ∘ up` element-wise (the gate, up and down projections are
//! [`linear`](crate::ops::linear) ops), in f32 whatever the storage dtype.

mod cpu;
mod cuda;

use crate::ops::check;
use crate::runtime::cuda::KernelModule;
use crate::runtime::{Device, Tensor};
use crate::Result;

pub const KERNELS: KernelModule = crate::kernel_module!("swiglu");

/// Gradients, each in the dtype of the input it differentiates.
#[derive(Debug)]
pub struct SwigluGrads {
    pub grad_gate: Tensor,
    pub grad_up: Tensor,
}

/// `silu(gate) ∘ up` for two tensors of one shape and dtype.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let mut out = Tensor::zeros(gate.shape(), gate.dtype(), gate.device())?;
    swiglu_into(gate, up, &mut out)?;
    Ok(out)
}

/// [`swiglu`] into `out`, which has `gate`'s shape, dtype and device and is overwritten whole (it must not alias
/// an input).
pub fn swiglu_into(gate: &Tensor, up: &Tensor, out: &mut Tensor) -> Result<()> {
    let device = check::elementwise(&[("gate", gate), ("up", up)])?;
    check::output("out", out, gate.shape(), gate.dtype(), device)?;
    match device {
        Device::Cpu => cpu::forward(gate, up, out),
        Device::Cuda(_) => cuda::forward(gate, up, out),
    }
}

/// Gradients of `Σ grad_y · swiglu(gate, up)`: `d_gate = g·up·σ(gate)·(1 + gate·(1 − σ(gate)))`,
/// `d_up = g·silu(gate)`.
pub fn swiglu_backward(grad_y: &Tensor, gate: &Tensor, up: &Tensor) -> Result<SwigluGrads> {
    let zeros = || Tensor::zeros(gate.shape(), gate.dtype(), gate.device());
    let (mut grad_gate, mut grad_up) = (zeros()?, zeros()?);
    swiglu_backward_into(grad_y, gate, up, &mut grad_gate, &mut grad_up)?;
    Ok(SwigluGrads { grad_gate, grad_up })
}

/// [`swiglu_backward`] into `grad_gate` and `grad_up`, each with `gate`'s shape, dtype and device and overwritten
/// whole (neither may alias an input or the other).
pub fn swiglu_backward_into(
    grad_y: &Tensor,
    gate: &Tensor,
    up: &Tensor,
    grad_gate: &mut Tensor,
    grad_up: &mut Tensor,
) -> Result<()> {
    let device = check::elementwise(&[("gate", gate), ("up", up), ("grad_y", grad_y)])?;
    check::output("grad_gate", grad_gate, gate.shape(), gate.dtype(), device)?;
    check::output("grad_up", grad_up, gate.shape(), gate.dtype(), device)?;
    match device {
        Device::Cpu => cpu::backward(grad_y, gate, up, grad_gate, grad_up),
        Device::Cuda(_) => cuda::backward(grad_y, gate, up, grad_gate, grad_up),
    }
}
