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
    // A batch's rows repeat their positions (each sequence counts from 0): when the positions fit in fewer entries
    // than there are rows, each position's angles are computed once into a table, else row by row.
    let table = positions.iter().max().filter(|&&max| max < positions.len()).map(|&max| {
        let mut table = vec![(0.0, 0.0); (max + 1) * half];
        table.par_chunks_mut(half).enumerate().for_each(|(p, trig)| angles(p, inv, sign, trig));
        table
    });
    let rows = x.as_mut_slice::<T>()?.par_chunks_mut(heads * d).zip(positions.par_iter());
    rows.for_each_init(
        || vec![(0.0, 0.0); if table.is_some() { 0 } else { half }],
        |scratch, (row, &p)| {
            let trig = match &table {
                Some(table) => &table[p * half..(p + 1) * half],
                None => {
                    angles(p, inv, sign, scratch);
                    &scratch[..]
                }
            };
            for head in row.chunks_mut(d) {
                let (lo, hi) = head.split_at_mut(half);
                for ((lo, hi), &(sin, cos)) in lo.iter_mut().zip(hi).zip(trig) {
                    let (a, b) = (lo.to_f32(), hi.to_f32());
                    *lo = T::from_f32(a * cos - b * sin);
                    *hi = T::from_f32(b * cos + a * sin);
                }
            }
        },
    );
    Ok(())
}

/// The rotation's `(sign · sin, cos)` of each frequency's angle at position `p`, in f64 and rounded once.
fn angles(p: usize, inv: &[f32], sign: f64, out: &mut [(f32, f32)]) {
    for (trig, &f) in out.iter_mut().zip(inv) {
        let (s, c) = ((p as f32 * f) as f64).sin_cos();
        *trig = ((sign * s) as f32, c as f32);
    }
}

pub(super) fn rotate(x: &mut Tensor, positions: &[usize], inv: &[f32], heads: usize, rotation: Rotation) -> Result<()> {
    let sign = if rotation == Rotation::Forward { 1.0 } else { -1.0 };
    match x.dtype() {
        DType::BF16 => rotate_typed::<bf16>(x, positions, inv, heads, sign),
        DType::F16 => rotate_typed::<f16>(x, positions, inv, heads, sign),
        _ => rotate_typed::<f32>(x, positions, inv, heads, sign),
    }
}
