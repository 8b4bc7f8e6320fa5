//! Residual adds: `dst += src` element-wise, in f32 arithmetic whatever the storage dtype. A residual connection's
//! backward passes its gradient unchanged to both branches, so the same add also accumulates gradients (the
//! residual stream's gradient, a tied embedding's two shares).

mod cpu;
mod cuda;

use crate::ops::check;
use crate::runtime::cuda::KernelModule;
use crate::runtime::{Device, Tensor};
use crate::{Error, Result};

pub const KERNELS: KernelModule = crate::kernel_module!("residual");

/// `dst += src` for two float tensors of one shape and dtype on one device.
pub fn add_in_place(dst: &mut Tensor, src: &Tensor) -> Result<()> {
    check::float("dst", dst)?;
    check::float("src", src)?;
    check::shape("src", src, dst.shape())?;
    if src.dtype() != dst.dtype() {
        return Err(Error::DType {
            arg: "src",
            got: src.dtype(),
            expected: format!("the dtype of `dst` ({})", dst.dtype()),
        });
    }
    match check::same_device(&[("dst", dst), ("src", src)])? {
        Device::Cpu => cpu::add_in_place(dst, src),
        Device::Cuda(_) => cuda::add_in_place(dst, src),
    }
}
