//! CUDA GELU: `kernels/gelu.cu`, grid-stride element loops.

use super::{GeluApproximation, KERNELS};
use crate::ops::launch::{self, backend_of, elementwise, ptr};
use crate::runtime::cuda::PushKernelArg;
use crate::runtime::Tensor;
use crate::Result;

/// The kernels' `tanh_form` flag.
fn tanh_form(approximation: GeluApproximation) -> i32 {
    i32::from(approximation == GeluApproximation::Tanh)
}

pub(super) fn forward(x: &Tensor, approximation: GeluApproximation, out: &mut Tensor) -> Result<()> {
    let backend = backend_of(x)?;
    let f = launch::kernel(&backend, &KERNELS, "gelu_forward", x.dtype())?;
    let (x_p, y_p, n, form) = (ptr(x)?, ptr(out)?, x.numel() as i64, tanh_form(approximation));
    let mut b = backend.stream().launch_builder(&f);
    b.arg(&x_p).arg(&n).arg(&form).arg(&y_p);
    // SAFETY: gelu_forward_<T>(const T*, long long, int, T*): both tensors hold n elements of T.
    unsafe { b.launch(elementwise(x.numel())?) }?;
    Ok(())
}

pub(super) fn backward(
    grad_y: &Tensor,
    x: &Tensor,
    approximation: GeluApproximation,
    grad_x: &mut Tensor,
) -> Result<()> {
    let backend = backend_of(x)?;
    let f = launch::kernel(&backend, &KERNELS, "gelu_backward", x.dtype())?;
    let (dy_p, x_p, dx_p) = (ptr(grad_y)?, ptr(x)?, ptr(grad_x)?);
    let (n, form) = (x.numel() as i64, tanh_form(approximation));
    let mut b = backend.stream().launch_builder(&f);
    b.arg(&dy_p).arg(&x_p).arg(&n).arg(&form).arg(&dx_p);
    // SAFETY: gelu_backward_<T>(const T* ×2, long long, int, T*): every tensor holds n elements of T.
    unsafe { b.launch(elementwise(x.numel())?) }?;
    Ok(())
}
