//! CUDA RMSNorm: `kernels/rmsnorm.cu`. One block per row; `d_w` in two deterministic passes (per-chunk column
//! partials, then a sum over chunks in order).

use super::{Outputs, KERNELS};
use crate::ops::launch::{self, backend_of, check_i32, elementwise, ptr, THREADS};
use crate::runtime::cuda::{launch_config, PushKernelArg};
use crate::runtime::{DType, Tensor};
use crate::{Error, Result};

/// Rows per chunk of the first `d_w` pass.
const DW_CHUNK_ROWS: usize = 32;

fn same_dtype(x: &Tensor, others: &[(&'static str, &Tensor)]) -> Result<()> {
    for (name, t) in others {
        if t.dtype() != x.dtype() {
            return Err(Error::DType {
                arg: name,
                got: t.dtype(),
                expected: format!("the dtype of `x` ({}) on CUDA", x.dtype()),
            });
        }
    }
    Ok(())
}

pub(super) fn forward(
    x: &Tensor,
    weight: &Tensor,
    eps: f32,
    rows: usize,
    h: usize,
    y: &mut Tensor,
    rstd: &mut Tensor,
) -> Result<()> {
    same_dtype(x, &[("weight", weight)])?;
    let backend = backend_of(x)?;
    let f = launch::kernel(&backend, &KERNELS, "rmsnorm_forward", x.dtype())?;
    let h_i32 = check_i32("H", h)?;
    let (x_p, w_p, y_p, r_p) = (ptr(x)?, ptr(weight)?, ptr(y)?, ptr(rstd)?);
    let mut b = backend.stream().launch_builder(&f);
    b.arg(&x_p).arg(&w_p).arg(&eps).arg(&h_i32).arg(&y_p).arg(&r_p);
    // SAFETY: rmsnorm_forward_<T>(const T*, const T*, float, int, T*, float*): one block per row; `x` and `y` hold
    // rows·H elements of T, `weight` H, `rstd` rows floats.
    unsafe { b.launch(launch_config(rows, THREADS, 0)?) }?;
    Ok(())
}

pub(super) fn backward(
    grad_y: &Tensor,
    x: &Tensor,
    weight: &Tensor,
    rstd: &Tensor,
    rows: usize,
    h: usize,
    out: Outputs<'_>,
) -> Result<()> {
    same_dtype(x, &[("weight", weight), ("grad_y", grad_y)])?;
    let (backend, dtype, device) = (backend_of(x)?, x.dtype(), x.device());
    let (rows_i32, h_i32) = (check_i32("rows", rows)?, check_i32("H", h)?);
    let (g_p, x_p, w_p, r_p) = (ptr(grad_y)?, ptr(x)?, ptr(weight)?, ptr(rstd)?);

    let dx_p = ptr(out.grad_x)?;
    let f = launch::kernel(&backend, &KERNELS, "rmsnorm_backward_dx", dtype)?;
    let mut b = backend.stream().launch_builder(&f);
    b.arg(&g_p).arg(&x_p).arg(&w_p).arg(&r_p).arg(&h_i32).arg(&dx_p);
    // SAFETY: rmsnorm_backward_dx_<T>(const T* ×3, const float*, int, T*): one block per row; `grad_y`, `x` and
    // `grad_x` hold rows·H elements of T, `weight` H, `rstd` rows floats.
    unsafe { b.launch(launch_config(rows, THREADS, 0)?) }?;

    let chunks = rows.div_ceil(DW_CHUNK_ROWS);
    let partial = Tensor::zeros(&[chunks, h], DType::F32, device)?;
    let p_p = ptr(&partial)?;
    let chunk_rows = DW_CHUNK_ROWS as i32;
    let f = launch::kernel(&backend, &KERNELS, "rmsnorm_backward_dw_partial", dtype)?;
    let mut b = backend.stream().launch_builder(&f);
    b.arg(&g_p).arg(&x_p).arg(&r_p).arg(&rows_i32).arg(&h_i32).arg(&chunk_rows).arg(&p_p);
    // SAFETY: rmsnorm_backward_dw_partial_<T>(const T* ×2, const float*, int, int, int, float*): chunks × column
    // blocks blocks of THREADS threads; `partial` holds chunks·H floats; threads past H return.
    unsafe { b.launch(launch_config(chunks * h.div_ceil(THREADS as usize), THREADS, 0)?) }?;

    let (chunks_i32, dw_p) = (check_i32("row chunks", chunks)?, ptr(out.grad_weight)?);
    let f = launch::kernel(&backend, &KERNELS, "rmsnorm_backward_dw_reduce", dtype)?;
    let mut b = backend.stream().launch_builder(&f);
    b.arg(&p_p).arg(&chunks_i32).arg(&h_i32).arg(&dw_p);
    // SAFETY: rmsnorm_backward_dw_reduce_<T>(const float*, int, int, T*): grid-stride over H columns; `partial`
    // holds chunks·H floats and `grad_weight` H elements of T.
    unsafe { b.launch(elementwise(h)?) }?;
    Ok(())
}
