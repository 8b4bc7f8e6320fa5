//! CPU backend helpers shared by the op families: parallel chunking and matrix products — f32 through the `gemm`
//! crate, bf16 × bf16 through an AVX512-BF16 kernel where the CPU has one, other bf16/f16 operands widened panel
//! by panel inside the product instead of as whole tensors — at the instruction-set level [`isa`] chooses.

#[cfg(target_arch = "x86_64")]
mod bf16_kernel;
mod gemm_levels;
pub mod isa;
mod products;

pub use isa::{with_isa, Isa};
pub use products::{matmul, matmul_bf16, matmul_mixed, matmul_tensor, matmul_tensors, TensorMat};

/// Rows handed to one rayon task: big enough to amortise scheduling, small enough to balance two cores or many.
pub fn rows_per_task(rows: usize, row_len: usize) -> usize {
    const TARGET_ELEMENTS_PER_TASK: usize = 1 << 16;
    (TARGET_ELEMENTS_PER_TASK / row_len.max(1)).clamp(1, rows.max(1))
}

/// A read-only matrix: `rows × cols`, element (i, j) at `data[i * row_stride + j * col_stride]`; f32 unless said.
#[derive(Clone, Copy)]
pub struct MatRef<'a, T = f32> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a, T> MatRef<'a, T> {
    /// A row-major matrix.
    pub fn row_major(data: &'a [T], rows: usize, cols: usize) -> Self {
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
