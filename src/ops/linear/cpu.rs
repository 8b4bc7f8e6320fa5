//! CPU linear layers: f32 `gemm` products (multi-threaded), bias sums over rows in row order.

use rayon::prelude::*;

use super::{out_shape, LinearGrads, Plan};
use crate::runtime::cpu::{matmul, MatRef};
use crate::runtime::{Device, Tensor};
use crate::Result;

pub(super) fn forward(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, p: &Plan) -> Result<Tensor> {
    let (xs, w) = (x.to_f32_cow()?, weight.to_f32_cow()?);
    let mut y = vec![0.0f32; p.rows * p.m];
    matmul(&mut y, MatRef::row_major(&xs, p.rows, p.k), MatRef::row_major(&w, p.m, p.k).t(), 0.0);
    if let Some(b) = bias {
        let b = b.to_f32_cow()?;
        y.par_chunks_mut(p.m).for_each(|row| row.iter_mut().zip(b.iter()).for_each(|(y, b)| *y += b));
    }
    Tensor::from_f32(&y, &out_shape(x, p.m), x.dtype(), Device::Cpu)
}

pub(super) fn backward(
    grad_y: &Tensor,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    p: &Plan,
) -> Result<LinearGrads> {
    let (g, xs, w) = (grad_y.to_f32_cow()?, x.to_f32_cow()?, weight.to_f32_cow()?);
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
            Tensor::from_f32(&db, &[p.m], b.dtype(), Device::Cpu)
        })
        .transpose()?;
    Ok(LinearGrads {
        grad_x: Tensor::from_f32(&dx, x.shape(), x.dtype(), Device::Cpu)?,
        grad_weight: Tensor::from_f32(&dw, &[p.m, p.k], weight.dtype(), Device::Cpu)?,
        grad_bias,
    })
}
