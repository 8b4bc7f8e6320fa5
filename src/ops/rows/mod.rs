//! Row copies and row sums: the data movement of LLaVA's feature packing (tile features arranged into the image
//! grid, `image_newline` repeated per row, packed features written at the placeholder tokens) and of its backward
//! (the same copies reversed, the newline's gradient as a sum of rows). A tensor of any rank ≥ 1 is read as rows of
//! its last dimension: `[N, T, C]` token embeddings are `N·T` rows of `C`.
//!
//! [`copy_rows`] writes `dst[dst_rows[k]] = src[src_rows[k]]`; destination rows must be distinct (so the result does
//! not depend on an order, and the CUDA kernel needs no atomics), source rows may repeat. [`sum_rows_into`] sums
//! listed rows in list order in f32. Indices are checked on the host before anything is written.

mod cpu;
mod cuda;

use crate::ops::{check, launch};
use crate::runtime::cuda::KernelModule;
use crate::runtime::{Device, Tensor};
use crate::{Error, Result};

pub const KERNELS: KernelModule = crate::kernel_module!("rows");

/// `t` (`name`) as `(rows, C)`: a float tensor of rank ≥ 1 with `C` ≥ 1.
fn row_shape(name: &'static str, t: &Tensor) -> Result<(usize, usize)> {
    check::float(name, t)?;
    check::contiguous(name, t)?;
    let c = *t.shape().last().ok_or_else(|| Error::Shape(format!("`{name}` must have rank at least 1")))?;
    if c == 0 {
        return Err(Error::Shape(format!("`{name}` has rows of 0 elements: shape {:?}", t.shape())));
    }
    Ok((t.numel() / c, c))
}

/// Every index of `indices` (`name`) is below `rows`.
fn in_range(name: &str, indices: &[usize], rows: usize) -> Result<()> {
    match indices.iter().enumerate().find(|(_, &r)| r >= rows) {
        Some((k, r)) => Err(Error::InvalidArgument(format!("`{name}`[{k}] = {r} is outside the {rows} rows"))),
        None => Ok(()),
    }
}

/// `dst[dst_rows[k], :] = src[src_rows[k], :]` for every `k`; the other rows of `dst` are left as they are. `src`
/// and `dst` have one dtype, device and row length; `dst_rows` are distinct. `dst` must not alias `src`.
pub fn copy_rows(src: &Tensor, src_rows: &[usize], dst: &mut Tensor, dst_rows: &[usize]) -> Result<()> {
    let (src_count, c) = row_shape("src", src)?;
    let (dst_count, dst_c) = row_shape("dst", dst)?;
    if dst_c != c {
        return Err(Error::Shape(format!("`src` has rows of {c} elements but `dst` rows of {dst_c}")));
    }
    launch::same_dtype(("src", src), &[("dst", dst)])?;
    let device = check::same_device(&[("src", src), ("dst", dst)])?;
    if src_rows.len() != dst_rows.len() {
        return Err(Error::InvalidArgument(format!(
            "`src_rows` lists {} rows but `dst_rows` {}",
            src_rows.len(),
            dst_rows.len()
        )));
    }
    in_range("src_rows", src_rows, src_count)?;
    in_range("dst_rows", dst_rows, dst_count)?;
    let mut written = vec![false; dst_count];
    for (k, &r) in dst_rows.iter().enumerate() {
        if std::mem::replace(&mut written[r], true) {
            return Err(Error::InvalidArgument(format!("`dst_rows`[{k}] = {r} repeats an earlier destination row")));
        }
    }
    if src_rows.is_empty() {
        return Ok(());
    }
    match device {
        Device::Cpu => cpu::copy_rows(src, src_rows, dst, dst_rows, c),
        Device::Cuda(_) => cuda::copy_rows(src, src_rows, dst, dst_rows, c),
    }
}

/// `out[:] = Σ_k src[rows[k], :]`, in list order, accumulated in f32 (zeros for an empty list); `out` is `[C]` in
/// `src`'s dtype and device and is overwritten whole.
pub fn sum_rows_into(src: &Tensor, rows: &[usize], out: &mut Tensor) -> Result<()> {
    let (count, c) = row_shape("src", src)?;
    let device = check::same_device(&[("src", src)])?;
    check::output("out", out, &[c], src.dtype(), device)?;
    in_range("rows", rows, count)?;
    launch::check_i32("rows listed", rows.len())?;
    match device {
        Device::Cpu => cpu::sum_rows(src, rows, out, c),
        Device::Cuda(_) => cuda::sum_rows(src, rows, out, c),
    }
}
