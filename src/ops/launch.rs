//! Launch helpers shared by the transformer op families' CUDA paths (embedding, rmsnorm, rope, attention, linear,
//! swiglu): device pointers, grid-stride launch sizes, 32-bit size checks and kernel lookup by dtype.

use std::sync::Arc;

use crate::runtime::cuda::{launch_config, CudaBackend, KernelModule, LaunchConfig};
use crate::runtime::{DType, Tensor};
use crate::{Error, Result};

/// Threads per block of the element-wise and per-row kernels (a multiple of 32).
pub(crate) const THREADS: u32 = 256;

/// Blocks for grid-stride element loops: enough to fill any current GPU.
const MAX_ELEMENT_BLOCKS: usize = 4096;

/// The device pointer of a CUDA tensor.
pub(crate) fn ptr(t: &Tensor) -> Result<u64> {
    Ok(t.cuda_ptr()?.0)
}

/// The backend that owns a CUDA tensor.
pub(crate) fn backend_of(t: &Tensor) -> Result<Arc<CudaBackend>> {
    Ok(t.cuda_ptr()?.1.clone())
}

/// A grid-stride launch of [`THREADS`]-thread blocks over `len` elements.
pub(crate) fn elementwise(len: usize) -> Result<LaunchConfig> {
    launch_config(len.div_ceil(THREADS as usize).clamp(1, MAX_ELEMENT_BLOCKS), THREADS, 0)
}

/// A size the kernels index with a 32-bit integer.
pub(crate) fn check_i32(what: &str, value: usize) -> Result<i32> {
    i32::try_from(value).map_err(|_| Error::Shape(format!("{what} = {value} exceeds the CUDA kernels' 32-bit sizes")))
}

/// The instantiation of kernel `base` for `dtype` (`<base>_f32`, `_bf16`, `_f16`).
pub(crate) fn kernel(
    backend: &CudaBackend,
    module: &KernelModule,
    base: &str,
    dtype: DType,
) -> Result<cudarc::driver::CudaFunction> {
    backend.function(module, &format!("{base}_{}", dtype.name()))
}

/// Integer ids (i32 or i64, any device) as i64 on the host.
pub(crate) fn host_ids(ids: &Tensor) -> Result<Vec<i64>> {
    match ids.dtype() {
        DType::I32 => Ok(ids.to_vec::<i32>()?.into_iter().map(i64::from).collect()),
        _ => ids.to_vec::<i64>(),
    }
}

/// Every tensor of `others` has the dtype of `anchor` (the CUDA kernels take one storage type for all their float
/// arguments).
pub(crate) fn same_dtype(anchor: (&str, &Tensor), others: &[(&'static str, &Tensor)]) -> Result<()> {
    let (anchor_name, anchor) = anchor;
    for &(name, t) in others {
        if t.dtype() != anchor.dtype() {
            return Err(Error::DType {
                arg: name,
                got: t.dtype(),
                expected: format!("the dtype of `{anchor_name}` ({}) on CUDA", anchor.dtype()),
            });
        }
    }
    Ok(())
}
