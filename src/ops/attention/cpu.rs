//! CPU attention: per (n, head) the [T,T] scores through `gemm`, a masked softmax per row, and `gemm` again;
//! rayon over (n, query head) in the forward and over (n, KV head) in the backward, where each task owns its
//! group's `d_k` and `d_v`.

use rayon::prelude::*;

use super::{AttentionGrads, AttentionOutput, Plan};
use crate::runtime::cpu::{matmul, MatRef};
use crate::runtime::{Device, Tensor};
use crate::Result;

/// Head `head` of sequence `n` of a [N,T,heads,d] f32 buffer, as a strided [T,d] matrix.
fn head_view<'a>(data: &'a [f32], p: &Plan, heads: usize, n: usize, head: usize) -> MatRef<'a> {
    let start = (n * p.t * heads + head) * p.d;
    MatRef { data: &data[start..], rows: p.t, cols: p.d, row_stride: heads * p.d, col_stride: 1 }
}

/// Writes a [T,d] row-major block into head `head` of sequence `n` of a [N,T,heads,d] buffer.
fn scatter_head(dst: &mut [f32], src: &[f32], p: &Plan, heads: usize, n: usize, head: usize) {
    for (i, row) in src.chunks_exact(p.d).enumerate() {
        let start = ((n * p.t + i) * heads + head) * p.d;
        dst[start..start + p.d].copy_from_slice(row);
    }
}

/// Whether query i of sequence n sees key j.
fn visible(p: &Plan, n: usize, i: usize, j: usize) -> bool {
    j <= i && p.valid[n * p.t + i] && p.valid[n * p.t + j]
}

/// A [T,T] block of raw scores of sequence `n` turned into probabilities in place, from the logsumexp in `lse`
/// when `lse_known` (backward), else computing it there (forward). Rows of padding queries become zero.
fn probabilities(scores: &mut [f32], p: &Plan, n: usize, lse: &mut [f32], lse_known: bool) {
    let scale = p.scale();
    for (i, row) in scores.chunks_exact_mut(p.t).enumerate() {
        if !p.valid[n * p.t + i] {
            row.fill(0.0);
            lse[i] = 0.0;
            continue;
        }
        if !lse_known {
            let max =
                (0..p.t).filter(|&j| visible(p, n, i, j)).map(|j| row[j] * scale).fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = (0..p.t).filter(|&j| visible(p, n, i, j)).map(|j| (row[j] * scale - max).exp()).sum();
            lse[i] = max + sum.ln();
        }
        let l = lse[i];
        for (j, s) in row.iter_mut().enumerate() {
            *s = if visible(p, n, i, j) { (*s * scale - l).exp() } else { 0.0 };
        }
    }
}

pub(super) fn forward(q: &Tensor, k: &Tensor, v: &Tensor, p: &Plan) -> Result<AttentionOutput> {
    let (qs, ks, vs) = (q.to_f32_cow()?, k.to_f32_cow()?, v.to_f32_cow()?);
    let (t, d, group) = (p.t, p.d, p.group());
    let tasks: Vec<(Vec<f32>, Vec<f32>)> = (0..p.n * p.hq)
        .into_par_iter()
        .map(|task| {
            let (n, h) = (task / p.hq, task % p.hq);
            let mut scores = vec![0.0f32; t * t];
            let kh = head_view(&ks, p, p.hkv, n, h / group);
            matmul(&mut scores, head_view(&qs, p, p.hq, n, h), kh.t(), 0.0);
            let mut lse = vec![0.0f32; t];
            probabilities(&mut scores, p, n, &mut lse, false);
            let mut o = vec![0.0f32; t * d];
            matmul(&mut o, MatRef::row_major(&scores, t, t), head_view(&vs, p, p.hkv, n, h / group), 0.0);
            (o, lse)
        })
        .collect();
    let mut out = vec![0.0f32; q.numel()];
    let mut lse = Vec::with_capacity(p.n * p.hq * t);
    for (task, (o, l)) in tasks.iter().enumerate() {
        scatter_head(&mut out, o, p, p.hq, task / p.hq, task % p.hq);
        lse.extend_from_slice(l);
    }
    Ok(AttentionOutput {
        out: Tensor::from_f32(&out, q.shape(), q.dtype(), Device::Cpu)?,
        lse: Tensor::from_slice(&lse, &[p.n, p.hq, t], Device::Cpu)?,
    })
}

/// One (n, KV head) task's gradients: `d_q` of each query head of the group, and the group's `d_k`, `d_v`.
struct GroupGrads {
    dq: Vec<Vec<f32>>,
    dk: Vec<f32>,
    dv: Vec<f32>,
}

pub(super) fn backward(
    grad_out: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    lse: &Tensor,
    p: &Plan,
) -> Result<AttentionGrads> {
    let (g, qs, ks, vs) = (grad_out.to_f32_cow()?, q.to_f32_cow()?, k.to_f32_cow()?, v.to_f32_cow()?);
    let lse_all = lse.to_f32_cow()?;
    let (t, d, group, scale) = (p.t, p.d, p.group(), p.scale());
    let tasks: Vec<GroupGrads> = (0..p.n * p.hkv)
        .into_par_iter()
        .map(|task| {
            let (n, kv) = (task / p.hkv, task % p.hkv);
            let (kh, vh) = (head_view(&ks, p, p.hkv, n, kv), head_view(&vs, p, p.hkv, n, kv));
            let mut out = GroupGrads { dq: Vec::with_capacity(group), dk: vec![0.0; t * d], dv: vec![0.0; t * d] };
            let (mut probs, mut dprobs) = (vec![0.0f32; t * t], vec![0.0f32; t * t]);
            for h in kv * group..(kv + 1) * group {
                let (qh, doh) = (head_view(&qs, p, p.hq, n, h), head_view(&g, p, p.hq, n, h));
                matmul(&mut probs, qh, kh.t(), 0.0);
                let mut lse_h = lse_all[(n * p.hq + h) * t..(n * p.hq + h + 1) * t].to_vec();
                probabilities(&mut probs, p, n, &mut lse_h, true);
                matmul(&mut out.dv, MatRef::row_major(&probs, t, t).t(), doh, 1.0);
                matmul(&mut dprobs, doh, vh.t(), 0.0);
                // d_scores = P ∘ (dP − rowsum(P ∘ dP)) · scale, in place over dP.
                for (prow, dprow) in probs.chunks_exact(t).zip(dprobs.chunks_exact_mut(t)) {
                    let dot: f32 = prow.iter().zip(dprow.iter()).map(|(a, b)| a * b).sum();
                    dprow.iter_mut().zip(prow).for_each(|(ds, &pr)| *ds = pr * (*ds - dot) * scale);
                }
                let ds = MatRef::row_major(&dprobs, t, t);
                let mut dq = vec![0.0f32; t * d];
                matmul(&mut dq, ds, kh, 0.0);
                matmul(&mut out.dk, ds.t(), qh, 1.0);
                out.dq.push(dq);
            }
            out
        })
        .collect();
    let (mut dq, mut dk, mut dv) = (vec![0.0f32; q.numel()], vec![0.0f32; k.numel()], vec![0.0f32; v.numel()]);
    for (task, gg) in tasks.iter().enumerate() {
        let (n, kv) = (task / p.hkv, task % p.hkv);
        for (i, dqh) in gg.dq.iter().enumerate() {
            scatter_head(&mut dq, dqh, p, p.hq, n, kv * group + i);
        }
        scatter_head(&mut dk, &gg.dk, p, p.hkv, n, kv);
        scatter_head(&mut dv, &gg.dv, p, p.hkv, n, kv);
    }
    let grad = |data: &[f32], like: &Tensor| Tensor::from_f32(data, like.shape(), like.dtype(), Device::Cpu);
    Ok(AttentionGrads { grad_q: grad(&dq, q)?, grad_k: grad(&dk, k)?, grad_v: grad(&dv, v)? })
}
