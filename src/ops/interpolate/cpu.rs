//! CPU bilinear resizing: f32 rows through rayon, one task per row of the written tensor (an output row in the
//! forward; an input row in the backward, which gathers the outputs reading each of its pixels in order, as the
//! CUDA kernel does).

use rayon::prelude::*;

use super::axis::{Axis, Tap};
use super::Plan;
use crate::ops::convert::{f32_values, write_f32};
use crate::runtime::Tensor;
use crate::Result;

/// The axes along H and W, and the taps of every output column.
fn axes(p: &Plan) -> (Axis, Axis, Vec<Tap>) {
    let cols = Axis::new(p.input[1], p.output[1]);
    (Axis::new(p.input[0], p.output[0]), cols, (0..p.output[1]).map(|o| cols.tap(o)).collect())
}

pub(super) fn forward(x: &Tensor, p: &Plan, out: &mut Tensor) -> Result<()> {
    let xs = f32_values(x)?;
    let (rows, _, col_taps) = axes(p);
    let (c, in_row, image) = (p.c, p.input[1] * p.c, p.input[0] * p.input[1] * p.c);
    write_f32(out, |y| {
        y.par_chunks_mut(p.output[1] * c).enumerate().for_each(|(r, y_row)| {
            let (n, th) = (r / p.output[0], rows.tap(r % p.output[0]));
            let row = |i: usize| &xs[n * image + i * in_row..][..in_row];
            let (top, bottom) = (row(th.i0), row(th.i1));
            for (y_px, tw) in y_row.chunks_mut(c).zip(&col_taps) {
                let (j0, j1) = (tw.i0 * c, tw.i1 * c);
                for (k, y) in y_px.iter_mut().enumerate() {
                    // PyTorch's order: the two columns of each row first.
                    *y = th.mix(tw.mix(top[j0 + k], top[j1 + k]), tw.mix(bottom[j0 + k], bottom[j1 + k]));
                }
            }
        });
        Ok(())
    })
}

pub(super) fn backward(grad_y: &Tensor, p: &Plan, grad_x: &mut Tensor) -> Result<()> {
    let g = f32_values(grad_y)?;
    let (rows, cols, col_taps) = axes(p);
    let col_reach: Vec<_> = (0..p.input[1]).map(|j| cols.outputs_reaching(j)).collect();
    let (c, out_row, out_image) = (p.c, p.output[1] * p.c, p.output[0] * p.output[1] * p.c);
    write_f32(grad_x, |dx| {
        dx.par_chunks_mut(p.input[1] * c).enumerate().for_each(|(r, dx_row)| {
            let (n, i) = (r / p.input[0], r % p.input[0]);
            let row_weights: Vec<_> = rows.outputs_reaching(i).map(|o| (o, Axis::weight(rows.tap(o), i))).collect();
            // Per input pixel, every output reading it, its C-vector staying in cache.
            for (j, (dx_px, reach)) in dx_row.chunks_mut(c).zip(&col_reach).enumerate() {
                dx_px.fill(0.0);
                for &(o, wh) in &row_weights {
                    let g_row = &g[n * out_image + o * out_row..][..out_row];
                    for q in reach.clone() {
                        let w = wh * Axis::weight(col_taps[q], j);
                        dx_px.iter_mut().zip(&g_row[q * c..][..c]).for_each(|(d, g)| *d += w * g);
                    }
                }
            }
        });
        Ok(())
    })
}
