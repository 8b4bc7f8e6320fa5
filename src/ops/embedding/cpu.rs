//! CPU embedding: row copies (forward) and per-row sums over each id's tokens (backward), rayon over rows.

use half::{bf16, f16};
use rayon::prelude::*;

use super::{TableWrite, TokenLists};
use crate::runtime::{DType, Element, FloatElement, Tensor};
use crate::Result;

fn gather<T: Element>(table: &Tensor, ids: &[usize], out: &mut Tensor) -> Result<()> {
    let h = table.shape()[1];
    let table = table.as_slice::<T>()?;
    out.as_mut_slice::<T>()?
        .par_chunks_mut(h)
        .zip(ids.par_iter())
        .for_each(|(row, &id)| row.copy_from_slice(&table[id * h..(id + 1) * h]));
    Ok(())
}

pub(super) fn forward(table: &Tensor, ids: &[usize], out: &mut Tensor) -> Result<()> {
    match table.dtype() {
        DType::BF16 => gather::<bf16>(table, ids, out),
        DType::F16 => gather::<f16>(table, ids, out),
        _ => gather::<f32>(table, ids, out),
    }
}

/// Every row of the table's gradient: the f32 sum of its tokens' gradient rows (added to the row's value when
/// accumulating), or zeros for ids that do not occur (only when overwriting).
fn scatter_add<T: FloatElement>(
    grad_out: &Tensor,
    lists: &TokenLists,
    h: usize,
    grad_table: &mut Tensor,
    write: TableWrite,
) -> Result<()> {
    let grad = grad_out.as_slice::<T>()?;
    grad_table.as_mut_slice::<T>()?.par_chunks_mut(h).enumerate().for_each(|(v, row)| {
        let tokens = &lists.tokens[lists.starts[v]..lists.starts[v + 1]];
        if tokens.is_empty() {
            if write == TableWrite::Overwrite {
                row.fill(T::from_f32(0.0));
            }
            return;
        }
        let mut acc: Vec<f32> = match write {
            TableWrite::Accumulate => row.iter().map(|x| x.to_f32()).collect(),
            TableWrite::Zeroed | TableWrite::Overwrite => vec![0.0; h],
        };
        for &p in tokens {
            acc.iter_mut().zip(&grad[p * h..(p + 1) * h]).for_each(|(a, g)| *a += g.to_f32());
        }
        row.iter_mut().zip(&acc).for_each(|(d, &a)| *d = T::from_f32(a));
    });
    Ok(())
}

pub(super) fn backward(
    grad_out: &Tensor,
    lists: &TokenLists,
    h: usize,
    grad_table: &mut Tensor,
    write: TableWrite,
) -> Result<()> {
    match grad_out.dtype() {
        DType::BF16 => scatter_add::<bf16>(grad_out, lists, h, grad_table, write),
        DType::F16 => scatter_add::<f16>(grad_out, lists, h, grad_table, write),
        _ => scatter_add::<f32>(grad_out, lists, h, grad_table, write),
    }
}
