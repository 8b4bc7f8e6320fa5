//! The CPU matrix products: f32 (`gemm`), bf16 × bf16 (the AVX512-BF16 kernel, else widened), and an f32 `a`
//! against a bf16/f16 `b` widened panel by panel.

use rayon::prelude::*;

use half::{bf16, f16};

use gemm_common::Parallelism;

use super::gemm_levels::{gemm_at, Strided};
use super::isa;
use super::{rows_per_task, MatRef};
use crate::runtime::{DType, FloatElement, Tensor};
use crate::{Error, Result};

/// `dst = beta · dst + a · b` for a row-major `dst` of `a.rows × b.cols` (`beta = 0` ignores what `dst` held).
/// Multi-threaded over rayon's pool.
///
/// # Panics
/// If the shapes disagree or a view reaches past its slice: callers validate user shapes before this.
pub fn matmul(dst: &mut [f32], a: MatRef<'_>, b: MatRef<'_>, beta: f32) {
    let n = b.cols;
    matmul_into(dst, n, a, b, beta);
}

/// Elements of one widened panel of a bf16/f16 operand: 4 MiB of f32, small beside the whole weights it stands for.
const PANEL_ELEMENTS: usize = 1 << 20;

/// [`matmul`] with `b` in any float dtype: a bf16/f16 `b` (a weight in its storage dtype) is widened to f32 one
/// panel at a time — along `b`'s contiguous dimension, so each panel is read in order — never as a whole tensor.
/// The products are f32 products of exactly the widened values, as if `b` had been widened first.
///
/// # Panics
/// As [`matmul`]; also if `b` is neither row-major nor a transposed row-major view.
pub fn matmul_mixed<T: FloatElement>(dst: &mut [f32], a: MatRef<'_>, b: MatRef<'_, T>, beta: f32) {
    let (k, n) = (b.rows, b.cols);
    if T::DTYPE == DType::F32 {
        let data: &[f32] = bytemuck::cast_slice(b.data);
        let (row_stride, col_stride) = (b.row_stride, b.col_stride);
        return matmul(dst, a, MatRef { data, rows: k, cols: n, row_stride, col_stride }, beta);
    }
    assert_eq!(a.cols, k, "matmul: inner dimensions differ");
    assert!(b.fits(), "matmul: a view reaches past its slice");
    if b.col_stride == 1 {
        // Row-major b: panels of whole rows (a slice of the inner dimension), accumulated into dst.
        let rows = (PANEL_ELEMENTS / n.max(1)).clamp(1, k.max(1));
        let mut panel = vec![0.0f32; rows * n];
        if k == 0 {
            // No panel to accumulate: `dst = beta · dst`, as the f32 product gives.
            return matmul(dst, a, MatRef::row_major(&[], 0, n), beta);
        }
        for first in (0..k).step_by(rows) {
            let r = rows.min(k - first);
            widen_rows(&mut panel[..r * n], b.data, first, r, n, b.row_stride);
            let a_part = MatRef { data: &a.data[first * a.col_stride..], cols: r, ..a };
            let beta = if first == 0 { beta } else { 1.0 };
            matmul(dst, a_part, MatRef::row_major(&panel[..r * n], r, n), beta);
        }
    } else {
        // A transposed row-major view (b = Wᵀ, W n × k): panels of W's rows, i.e. of dst's columns.
        assert_eq!(b.row_stride, 1, "matmul: a bf16/f16 operand must be row-major or a transposed row-major view");
        let cols = (PANEL_ELEMENTS / k.max(1)).clamp(1, n.max(1));
        let mut panel = vec![0.0f32; cols * k];
        for first in (0..n).step_by(cols) {
            let c = cols.min(n - first);
            widen_rows(&mut panel[..c * k], b.data, first, c, k, b.col_stride);
            let panel_t = MatRef::row_major(&panel[..c * k], c, k).t();
            matmul_into(&mut dst[first..], n, a, panel_t, beta);
        }
    }
}

/// [`matmul_mixed`] with `b` a CPU float tensor (a weight, any float dtype) of `rows × cols` elements, row-major,
/// or its transpose when `transposed`.
pub fn matmul_tensor(
    dst: &mut [f32],
    a: MatRef<'_>,
    b: &Tensor,
    (rows, cols): (usize, usize),
    transposed: bool,
    beta: f32,
) -> Result<()> {
    fn go<T: FloatElement>(dst: &mut [f32], a: MatRef<'_>, b: MatRef<'_, T>, transposed: bool, beta: f32) {
        matmul_mixed(dst, a, if transposed { b.t() } else { b }, beta);
    }
    match b.dtype() {
        DType::F32 => go(dst, a, MatRef::row_major(b.as_slice::<f32>()?, rows, cols), transposed, beta),
        DType::BF16 => go(dst, a, MatRef::row_major(b.as_slice::<bf16>()?, rows, cols), transposed, beta),
        DType::F16 => go(dst, a, MatRef::row_major(b.as_slice::<f16>()?, rows, cols), transposed, beta),
        got => return Err(Error::DType { arg: "matrix operand", got, expected: "f32, bf16 or f16".into() }),
    }
    Ok(())
}

/// `dst = beta · dst + a · b` for a row-major `dst` of `a.rows × b.cols`, both operands bf16, accumulated in f32:
/// with `vdpbf16ps` where the active level ([`isa::active`]) is `Avx512Bf16` (subnormal inputs and partial sums
/// flush to zero there, as in every such product), else `a` widened to f32 and `b` widened panel by panel.
///
/// # Panics
/// As [`matmul`].
pub fn matmul_bf16(dst: &mut [f32], a: MatRef<'_, bf16>, b: MatRef<'_, bf16>, beta: f32) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "matmul: inner dimensions differ");
    assert!(a.fits() && b.fits() && dst.len() >= m * n, "matmul: a view reaches past its slice");
    #[cfg(target_arch = "x86_64")]
    if isa::active() >= isa::Isa::Avx512Bf16 {
        // SAFETY: `isa::active` only returns levels this CPU has (`with_isa` and `UNIREWARD_CPU_ISA` refuse the
        // others); the shapes and views were checked above.
        return unsafe { super::bf16_kernel::matmul(dst, a, b, beta) };
    }
    let mut wide = vec![0.0f32; m * k];
    wide.par_chunks_mut(k.max(1)).enumerate().for_each(|(i, row)| {
        row.iter_mut().enumerate().for_each(|(j, w)| *w = a.data[i * a.row_stride + j * a.col_stride].to_f32());
    });
    matmul_mixed(dst, MatRef::row_major(&wide, m, k), b, beta);
}

/// A CPU float tensor of `rows × cols` elements as a row-major matrix operand, or its transpose.
#[derive(Clone, Copy)]
pub struct TensorMat<'a> {
    pub tensor: &'a Tensor,
    pub rows: usize,
    pub cols: usize,
    pub transposed: bool,
}

impl TensorMat<'_> {
    fn view<'d, T: FloatElement>(&self, data: &'d [T]) -> MatRef<'d, T> {
        let view = MatRef::row_major(data, self.rows, self.cols);
        if self.transposed {
            view.t()
        } else {
            view
        }
    }
}

/// `dst = beta · dst + a · b` for two CPU float tensors in any float dtypes: bf16 × bf16 through [`matmul_bf16`]
/// (no widening where the CPU has AVX512-BF16); otherwise `a` as f32 (borrowed when f32) against `b` in its own
/// dtype through [`matmul_tensor`].
pub fn matmul_tensors(dst: &mut [f32], a: TensorMat<'_>, b: TensorMat<'_>, beta: f32) -> Result<()> {
    for (name, m) in [("left operand", a), ("right operand", b)] {
        if m.tensor.numel() != m.rows * m.cols {
            let (rows, cols, shape) = (m.rows, m.cols, m.tensor.shape());
            return Err(Error::Shape(format!("matmul {name}: {shape:?} is not {rows} × {cols} elements")));
        }
    }
    if a.tensor.dtype() == DType::BF16 && b.tensor.dtype() == DType::BF16 {
        matmul_bf16(dst, a.view(a.tensor.as_slice::<bf16>()?), b.view(b.tensor.as_slice::<bf16>()?), beta);
        return Ok(());
    }
    let wide = a.tensor.to_f32_cow()?;
    matmul_tensor(dst, a.view(&wide), b.tensor, (b.rows, b.cols), b.transposed, beta)
}

/// Widens `count` rows of `len` elements, the first at row `first`, `stride` apart in `src`, into `dst`.
fn widen_rows<T: FloatElement>(dst: &mut [f32], src: &[T], first: usize, count: usize, len: usize, stride: usize) {
    let per_task = rows_per_task(count, len);
    dst[..count * len].par_chunks_mut(per_task * len).enumerate().for_each(|(task, rows)| {
        for (i, row) in rows.chunks_exact_mut(len).enumerate() {
            let start = (first + task * per_task + i) * stride;
            row.iter_mut().zip(&src[start..start + len]).for_each(|(d, s)| *d = s.to_f32());
        }
    });
}

/// `dst = beta · dst + a · b` for `dst` of `a.rows × b.cols` with rows `dst_row_stride` apart (a block of columns of
/// a wider matrix when the stride exceeds `b.cols`).
fn matmul_into(dst: &mut [f32], dst_row_stride: usize, a: MatRef<'_>, b: MatRef<'_>, beta: f32) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "matmul: inner dimensions differ");
    let dst_fits = m == 0 || n == 0 || (m - 1) * dst_row_stride + n <= dst.len();
    assert!(dst_fits && n <= dst_row_stride && a.fits() && b.fits(), "matmul: a view reaches past its slice");
    if m == 0 || n == 0 {
        return;
    }
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
    let strided = |m: MatRef<'_>| Strided {
        ptr: m.data.as_ptr(),
        col_stride: m.col_stride as isize,
        row_stride: m.row_stride as isize,
    };
    let out = Strided { ptr: dst.as_mut_ptr(), col_stride: 1, row_stride: dst_row_stride as isize };
    // SAFETY: the asserts above keep every index of `dst` (m rows of n, `dst_row_stride` apart), `a` and `b` inside
    // their slices; `dst` is borrowed mutably, so it does not alias `a` or `b`; `isa::active` only returns levels
    // this CPU runs.
    unsafe { gemm_at(isa::active(), (m, n, k), out, beta != 0.0, strided(a), strided(b), beta, parallelism) }
}
