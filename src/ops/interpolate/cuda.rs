//! CUDA bilinear resizing: `kernels/interpolate.cu`, grid-stride loops over the written tensor's elements (channels
//! fastest, so a warp reads contiguous C-vectors).

use super::{Plan, KERNELS};
use crate::ops::launch::{self, backend_of, elementwise, ptr};
use crate::runtime::cuda::PushKernelArg;
use crate::runtime::Tensor;
use crate::Result;

/// Launches `base` over `len` elements: `(src, n, h, w, c, h2, w2, scale_h, scale_w, dst)`.
fn launch(base: &str, src: &Tensor, p: &Plan, len: usize, dst: &mut Tensor) -> Result<()> {
    let backend = backend_of(src)?;
    let f = launch::kernel(&backend, &KERNELS, base, src.dtype())?;
    // The plan bounds each side's element count, so every size fits the kernels' 32-bit ints.
    let [n, h, w, c, h2, w2] = [p.n, p.input[0], p.input[1], p.c, p.output[0], p.output[1]].map(|d| d as i32);
    let scale_h = p.input[0] as f32 / p.output[0] as f32;
    let scale_w = p.input[1] as f32 / p.output[1] as f32;
    let (src_p, dst_p) = (ptr(src)?, ptr(dst)?);
    let mut b = backend.stream().launch_builder(&f);
    b.arg(&src_p).arg(&n).arg(&h).arg(&w).arg(&c).arg(&h2).arg(&w2).arg(&scale_h).arg(&scale_w).arg(&dst_p);
    // SAFETY: bilinear_{forward,backward}_<T>(const T*, int ×6, float ×2, T*): grid-stride over `len` elements of
    // `dst`; `x`/`grad_x` hold n·h·w·c elements of T and `y`/`grad_y` n·h2·w2·c (the plan checked both shapes).
    unsafe { b.launch(elementwise(len)?) }?;
    Ok(())
}

pub(super) fn forward(x: &Tensor, p: &Plan, out: &mut Tensor) -> Result<()> {
    launch("bilinear_forward", x, p, out.numel(), out)
}

pub(super) fn backward(grad_y: &Tensor, p: &Plan, grad_x: &mut Tensor) -> Result<()> {
    launch("bilinear_backward", grad_y, p, grad_x.numel(), grad_x)
}
