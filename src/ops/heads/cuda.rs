//! Launch helpers shared by the family's CUDA paths.

use crate::runtime::Tensor;
use crate::{Error, Result};

/// Threads per block of every kernel in `kernels/heads.cu` (a multiple of 32).
pub(super) const THREADS: u32 = 256;

/// Blocks for grid-stride element loops: enough to fill any current GPU.
const MAX_ELEMENT_BLOCKS: usize = 4096;

/// The device pointer of a CUDA tensor.
pub(super) fn ptr(t: &Tensor) -> Result<u64> {
    Ok(t.cuda_ptr()?.0)
}

/// Blocks of [`THREADS`] for a grid-stride loop over `len` elements.
pub(super) fn element_blocks(len: usize) -> usize {
    len.div_ceil(THREADS as usize).clamp(1, MAX_ELEMENT_BLOCKS)
}

/// A size the kernels index with a 32-bit integer.
pub(super) fn check_i32(what: &str, value: usize) -> Result<i32> {
    i32::try_from(value).map_err(|_| Error::Shape(format!("{what} = {value} exceeds the CUDA kernels' 32-bit sizes")))
}
