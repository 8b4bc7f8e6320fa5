//! CUDA SwiGLU: `kernels/swiglu.cu`, grid-stride element loops.

use super::KERNELS;
use crate::ops::launch::{self, backend_of, elementwise, ptr};
use crate::runtime::cuda::PushKernelArg;
use crate::runtime::Tensor;
use crate::Result;

pub(super) fn forward(gate: &Tensor, up: &Tensor, out: &mut Tensor) -> Result<()> {
    let backend = backend_of(gate)?;
    let f = launch::kernel(&backend, &KERNELS, "swiglu_forward", gate.dtype())?;
    let (g_p, u_p, y_p, n) = (ptr(gate)?, ptr(up)?, ptr(out)?, gate.numel() as i64);
    let mut b = backend.stream().launch_builder(&f);
    b.arg(&g_p).arg(&u_p).arg(&n).arg(&y_p);
    // SAFETY: swiglu_forward_<T>(const T* ×2, long long, T*): every tensor holds n elements of T.
    unsafe { b.launch(elementwise(gate.numel())?) }?;
    Ok(())
}

pub(super) fn backward(
    grad_y: &Tensor,
    gate: &Tensor,
    up: &Tensor,
    grad_gate: &mut Tensor,
    grad_up: &mut Tensor,
) -> Result<()> {
    let backend = backend_of(gate)?;
    let f = launch::kernel(&backend, &KERNELS, "swiglu_backward", gate.dtype())?;
    let (dy_p, g_p, u_p, n) = (ptr(grad_y)?, ptr(gate)?, ptr(up)?, gate.numel() as i64);
    let (dg_p, du_p) = (ptr(grad_gate)?, ptr(grad_up)?);
    let mut b = backend.stream().launch_builder(&f);
    b.arg(&dy_p).arg(&g_p).arg(&u_p).arg(&n).arg(&dg_p).arg(&du_p);
    // SAFETY: swiglu_backward_<T>(const T* ×3, long long, T* ×2): every tensor holds n elements of T.
    unsafe { b.launch(elementwise(gate.numel())?) }?;
    Ok(())
}
