//! Host-side conversions shared by the CPU paths of the family: float tensors as f64, f64 results stored in a
//! chosen dtype, and integer side inputs (token counts, rank permutations) read and checked on the host.

use crate::runtime::{DType, Device, Tensor};
use crate::Result;

/// The elements of a float tensor, widened to f64.
pub(crate) fn floats(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_f32_cow()?.iter().map(|&v| v as f64).collect())
}

/// A CPU tensor of `shape` and `dtype` holding `values`, rounded through f32.
pub(crate) fn tensor_from(values: &[f64], shape: &[usize], dtype: DType) -> Result<Tensor> {
    let narrowed: Vec<f32> = values.iter().map(|&v| v as f32).collect();
    Tensor::from_f32(&narrowed, shape, dtype, Device::Cpu)
}

/// The elements of an integer tensor (i32 or i64, on any device), as i64 on the host.
pub(crate) fn integers(name: &'static str, t: &Tensor) -> Result<Vec<i64>> {
    crate::ops::check::integer(name, t)?;
    let host = t.to_device(Device::Cpu)?;
    match t.dtype() {
        DType::I32 => Ok(host.as_slice::<i32>()?.iter().map(|&v| v as i64).collect()),
        _ => Ok(host.as_slice::<i64>()?.to_vec()),
    }
}
