//! CPU linear layers: f32 `gemm` products (multi-threaded; a bf16/f16 weight widened panel by panel inside the
//! product), bias sums over rows in row order.

use rayon::prelude::*;

use super::{Outputs, Plan};
use crate::ops::convert::{f32_values, write_f32};
use crate::runtime::cpu::{matmul, matmul_tensor, MatRef};
use crate::runtime::Tensor;
use crate::Result;

pub(super) fn forward(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, p: &Plan, out: &mut Tensor) -> Result<()> {
    let (xs, b) = (f32_values(x)?, bias.map(f32_values).transpose()?);
    write_f32(out, |y| {
        matmul_tensor(y, MatRef::row_major(&xs, p.rows, p.k), weight, (p.m, p.k), true, 0.0)?;
        if let Some(b) = &b {
            y.par_chunks_mut(p.m).for_each(|row| row.iter_mut().zip(b.iter()).for_each(|(y, b)| *y += b));
        }
        Ok(())
    })
}

pub(super) fn backward(grad_y: &Tensor, x: &Tensor, weight: &Tensor, p: &Plan, out: Outputs<'_>) -> Result<()> {
    let (g, xs) = (f32_values(grad_y)?, f32_values(x)?);
    let g_mat = MatRef::row_major(&g, p.rows, p.m);
    write_f32(out.grad_x, |dx| matmul_tensor(dx, g_mat, weight, (p.m, p.k), false, 0.0))?;
    write_f32(out.grad_weight, |dw| {
        matmul(dw, g_mat.t(), MatRef::row_major(&xs, p.rows, p.k), 0.0);
        Ok(())
    })?;
    if let Some(grad_bias) = out.grad_bias {
        write_f32(grad_bias, |db| {
            // Columns in parallel blocks, each summed over rows in order.
            db.par_chunks_mut(1024).enumerate().for_each(|(block, db)| {
                db.fill(0.0);
                let columns = block * 1024..block * 1024 + db.len();
                for row in g.chunks_exact(p.m) {
                    db.iter_mut().zip(&row[columns.clone()]).for_each(|(a, g)| *a += g);
                }
            });
            Ok(())
        })?;
    }
    Ok(())
}
