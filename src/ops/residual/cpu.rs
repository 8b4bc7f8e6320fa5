//! CPU residual add: rayon over blocks, f32 arithmetic straight on the storage dtype.

use half::{bf16, f16};
use rayon::prelude::*;

use crate::runtime::{DType, FloatElement, Tensor};
use crate::Result;

/// Elements per rayon task.
const BLOCK: usize = 1 << 14;

fn add_typed<T: FloatElement>(dst: &mut Tensor, src: &Tensor) -> Result<()> {
    let src = src.as_slice::<T>()?;
    dst.as_mut_slice::<T>()?.par_chunks_mut(BLOCK).zip(src.par_chunks(BLOCK)).for_each(|(d, s)| {
        for (d, s) in d.iter_mut().zip(s) {
            *d = T::from_f32(d.to_f32() + s.to_f32());
        }
    });
    Ok(())
}

pub(super) fn add_in_place(dst: &mut Tensor, src: &Tensor) -> Result<()> {
    match dst.dtype() {
        DType::BF16 => add_typed::<bf16>(dst, src),
        DType::F16 => add_typed::<f16>(dst, src),
        _ => add_typed::<f32>(dst, src),
    }
}
