//! CPU embedding: row copies (forward) and per-row sums over each id's tokens (backward), rayon over rows.

use half::{bf16, f16};
use rayon::prelude::*;

use super::TokenLists;
use crate::runtime::{DType, Device, Element, FloatElement, Tensor};
use crate::Result;

fn gather<T: Element>(table: &Tensor, ids: &[usize], shape: &[usize]) -> Result<Tensor> {
    let h = table.shape()[1];
    let table = table.as_slice::<T>()?;
    let mut out = Tensor::zeros(shape, T::DTYPE, Device::Cpu)?;
    out.as_mut_slice::<T>()?
        .par_chunks_mut(h)
        .zip(ids.par_iter())
        .for_each(|(row, &id)| row.copy_from_slice(&table[id * h..(id + 1) * h]));
    Ok(out)
}

pub(super) fn forward(table: &Tensor, ids: &[usize], shape: &[usize]) -> Result<Tensor> {
    match table.dtype() {
        DType::BF16 => gather::<bf16>(table, ids, shape),
        DType::F16 => gather::<f16>(table, ids, shape),
        _ => gather::<f32>(table, ids, shape),
    }
}

fn scatter_add<T: FloatElement>(grad_out: &Tensor, lists: &TokenLists, vocab: usize, h: usize) -> Result<Tensor> {
    let grad = grad_out.as_slice::<T>()?;
    let mut out = Tensor::zeros(&[vocab, h], T::DTYPE, Device::Cpu)?;
    let dst = out.as_mut_slice::<T>()?;
    // Each occurring id owns one destination row: hand them out as disjoint chunks, in vocabulary order.
    let mut rows: Vec<(usize, &mut [T])> = Vec::with_capacity(lists.rows.len());
    let mut rest = dst;
    let mut offset = 0;
    for (r, &v) in lists.rows.iter().enumerate() {
        let (_, tail) = rest.split_at_mut((v - offset) * h);
        let (row, tail) = tail.split_at_mut(h);
        rows.push((r, row));
        rest = tail;
        offset = v + 1;
    }
    rows.into_par_iter().for_each(|(r, row)| {
        let mut acc = vec![0.0f32; h];
        for &p in &lists.tokens[lists.starts[r]..lists.starts[r + 1]] {
            acc.iter_mut().zip(&grad[p * h..(p + 1) * h]).for_each(|(a, g)| *a += g.to_f32());
        }
        row.iter_mut().zip(&acc).for_each(|(d, &a)| *d = T::from_f32(a));
    });
    Ok(out)
}

pub(super) fn backward(grad_out: &Tensor, lists: &TokenLists, vocab: usize, h: usize) -> Result<Tensor> {
    match grad_out.dtype() {
        DType::BF16 => scatter_add::<bf16>(grad_out, lists, vocab, h),
        DType::F16 => scatter_add::<f16>(grad_out, lists, vocab, h),
        _ => scatter_add::<f32>(grad_out, lists, vocab, h),
    }
}
