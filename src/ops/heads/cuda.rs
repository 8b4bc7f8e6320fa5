//! Launch helpers shared by the family's CUDA paths.

use crate::runtime::Tensor;
use crate::Result;

/// The device pointer of a CUDA tensor.
pub(super) fn ptr(t: &Tensor) -> Result<u64> {
    Ok(t.cuda_ptr()?.0)
}
