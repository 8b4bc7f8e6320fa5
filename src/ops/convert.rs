//! Parallel conversions between f32 working buffers and CPU float tensors of any storage dtype, for the CPU paths
//! of the transformer ops (the runtime's conversions run on one thread; bf16 weights and activations are large).

use std::borrow::Cow;

use half::{bf16, f16};
use rayon::prelude::*;

use crate::runtime::{DType, Device, FloatElement, Tensor};
use crate::{Error, Result};

/// Elements per rayon task.
const BLOCK: usize = 1 << 14;

fn widen<T: FloatElement>(src: &[T]) -> Vec<f32> {
    let mut out = vec![0.0f32; src.len()];
    out.par_chunks_mut(BLOCK).zip(src.par_chunks(BLOCK)).for_each(|(d, s)| {
        d.iter_mut().zip(s).for_each(|(d, s)| *d = s.to_f32());
    });
    out
}

fn narrow<T: FloatElement>(values: &[f32], shape: &[usize]) -> Result<Tensor> {
    let mut t = Tensor::zeros(shape, T::DTYPE, Device::Cpu)?;
    let dst = t.as_mut_slice::<T>()?;
    if dst.len() != values.len() {
        return Err(Error::Shape(format!("{} values cannot fill shape {shape:?}", values.len())));
    }
    dst.par_chunks_mut(BLOCK).zip(values.par_chunks(BLOCK)).for_each(|(d, s)| {
        d.iter_mut().zip(s).for_each(|(d, &s)| *d = T::from_f32(s));
    });
    Ok(t)
}

/// The elements of a CPU float tensor as f32 (borrowed when it already is f32).
pub(crate) fn f32_values(t: &Tensor) -> Result<Cow<'_, [f32]>> {
    match t.dtype() {
        DType::BF16 => Ok(Cow::Owned(widen(t.as_slice::<bf16>()?))),
        DType::F16 => Ok(Cow::Owned(widen(t.as_slice::<f16>()?))),
        _ => t.to_f32_cow(),
    }
}

/// A CPU tensor of `dtype` and `shape` from f32 values, rounding to nearest for bf16 and f16.
pub(crate) fn float_tensor(values: &[f32], shape: &[usize], dtype: DType) -> Result<Tensor> {
    match dtype {
        DType::BF16 => narrow::<bf16>(values, shape),
        DType::F16 => narrow::<f16>(values, shape),
        _ => Tensor::from_f32(values, shape, dtype, Device::Cpu),
    }
}
