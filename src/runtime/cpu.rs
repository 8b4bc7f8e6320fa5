//! CPU backend helpers shared by the op families: parallel chunking and matrix products (the `gemm` crate).

/// Rows handed to one rayon task: big enough to amortise scheduling, small enough to balance two cores or many.
pub fn rows_per_task(rows: usize, row_len: usize) -> usize {
    const TARGET_ELEMENTS_PER_TASK: usize = 1 << 16;
    (TARGET_ELEMENTS_PER_TASK / row_len.max(1)).clamp(1, rows.max(1))
}

/// A read-only f32 matrix: `rows × cols`, element (i, j) at `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        MatRef { data, rows, cols, row_stride: cols, col_stride: 1 }
    }

    /// The transpose, as a view (no copy).
    pub fn t(self) -> Self {
        MatRef { rows: self.cols, cols: self.rows, row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }

    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride < self.data.len()
    }
}

/// `dst = beta · dst + a · b` for a row-major `dst` of `a.rows × b.cols` (`beta = 0` ignores what `dst` held).
/// Multi-threaded over rayon's pool.
///
/// # Panics
/// If the shapes disagree or a view reaches past its slice: callers validate user shapes before this.
pub fn matmul(dst: &mut [f32], a: MatRef<'_>, b: MatRef<'_>, beta: f32) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "matmul: inner dimensions differ");
    assert!(dst.len() >= m * n && a.fits() && b.fits(), "matmul: a view reaches past its slice");
    if m == 0 || n == 0 {
        return;
    }
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: the asserts above keep every index of `dst` (m × n, row-major), `a` and `b` inside their slices;
    // `dst` is borrowed mutably, so it does not alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            beta != 0.0,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            beta,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}
