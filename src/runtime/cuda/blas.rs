//! Row-major matrix products on the GPU through cuBLAS `GemmEx`: f32, bf16 or f16 inputs, f32 output and f32
//! accumulation.

use cudarc::cublas::{result, sys};

use super::CudaBackend;
use crate::runtime::DType;
use crate::{Error, Result};

/// A row-major matrix in device memory, possibly viewed transposed: stored as `[rows, cols]`, or, when
/// `transposed`, stored as `[cols, rows]` and read as its transpose.
#[derive(Clone, Copy, Debug)]
pub struct DeviceMat {
    pub ptr: u64,
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub transposed: bool,
}

impl DeviceMat {
    pub fn row_major(ptr: u64, dtype: DType, rows: usize, cols: usize) -> Self {
        DeviceMat { ptr, dtype, rows, cols, transposed: false }
    }

    /// The transpose, as a view.
    pub fn t(self) -> Self {
        DeviceMat { rows: self.cols, cols: self.rows, transposed: !self.transposed, ..self }
    }

    /// cuBLAS sees row-major storage as its column-major transpose: the operation and leading dimension that
    /// turn it into this matrix's transpose.
    fn as_column_major_transpose(&self) -> (sys::cublasOperation_t, i32) {
        if self.transposed {
            (sys::cublasOperation_t::CUBLAS_OP_T, self.rows as i32)
        } else {
            (sys::cublasOperation_t::CUBLAS_OP_N, self.cols as i32)
        }
    }
}

fn cuda_type(dtype: DType) -> Result<sys::cudaDataType> {
    Ok(match dtype {
        DType::F32 => sys::cudaDataType::CUDA_R_32F,
        DType::BF16 => sys::cudaDataType::CUDA_R_16BF,
        DType::F16 => sys::cudaDataType::CUDA_R_16F,
        other => return Err(Error::DType { arg: "matmul", got: other, expected: "f32, bf16 or f16".into() }),
    })
}

/// `dst = beta · dst + a · b`, `dst` an f32 row-major `[a.rows, b.cols]` buffer; `a` and `b` share a dtype.
pub fn matmul(backend: &CudaBackend, dst: u64, a: DeviceMat, b: DeviceMat, beta: f32) -> Result<()> {
    if a.cols != b.rows || a.dtype != b.dtype {
        return Err(Error::Shape(format!("matmul of {a:?} and {b:?}: inner sizes or dtypes differ")));
    }
    let (m, n, k) = (a.rows, b.cols, a.cols);
    if [m, n, k].iter().any(|&d| d > i32::MAX as usize) {
        return Err(Error::Shape(format!("matmul sizes {m}×{k}×{n} exceed cuBLAS's 32-bit dimensions")));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    let dtype = cuda_type(a.dtype)?;
    let (op_b, ld_b) = b.as_column_major_transpose();
    let (op_a, ld_a) = a.as_column_major_transpose();
    let alpha = 1.0f32;
    backend.with_blas(|blas| {
        // SAFETY: row-major C = A·B is computed as column-major Cᵀ = Bᵀ·Aᵀ; the operations and leading dimensions
        // describe exactly the stored extents of `a` and `b`, which the callers allocate, and `dst` holds m·n f32.
        // alpha and beta are f32 as CUBLAS_COMPUTE_32F requires, and live across the (asynchronous) call's enqueue.
        unsafe {
            result::gemm_ex(
                *blas.handle(),
                op_b,
                op_a,
                n as i32,
                m as i32,
                k as i32,
                (&alpha as *const f32).cast(),
                b.ptr as *const _,
                dtype,
                ld_b,
                a.ptr as *const _,
                dtype,
                ld_a,
                (&beta as *const f32).cast(),
                dst as *mut _,
                sys::cudaDataType::CUDA_R_32F,
                n as i32,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
            )
        }
        .map_err(|e| Error::Cuda(format!("cuBLAS GemmEx ({m}×{k}×{n}, {}): {e}", a.dtype)))
    })
}
