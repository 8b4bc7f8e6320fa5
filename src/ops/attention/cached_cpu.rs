//! CPU KV-cache attention and cache writes. Attention runs one rayon item per (n, query, head) output row, reading
//! q and the caches straight from their storage dtype (no f32 copy of the whole cache at every decode step) and
//! summing in f32. Writes copy each sequence's block of slots, in parallel over sequences.

use half::{bf16, f16};
use rayon::prelude::*;

use super::cached::{CachedPlan, WritePlan};
use crate::ops::launch::host_ids;
use crate::runtime::{DType, Device, Element, FloatElement, Tensor};
use crate::Result;

pub(super) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_mask: &Tensor,
    starts: &[usize],
    p: &CachedPlan,
) -> Result<Tensor> {
    let real: Vec<bool> = host_ids(key_mask)?.into_iter().map(|m| m != 0).collect();
    match q.dtype() {
        DType::BF16 => attention_typed::<bf16>(q, k, v, &real, starts, p),
        DType::F16 => attention_typed::<f16>(q, k, v, &real, starts, p),
        _ => attention_typed::<f32>(q, k, v, &real, starts, p),
    }
}

/// Σ a·b with eight partial sums, so that the loop vectorises.
fn dot<T: FloatElement>(a: &[f32], b: &[T]) -> f32 {
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8.remainder().iter().zip(b8.remainder()).map(|(x, y)| x * y.to_f32()).sum();
    let mut sums = [0.0f32; 8];
    for (x, y) in a8.zip(b8) {
        for u in 0..8 {
            sums[u] += x[u] * y[u].to_f32();
        }
    }
    sums.iter().sum::<f32>() + tail
}

/// One rayon worker's buffers: the scaled query row, the scores of keys 0..=slot (−inf where hidden) and the
/// weighted sum of values.
#[derive(Default)]
struct Scratch {
    q: Vec<f32>,
    scores: Vec<f32>,
    acc: Vec<f32>,
}

fn attention_typed<T: FloatElement>(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    real: &[bool],
    starts: &[usize],
    p: &CachedPlan,
) -> Result<Tensor> {
    let (qs, ks, vs) = (q.as_slice::<T>()?, k.as_slice::<T>()?, v.as_slice::<T>()?);
    let mut out = Tensor::zeros(q.shape(), T::DTYPE, Device::Cpu)?;
    let (d, scale, group) = (p.d, p.scale(), p.group());
    out.as_mut_slice::<T>()?.par_chunks_mut(d).enumerate().for_each_init(Scratch::default, |w, (row, o)| {
        let Scratch { q: q_row, scores, acc } = w;
        let (n, i, h) = (row / p.hq / p.tq, row / p.hq % p.tq, row % p.hq);
        let slot = starts[n] + i;
        // Element offset of key (or value) j of this row's KV head.
        let key = |j: usize| ((n * p.s + j) * p.hkv + h / group) * d;
        q_row.clear();
        q_row.extend(qs[row * d..][..d].iter().map(|x| x.to_f32() * scale));
        scores.clear();
        scores.extend(real[n * p.s..=n * p.s + slot].iter().enumerate().map(|(j, &r)| {
            if r {
                dot(q_row, &ks[key(j)..][..d])
            } else {
                f32::NEG_INFINITY
            }
        }));
        let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        if max == f32::NEG_INFINITY {
            return; // No visible key: the row stays zero.
        }
        acc.clear();
        acc.resize(d, 0.0);
        let mut sum = 0.0f32;
        for (j, &s) in scores.iter().enumerate().filter(|(_, &s)| s != f32::NEG_INFINITY) {
            let e = (s - max).exp();
            sum += e;
            acc.iter_mut().zip(&vs[key(j)..][..d]).for_each(|(a, x)| *a += e * x.to_f32());
        }
        o.iter_mut().zip(acc.iter()).for_each(|(o, a)| *o = T::from_f32(a / sum));
    });
    Ok(out)
}

pub(super) fn write(cache: &mut Tensor, new: &Tensor, starts: &[usize], p: &WritePlan) -> Result<()> {
    match cache.dtype() {
        DType::BF16 => write_typed::<bf16>(cache, new, starts, p),
        DType::F16 => write_typed::<f16>(cache, new, starts, p),
        _ => write_typed::<f32>(cache, new, starts, p),
    }
}

fn write_typed<T: Element>(cache: &mut Tensor, new: &Tensor, starts: &[usize], p: &WritePlan) -> Result<()> {
    let src = new.as_slice::<T>()?;
    let block = p.tq * p.row;
    cache.as_mut_slice::<T>()?.par_chunks_mut(p.s * p.row).zip(starts).enumerate().for_each(|(n, (seq, &start))| {
        let from = if p.broadcast { 0 } else { n * block };
        seq[start * p.row..][..block].copy_from_slice(&src[from..from + block]);
    });
    Ok(())
}
