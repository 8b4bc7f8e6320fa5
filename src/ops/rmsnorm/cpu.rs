//! CPU RMSNorm: f32 rows through rayon; `d_w` as per-task partial sums added in task order.

use rayon::prelude::*;

use super::Outputs;
use crate::ops::convert::{f32_values, write_f32};
use crate::runtime::cpu::rows_per_task;
use crate::runtime::Tensor;
use crate::Result;

pub(super) fn forward(
    x: &Tensor,
    weight: &Tensor,
    eps: f32,
    h: usize,
    y: &mut Tensor,
    rstd: &mut Tensor,
) -> Result<()> {
    let (xs, w, rstd) = (f32_values(x)?, f32_values(weight)?, rstd.as_mut_slice::<f32>()?);
    write_f32(y, |y| {
        y.par_chunks_mut(h).zip(xs.par_chunks(h)).zip(rstd.par_iter_mut()).for_each(|((y, x), r)| {
            let mean_sq = x.iter().map(|v| v * v).sum::<f32>() / h as f32;
            *r = 1.0 / (mean_sq + eps).sqrt();
            y.iter_mut().zip(x).zip(w.iter()).for_each(|((y, x), w)| *y = x * *r * w);
        });
        Ok(())
    })
}

/// `d_x = r·(g∘w) − r³·x·Σ(g∘w∘x)/H` per row, `d_w = Σ_rows g∘x·r`.
pub(super) fn backward(
    grad_y: &Tensor,
    x: &Tensor,
    weight: &Tensor,
    rstd: &Tensor,
    rows: usize,
    h: usize,
    out: Outputs<'_>,
) -> Result<()> {
    let (g, xs, w, rstd) = (f32_values(grad_y)?, f32_values(x)?, f32_values(weight)?, rstd.as_slice::<f32>()?);
    let task = rows_per_task(rows, h);
    let mut partials: Vec<Vec<f32>> = Vec::new();
    write_f32(out.grad_x, |dx| {
        partials = dx
            .par_chunks_mut(task * h)
            .enumerate()
            .map(|(i, dx)| {
                let mut dw = vec![0.0f32; h];
                for (k, dx) in dx.chunks_mut(h).enumerate() {
                    let row = i * task + k;
                    let (g, x, r) = (&g[row * h..(row + 1) * h], &xs[row * h..(row + 1) * h], rstd[row]);
                    let dot: f32 = g.iter().zip(x).zip(w.iter()).map(|((g, x), w)| g * w * x).sum();
                    let c = r * r * r * dot / h as f32;
                    for j in 0..h {
                        dx[j] = r * g[j] * w[j] - c * x[j];
                        dw[j] += g[j] * x[j] * r;
                    }
                }
                dw
            })
            .collect();
        Ok(())
    })?;
    write_f32(out.grad_weight, |dw| {
        dw.fill(0.0);
        for p in &partials {
            dw.iter_mut().zip(p).for_each(|(a, b)| *a += b);
        }
        Ok(())
    })
}
