//! CPU linear layers: products accumulated in f32 (bf16 × bf16 through the AVX512-BF16 kernel where the CPU has
//! it, f32 through `gemm`, other bf16/f16 operands widened panel by panel inside the product), bias sums over rows
//! in row order.

use rayon::prelude::*;

use super::{Outputs, Plan};
use crate::ops::convert::{f32_values, write_f32};
use crate::runtime::cpu::{matmul_tensors, TensorMat};
use crate::runtime::Tensor;
use crate::Result;

/// `t` as a row-major `rows × cols` operand, or its transpose.
fn operand(tensor: &Tensor, (rows, cols): (usize, usize), transposed: bool) -> TensorMat<'_> {
    TensorMat { tensor, rows, cols, transposed }
}

pub(super) fn forward(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, p: &Plan, out: &mut Tensor) -> Result<()> {
    let b = bias.map(f32_values).transpose()?;
    write_f32(out, |y| {
        matmul_tensors(y, operand(x, (p.rows, p.k), false), operand(weight, (p.m, p.k), true), 0.0)?;
        if let Some(b) = &b {
            y.par_chunks_mut(p.m).for_each(|row| row.iter_mut().zip(b.iter()).for_each(|(y, b)| *y += b));
        }
        Ok(())
    })
}

pub(super) fn backward(grad_y: &Tensor, x: &Tensor, weight: &Tensor, p: &Plan, out: Outputs<'_>) -> Result<()> {
    let g = operand(grad_y, (p.rows, p.m), false);
    if let Some(grad_x) = out.grad_x {
        write_f32(grad_x, |dx| matmul_tensors(dx, g, operand(weight, (p.m, p.k), false), 0.0))?;
    }
    let g_t = TensorMat { transposed: true, ..g };
    write_f32(out.grad_weight, |dw| matmul_tensors(dw, g_t, operand(x, (p.rows, p.k), false), 0.0))?;
    if let Some(grad_bias) = out.grad_bias {
        let g = f32_values(grad_y)?;
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
