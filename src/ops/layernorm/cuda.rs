//! CUDA LayerNorm: `kernels/layernorm.cu`. One block per row; `d_w` and `d_b` in two deterministic passes
//! (per-chunk column partials, then a sum over chunks in order).

use super::{LayerNormStats, Outputs, Plan, KERNELS};
use crate::ops::launch::{self, backend_of, check_i32, elementwise, ptr, same_dtype, THREADS};
use crate::runtime::cuda::{launch_config, PushKernelArg};
use crate::runtime::{DType, Tensor};
use crate::Result;

/// Rows per chunk of the first `d_w`, `d_b` pass.
const DWB_CHUNK_ROWS: usize = 32;

pub(super) fn forward(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f32,
    p: &Plan,
    y: &mut Tensor,
    stats: &mut LayerNormStats,
) -> Result<()> {
    same_dtype(("x", x), &[("weight", weight), ("bias", bias)])?;
    let backend = backend_of(x)?;
    let f = launch::kernel(&backend, &KERNELS, "layernorm_forward", x.dtype())?;
    let h = check_i32("H", p.h)?;
    let (x_p, w_p, b_p, y_p) = (ptr(x)?, ptr(weight)?, ptr(bias)?, ptr(y)?);
    let (m_p, r_p) = (ptr(&stats.mean)?, ptr(&stats.rstd)?);
    let mut b = backend.stream().launch_builder(&f);
    b.arg(&x_p).arg(&w_p).arg(&b_p).arg(&eps).arg(&h).arg(&y_p).arg(&m_p).arg(&r_p);
    // SAFETY: layernorm_forward_<T>(const T* ×3, float, int, T*, float* ×2): one block per row; `x` and `y` hold
    // rows·H elements of T, `weight` and `bias` H, `mean` and `rstd` rows floats.
    unsafe { b.launch(launch_config(p.rows, THREADS, 0)?) }?;
    Ok(())
}

pub(super) fn backward(
    grad_y: &Tensor,
    x: &Tensor,
    weight: &Tensor,
    stats: &LayerNormStats,
    p: &Plan,
    out: Outputs<'_>,
) -> Result<()> {
    same_dtype(("x", x), &[("weight", weight), ("grad_y", grad_y)])?;
    let (backend, dtype) = (backend_of(x)?, x.dtype());
    let (rows, h) = (check_i32("rows", p.rows)?, check_i32("H", p.h)?);
    let (g_p, x_p, w_p) = (ptr(grad_y)?, ptr(x)?, ptr(weight)?);
    let (m_p, r_p) = (ptr(&stats.mean)?, ptr(&stats.rstd)?);

    let dx_p = ptr(out.grad_x)?;
    let f = launch::kernel(&backend, &KERNELS, "layernorm_backward_dx", dtype)?;
    let mut b = backend.stream().launch_builder(&f);
    b.arg(&g_p).arg(&x_p).arg(&w_p).arg(&m_p).arg(&r_p).arg(&h).arg(&dx_p);
    // SAFETY: layernorm_backward_dx_<T>(const T* ×3, const float* ×2, int, T*): one block per row; `grad_y`, `x`
    // and `grad_x` hold rows·H elements of T, `weight` H, `mean` and `rstd` rows floats.
    unsafe { b.launch(launch_config(p.rows, THREADS, 0)?) }?;

    let chunks = p.rows.div_ceil(DWB_CHUNK_ROWS);
    let partial_w = Tensor::zeros(&[chunks, p.h], DType::F32, p.device)?;
    let partial_b = Tensor::zeros(&[chunks, p.h], DType::F32, p.device)?;
    let (pw_p, pb_p) = (ptr(&partial_w)?, ptr(&partial_b)?);
    let chunk_rows = DWB_CHUNK_ROWS as i32;
    let f = launch::kernel(&backend, &KERNELS, "layernorm_backward_dwb_partial", dtype)?;
    let mut b = backend.stream().launch_builder(&f);
    b.arg(&g_p).arg(&x_p).arg(&m_p).arg(&r_p).arg(&rows).arg(&h).arg(&chunk_rows).arg(&pw_p).arg(&pb_p);
    // SAFETY: layernorm_backward_dwb_partial_<T>(const T* ×2, const float* ×2, int ×3, float* ×2): chunks × column
    // blocks blocks of THREADS threads; each partial holds chunks·H floats; threads past H return.
    unsafe { b.launch(launch_config(chunks * p.h.div_ceil(THREADS as usize), THREADS, 0)?) }?;

    let chunks = check_i32("row chunks", chunks)?;
    let (dw_p, db_p) = (ptr(out.grad_weight)?, ptr(out.grad_bias)?);
    let f = launch::kernel(&backend, &KERNELS, "layernorm_backward_dwb_reduce", dtype)?;
    let mut b = backend.stream().launch_builder(&f);
    b.arg(&pw_p).arg(&pb_p).arg(&chunks).arg(&h).arg(&dw_p).arg(&db_p);
    // SAFETY: layernorm_backward_dwb_reduce_<T>(const float* ×2, int, int, T* ×2): grid-stride over H columns;
    // each partial holds chunks·H floats, `grad_weight` and `grad_bias` H elements of T.
    unsafe { b.launch(elementwise(p.h)?) }?;
    Ok(())
}
