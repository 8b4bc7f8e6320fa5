//! CPU linear layers: f32 `gemm` products (multi-threaded), bias sums over rows in row order.

use rayon::prelude::*;

use super::{out_shape, LinearGrads, Plan};
use crate::ops::convert::{f32_values, float_tensor};
use crate::runtime::cpu::{matmul, MatRef};
use crate::runtime::Tensor;
use crate::Result;

pub(super) fn forward(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, p: &Plan) -> Result<Tensor> {
    let (xs, w) = (f32_values(x)?, f32_values(weight)?);
    let mut y = vec![0.0f32; p.rows * p.m];
    matmul(&mut y, MatRef::row_major(&xs, p.rows, p.k), MatRef::row_major(&w, p.m, p.k).t(), 0.0);
    if let Some(b) = bias {
        let b = f32_values(b)?;
        y.par_chunks_mut(p.m).for_each(|row| row.iter_mut().zip(b.iter()).for_each(|(y, b)| *y += b));
    }
    float_tensor(&y, &out_shape(x, p.m), x.dtype())
}

pub(super) fn backward(
    grad_y: &Tensor,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    p: &Plan,
) -> Result<LinearGrads> {
    let (g, xs, w) = (f32_values(grad_y)?, f32_values(x)?, f32_values(weight)?);
    let g_mat = MatRef::row_major(&g, p.rows, p.m);
    let mut dx = vec![0.0f32; p.rows * p.k];
    matmul(&mut dx, g_mat, MatRef::row_major(&w, p.m, p.k), 0.0);
    let mut dw = vec![0.0f32; p.m * p.k];
    matmul(&mut dw, g_mat.t(), MatRef::row_major(&xs, p.rows, p.k), 0.0);
    let grad_bias = bias
        .map(|b| {
            // Columns in parallel blocks, each summed over rows in order.
            let mut db = vec![0.0f32; p.m];
            db.par_chunks_mut(1024).enumerate().for_each(|(block, db)| {
                let columns = block * 1024..block * 1024 + db.len();
                for row in g.chunks_exact(p.m) {
                    db.iter_mut().zip(&row[columns.clone()]).for_each(|(a, g)| *a += g);
                }
            });
            float_tensor(&db, &[p.m], b.dtype())
        })
        .transpose()?;
    Ok(LinearGrads {
        grad_x: float_tensor(&dx, x.shape(), x.dtype())?,
        grad_weight: float_tensor(&dw, &[p.m, p.k], weight.dtype())?,
        grad_bias,
    })
}
