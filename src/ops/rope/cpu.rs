//! CPU RoPE: rayon over (n, t) rows, every head of a row rotated by the row's angles.

use half::{bf16, f16};
use rayon::prelude::*;

use super::Rotation;
use crate::runtime::{DType, FloatElement, Tensor};
use crate::Result;

fn rotate_typed<T: FloatElement>(
    x: &mut Tensor,
    positions: &[usize],
    inv: &[f32],
    heads: usize,
    sign: f64,
) -> Result<()> {
    let half = inv.len();
    let d = 2 * half;
    x.as_mut_slice::<T>()?.par_chunks_mut(heads * d).zip(positions.par_iter()).for_each(|(row, &p)| {
        let (sin, cos): (Vec<f32>, Vec<f32>) = inv
            .iter()
            .map(|&f| {
                let (s, c) = ((p as f32 * f) as f64).sin_cos();
                ((sign * s) as f32, c as f32)
            })
            .unzip();
        for head in row.chunks_mut(d) {
            let (lo, hi) = head.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (lo[i].to_f32(), hi[i].to_f32());
                lo[i] = T::from_f32(a * cos[i] - b * sin[i]);
                hi[i] = T::from_f32(b * cos[i] + a * sin[i]);
            }
        }
    });
    Ok(())
}

pub(super) fn rotate(x: &mut Tensor, positions: &[usize], inv: &[f32], heads: usize, rotation: Rotation) -> Result<()> {
    let sign = if rotation == Rotation::Forward { 1.0 } else { -1.0 };
    match x.dtype() {
        DType::BF16 => rotate_typed::<bf16>(x, positions, inv, heads, sign),
        DType::F16 => rotate_typed::<f16>(x, positions, inv, heads, sign),
        _ => rotate_typed::<f32>(x, positions, inv, heads, sign),
    }
}
