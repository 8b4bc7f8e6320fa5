//! f32 products through `gemm`'s kernels at the level [`isa::active`](super::isa::active) names. `gemm::gemm`
//! always picks the best kernels the CPU has; to run a lower level on demand (`UNIREWARD_CPU_ISA`, tests) this calls
//! the same generic driver with the same microkernel tables `gemm` 0.19 dispatches to (its `gemm-common` and
//! `gemm-f32` crates), after the same orientation step `gemm::gemm` takes.

use gemm_common::gemm::gemm_basic_generic;
use gemm_common::Parallelism;

use super::isa::Isa;

/// An f32 matrix for `gemm`: base pointer, column stride, row stride (in elements).
#[derive(Clone, Copy)]
pub(super) struct Strided<P> {
    pub ptr: P,
    pub col_stride: isize,
    pub row_stride: isize,
}

/// `gemm_basic_generic` with one level's SIMD type and microkernel tables (`gemm-f32`'s `$module::f32`, `$lanes`
/// f32 per register).
macro_rules! basic {
    ($simd:expr, $module:ident, $lanes:expr, $m:expr, $n:expr, $k:expr, $dst:expr, $read:expr, $lhs:expr, $rhs:expr,
     $beta:expr, $par:expr) => {{
        use gemm_f32::microkernel::$module::f32::{H_M, H_N, H_UKR, MR_DIV_N, NR, UKR};
        let (dst, lhs, rhs) = ($dst, $lhs, $rhs);
        gemm_basic_generic::<_, f32, $lanes, { MR_DIV_N * $lanes }, NR, MR_DIV_N, H_M, H_N>(
            $simd,
            $m,
            $n,
            $k,
            dst.ptr,
            dst.col_stride,
            dst.row_stride,
            $read,
            lhs.ptr,
            lhs.col_stride,
            lhs.row_stride,
            rhs.ptr,
            rhs.col_stride,
            rhs.row_stride,
            $beta,
            1.0,
            false,
            false,
            false,
            |a, b, c| a * b + c,
            &UKR,
            &H_UKR,
            false,
            $par,
        )
    }};
}

/// `dst = beta · dst + lhs · rhs` (`dst` m × n, `lhs` m × k, `rhs` k × n; `beta` only read when `read_dst`) with
/// `gemm`'s kernels of level `isa`.
///
/// # Safety
/// As `gemm::gemm`: every element the strides reach lies inside its allocation, `dst` does not alias the inputs,
/// and the CPU runs level `isa`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_at(
    isa: Isa,
    (m, n, k): (usize, usize, usize),
    dst: Strided<*mut f32>,
    read_dst: bool,
    lhs: Strided<*const f32>,
    rhs: Strided<*const f32>,
    beta: f32,
    parallelism: Parallelism,
) {
    // `gemm::gemm`'s orientation: its kernels prefer a column-major destination, so a row-major one is computed as
    // the transposed product (dstᵀ = rhsᵀ · lhsᵀ).
    let (m, n, dst, lhs, rhs) = if dst.col_stride.abs() < dst.row_stride.abs() {
        let t = |s: Strided<_>| Strided { ptr: s.ptr, col_stride: s.row_stride, row_stride: s.col_stride };
        (n, m, Strided { ptr: dst.ptr, col_stride: dst.row_stride, row_stride: dst.col_stride }, t(rhs), t(lhs))
    } else {
        (m, n, dst, lhs, rhs)
    };
    #[cfg(target_arch = "x86_64")]
    {
        use gemm_common::simd::{MixedSimd, V3, V4};
        if isa >= Isa::Avx512 {
            if let Some(simd) = <V4 as MixedSimd<f32, f32, f32, f32>>::try_new() {
                // SAFETY: the caller's contract, and V4's target features are present (`try_new` checked them).
                return unsafe { basic!(simd, avx512f, 16, m, n, k, dst, read_dst, lhs, rhs, beta, parallelism) };
            }
        }
        if isa >= Isa::Avx2 {
            if let Some(simd) = <V3 as MixedSimd<f32, f32, f32, f32>>::try_new() {
                // SAFETY: as above, with V3 (AVX2 + FMA).
                return unsafe { basic!(simd, fma, 8, m, n, k, dst, read_dst, lhs, rhs, beta, parallelism) };
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = isa; // one level off x86-64: what gemm itself picks there
    #[cfg(target_arch = "aarch64")]
    if std::arch::is_aarch64_feature_detected!("neon") {
        // SAFETY: the caller's contract, and NEON is present; gemm pairs its NEON kernels with the `Scalar` driver.
        return unsafe {
            basic!(gemm_common::simd::Scalar, neon, 4, m, n, k, dst, read_dst, lhs, rhs, beta, parallelism)
        };
    }
    // SAFETY: the caller's contract; the scalar kernels need no CPU feature.
    unsafe { basic!(gemm_common::simd::Scalar, scalar, 1, m, n, k, dst, read_dst, lhs, rhs, beta, parallelism) }
}
