//! CUDA residual add: `kernels/residual.cu`, one grid-stride loop.

use super::KERNELS;
use crate::ops::launch::{self, backend_of, elementwise, ptr};
use crate::runtime::cuda::PushKernelArg;
use crate::runtime::Tensor;
use crate::Result;

pub(super) fn add_in_place(dst: &mut Tensor, src: &Tensor) -> Result<()> {
    let backend = backend_of(src)?;
    let f = launch::kernel(&backend, &KERNELS, "residual_add", dst.dtype())?;
    let (d_p, s_p, n) = (dst.cuda_ptr_mut()?.0, ptr(src)?, dst.numel() as i64);
    let mut b = backend.stream().launch_builder(&f);
    b.arg(&d_p).arg(&s_p).arg(&n);
    // SAFETY: residual_add_<T>(T*, const T*, long long): both tensors hold n elements of T.
    unsafe { b.launch(elementwise(dst.numel())?) }?;
    Ok(())
}
