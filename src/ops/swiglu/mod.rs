//! The SwiGLU gate of Qwen2's MLP: `y = silu(gate) ∘ up` element-wise (the gate, up and down projections are
//! [`linear`](crate::ops::linear) ops), in f32 whatever the storage dtype.

mod cpu;
mod cuda;

use crate::ops::check;
use crate::runtime::cuda::KernelModule;
use crate::runtime::{Device, Tensor};
use crate::{Error, Result};

pub const KERNELS: KernelModule = crate::kernel_module!("swiglu");

/// Gradients, each in the dtype of the input it differentiates.
#[derive(Debug)]
pub struct SwigluGrads {
    pub grad_gate: Tensor,
    pub grad_up: Tensor,
}

fn plan(named: &[(&'static str, &Tensor)]) -> Result<Device> {
    let (_, first) = named[0];
    for &(name, t) in named {
        check::float(name, t)?;
        check::shape(name, t, first.shape())?;
        if t.dtype() != first.dtype() {
            return Err(Error::DType {
                arg: name,
                got: t.dtype(),
                expected: format!("the dtype of `gate` ({})", first.dtype()),
            });
        }
    }
    check::non_empty("gate", first.numel())?;
    check::same_device(named)
}

/// `silu(gate) ∘ up` for two tensors of one shape and dtype.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    match plan(&[("gate", gate), ("up", up)])? {
        Device::Cpu => cpu::forward(gate, up),
        Device::Cuda(_) => cuda::forward(gate, up),
    }
}

/// Gradients of `Σ grad_y · swiglu(gate, up)`: `d_gate = g·up·σ(gate)·(1 + gate·(1 − σ(gate)))`,
/// `d_up = g·silu(gate)`.
pub fn swiglu_backward(grad_y: &Tensor, gate: &Tensor, up: &Tensor) -> Result<SwigluGrads> {
    match plan(&[("gate", gate), ("up", up), ("grad_y", grad_y)])? {
        Device::Cpu => cpu::backward(grad_y, gate, up),
        Device::Cuda(_) => cuda::backward(grad_y, gate, up),
    }
}
