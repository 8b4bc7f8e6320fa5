//! CPU LayerNorm: f32 rows through rayon; `d_w`, `d_b` as per-task partial sums added in task order.

use rayon::prelude::*;

use super::{LayerNormStats, Outputs, Plan};
use crate::ops::convert::{f32_values, write_f32};
use crate::runtime::cpu::rows_per_task;
use crate::runtime::Tensor;
use crate::Result;

/// (mean, 1 / sqrt(var + eps)) of a row, the variance taken about the mean.
fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let h = x.len() as f32;
    let mean = x.iter().sum::<f32>() / h;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / h;
    (mean, 1.0 / (var + eps).sqrt())
}

pub(super) fn forward(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f32,
    p: &Plan,
    y: &mut Tensor,
    stats: &mut LayerNormStats,
) -> Result<()> {
    let (xs, w, b) = (f32_values(x)?, f32_values(weight)?, f32_values(bias)?);
    let (mean, rstd) = (stats.mean.as_mut_slice::<f32>()?, stats.rstd.as_mut_slice::<f32>()?);
    write_f32(y, |y| {
        y.par_chunks_mut(p.h).zip(xs.par_chunks(p.h)).zip(mean.par_iter_mut().zip(rstd.par_iter_mut())).for_each(
            |((y, x), (m, r))| {
                (*m, *r) = row_stats(x, eps);
                for (((y, x), w), b) in y.iter_mut().zip(x).zip(w.iter()).zip(b.iter()) {
                    *y = (x - *m) * *r * w + b;
                }
            },
        );
        Ok(())
    })
}

/// With `x̂ = (x − mean)·r` and `ĝ = g∘w`: `d_x = r·(ĝ − mean(ĝ) − x̂·mean(ĝ∘x̂))` per row, `d_w = Σ_rows g∘x̂`,
/// `d_b = Σ_rows g`.
pub(super) fn backward(
    grad_y: &Tensor,
    x: &Tensor,
    weight: &Tensor,
    stats: &LayerNormStats,
    p: &Plan,
    out: Outputs<'_>,
) -> Result<()> {
    let (g, xs, w) = (f32_values(grad_y)?, f32_values(x)?, f32_values(weight)?);
    let (mean, rstd) = (stats.mean.as_slice::<f32>()?, stats.rstd.as_slice::<f32>()?);
    let h = p.h;
    let task = rows_per_task(p.rows, h);
    // Per task: [d_w | d_b] partial sums over its rows.
    let mut partials: Vec<Vec<f32>> = Vec::new();
    write_f32(out.grad_x, |dx| {
        partials = dx
            .par_chunks_mut(task * h)
            .enumerate()
            .map(|(i, dx)| {
                let mut dwb = vec![0.0f32; 2 * h];
                let (dw, db) = dwb.split_at_mut(h);
                for (k, dx) in dx.chunks_mut(h).enumerate() {
                    let row = i * task + k;
                    let (g, x) = (&g[row * h..(row + 1) * h], &xs[row * h..(row + 1) * h]);
                    let (m, r) = (mean[row], rstd[row]);
                    let (mut sum_g, mut sum_gx) = (0.0f32, 0.0f32);
                    for j in 0..h {
                        let gw = g[j] * w[j];
                        sum_g += gw;
                        sum_gx += gw * (x[j] - m) * r;
                    }
                    let (a, c) = (sum_g / h as f32, sum_gx / h as f32);
                    for j in 0..h {
                        let xhat = (x[j] - m) * r;
                        dx[j] = r * (g[j] * w[j] - a - xhat * c);
                        dw[j] += g[j] * xhat;
                        db[j] += g[j];
                    }
                }
                dwb
            })
            .collect();
        Ok(())
    })?;
    let sum_partials = |dst: &mut Tensor, half: usize| {
        write_f32(dst, |d| {
            d.fill(0.0);
            for part in &partials {
                d.iter_mut().zip(&part[half * h..(half + 1) * h]).for_each(|(a, b)| *a += b);
            }
            Ok(())
        })
    };
    sum_partials(out.grad_weight, 0)?;
    sum_partials(out.grad_bias, 1)
}
