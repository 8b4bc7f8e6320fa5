//! Parallel conversions between f32 working buffers and CPU float tensors of any storage dtype, for the CPU paths
//! of the transformer ops (the runtime's conversions run on one thread; bf16 weights and activations are large).

use std::borrow::Cow;

use half::{bf16, f16};
use rayon::prelude::*;

use crate::runtime::{DType, FloatElement, Tensor};
use crate::Result;

/// Elements per rayon task.
const BLOCK: usize = 1 << 14;

fn widen<T: FloatElement>(src: &[T]) -> Vec<f32> {
    let mut out = vec![0.0f32; src.len()];
    out.par_chunks_mut(BLOCK).zip(src.par_chunks(BLOCK)).for_each(|(d, s)| {
        d.iter_mut().zip(s).for_each(|(d, s)| *d = s.to_f32());
    });
    out
}

fn narrow<T: FloatElement>(values: &[f32], dst: &mut [T]) {
    dst.par_chunks_mut(BLOCK).zip(values.par_chunks(BLOCK)).for_each(|(d, s)| {
        d.iter_mut().zip(s).for_each(|(d, &s)| *d = T::from_f32(s));
    });
}

/// The elements of a CPU float tensor as f32 (borrowed when it already is f32).
pub(crate) fn f32_values(t: &Tensor) -> Result<Cow<'_, [f32]>> {
    match t.dtype() {
        DType::BF16 => Ok(Cow::Owned(widen(t.as_slice::<bf16>()?))),
        DType::F16 => Ok(Cow::Owned(widen(t.as_slice::<f16>()?))),
        _ => t.to_f32_cow(),
    }
}

/// Fills the CPU float tensor `out` through an f32 buffer of its length: `fill` gets `out`'s own storage when it is
/// f32 (no copy), else a zeroed scratch buffer that is then rounded to nearest into `out` (bf16, f16). The buffer
/// may hold anything on entry (an `_into` op's output can hold garbage): `fill` must write every element.
pub(crate) fn write_f32(out: &mut Tensor, fill: impl FnOnce(&mut [f32]) -> Result<()>) -> Result<()> {
    let mut buf = match out.dtype() {
        DType::BF16 | DType::F16 => vec![0.0f32; out.numel()],
        _ => return fill(out.as_mut_slice::<f32>()?),
    };
    fill(&mut buf)?;
    match out.dtype() {
        DType::BF16 => narrow(&buf, out.as_mut_slice::<bf16>()?),
        _ => narrow(&buf, out.as_mut_slice::<f16>()?),
    }
    Ok(())
}
