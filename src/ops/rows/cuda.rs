//! CUDA row copies and sums: `kernels/rows.cu`, with the host-checked row lists uploaded as i32.

use super::KERNELS;
use crate::ops::launch::{self, backend_of, check_i32, elementwise, ptr};
use crate::runtime::cuda::PushKernelArg;
use crate::runtime::Tensor;
use crate::Result;

/// Host row indices as a device i32 tensor (one padding entry keeps it non-empty).
fn upload(values: &[usize], like: &Tensor) -> Result<Tensor> {
    let mut v = values.iter().map(|&x| check_i32("row index", x)).collect::<Result<Vec<i32>>>()?;
    v.push(0);
    Tensor::from_slice(&v, &[v.len()], like.device())
}

pub(super) fn copy_rows(
    src: &Tensor,
    src_rows: &[usize],
    dst: &mut Tensor,
    dst_rows: &[usize],
    c: usize,
) -> Result<()> {
    let backend = backend_of(src)?;
    let (count, c_i32) = (src_rows.len() as i64, check_i32("row length", c)?);
    let (src_idx, dst_idx) = (upload(src_rows, src)?, upload(dst_rows, src)?);
    let f = launch::kernel(&backend, &KERNELS, "copy_rows", src.dtype())?;
    let (src_p, src_idx_p, dst_idx_p, dst_p) = (ptr(src)?, ptr(&src_idx)?, ptr(&dst_idx)?, ptr(dst)?);
    let mut b = backend.stream().launch_builder(&f);
    b.arg(&src_p).arg(&src_idx_p).arg(&dst_idx_p).arg(&count).arg(&c_i32).arg(&dst_p);
    // SAFETY: copy_rows_<T>(const T*, const int* ×2, long long, int, T*): both index lists hold `count` ints, each
    // below its tensor's row count (checked on the host), rows of `c` elements of T; destination rows distinct.
    unsafe { b.launch(elementwise(src_rows.len() * c)?) }?;
    Ok(())
}

pub(super) fn sum_rows(src: &Tensor, rows: &[usize], out: &mut Tensor, c: usize) -> Result<()> {
    let backend = backend_of(src)?;
    let (count, c_i32) = (check_i32("rows listed", rows.len())?, check_i32("row length", c)?);
    let idx = upload(rows, src)?;
    let f = launch::kernel(&backend, &KERNELS, "sum_rows", src.dtype())?;
    let (src_p, idx_p, out_p) = (ptr(src)?, ptr(&idx)?, ptr(out)?);
    let mut b = backend.stream().launch_builder(&f);
    b.arg(&src_p).arg(&idx_p).arg(&count).arg(&c_i32).arg(&out_p);
    // SAFETY: sum_rows_<T>(const T*, const int*, int, int, T*): `rows` holds `count` ints below the row count of
    // `src` (rows of `c` elements of T); `out` holds `c` elements of T.
    unsafe { b.launch(elementwise(c)?) }?;
    Ok(())
}
