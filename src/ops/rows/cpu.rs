//! CPU row copies (rayon over the listed rows) and row sums (f32 accumulation in list order).

use half::{bf16, f16};
use rayon::prelude::*;

use crate::runtime::{DType, Element, FloatElement, Tensor};
use crate::Result;

/// A raw destination pointer shared by the rayon tasks, each writing rows no other task writes.
#[derive(Clone, Copy)]
struct RowsPtr<T>(*mut T);
// SAFETY: the tasks write disjoint rows (`copy_rows` checked the destination rows are distinct).
unsafe impl<T> Send for RowsPtr<T> {}
// SAFETY: as for Send.
unsafe impl<T> Sync for RowsPtr<T> {}

impl<T> RowsPtr<T> {
    /// Row `r` of `c` elements (a method, so closures capture the whole `Send` wrapper, not its raw pointer).
    ///
    /// # Safety
    /// Row `r` lies inside the buffer and no one else accesses it while the slice lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row(&self, r: usize, c: usize) -> &mut [T] {
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(r * c), c) }
    }
}

fn copy<T: Element>(src: &Tensor, src_rows: &[usize], dst: &mut Tensor, dst_rows: &[usize], c: usize) -> Result<()> {
    let src = src.as_slice::<T>()?;
    let out = RowsPtr(dst.as_mut_slice::<T>()?.as_mut_ptr());
    src_rows.par_iter().zip(dst_rows).for_each(|(&s, &d)| {
        // SAFETY: `d` < the destination's rows (checked), so the row lies inside its buffer; destination rows are
        // distinct, so no two tasks write one row, and `src` does not alias `dst` (`&mut` borrow).
        let row = unsafe { out.row(d, c) };
        row.copy_from_slice(&src[s * c..(s + 1) * c]);
    });
    Ok(())
}

pub(super) fn copy_rows(
    src: &Tensor,
    src_rows: &[usize],
    dst: &mut Tensor,
    dst_rows: &[usize],
    c: usize,
) -> Result<()> {
    match src.dtype() {
        DType::BF16 => copy::<bf16>(src, src_rows, dst, dst_rows, c),
        DType::F16 => copy::<f16>(src, src_rows, dst, dst_rows, c),
        _ => copy::<f32>(src, src_rows, dst, dst_rows, c),
    }
}

fn sum<T: FloatElement>(src: &Tensor, rows: &[usize], out: &mut Tensor, c: usize) -> Result<()> {
    let src = src.as_slice::<T>()?;
    let mut acc = vec![0.0f32; c];
    for &r in rows {
        acc.iter_mut().zip(&src[r * c..(r + 1) * c]).for_each(|(a, v)| *a += v.to_f32());
    }
    out.as_mut_slice::<T>()?.iter_mut().zip(&acc).for_each(|(o, &a)| *o = T::from_f32(a));
    Ok(())
}

pub(super) fn sum_rows(src: &Tensor, rows: &[usize], out: &mut Tensor, c: usize) -> Result<()> {
    match src.dtype() {
        DType::BF16 => sum::<bf16>(src, rows, out, c),
        DType::F16 => sum::<f16>(src, rows, out, c),
        _ => sum::<f32>(src, rows, out, c),
    }
}
