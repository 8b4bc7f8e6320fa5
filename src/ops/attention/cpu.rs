//! CPU attention: per (n, head), blocks of queries at a time: the block's scores against the keys its queries may
//! see through `gemm` (causal: up to its last query, so most of the upper triangle is never computed), a masked
//! softmax per row (`cpu_rows`), and `gemm` again. Rayon over (n, query head) in the forward and over (n, KV head)
//! in the backward, where each task owns its group's `d_k` and `d_v`.

use rayon::prelude::*;

use super::cpu_rows::{probabilities, score_grads, Block};
use super::{Outputs, Plan};
use crate::ops::convert::{f32_values, write_f32};
use crate::runtime::cpu::{matmul, MatRef};
use crate::runtime::Tensor;
use crate::Result;

/// Queries per block: the scratch holds [QUERY_BLOCK, T] scores.
const QUERY_BLOCK: usize = 64;

/// Rows [first, first + rows) of head `head` of sequence `n` of a [N,T,heads,d] f32 buffer, as a strided matrix.
fn head_rows<'a>(
    data: &'a [f32],
    p: &Plan,
    heads: usize,
    n: usize,
    head: usize,
    first: usize,
    rows: usize,
) -> MatRef<'a> {
    let start = ((n * p.t + first) * heads + head) * p.d;
    MatRef { data: &data[start..], rows, cols: p.d, row_stride: heads * p.d, col_stride: 1 }
}

/// Writes a [T,d] row-major block into head `head` of sequence `n` of a [N,T,heads,d] buffer.
fn scatter_head(dst: &mut [f32], src: &[f32], p: &Plan, heads: usize, n: usize, head: usize) {
    for (i, row) in src.chunks_exact(p.d).enumerate() {
        let start = ((n * p.t + i) * heads + head) * p.d;
        dst[start..start + p.d].copy_from_slice(row);
    }
}

/// The query blocks of a sequence: (first query, queries, keys they can see = one past the last query's last key).
fn query_blocks(p: &Plan) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
    (0..p.t).step_by(QUERY_BLOCK).map(|first| {
        let end = (first + QUERY_BLOCK).min(p.t);
        (first, end - first, p.key_end(end - 1))
    })
}

/// Whether queries `first..first + rows` of sequence `n` hold a real token (blocks of padding are skipped).
fn any_real(p: &Plan, n: usize, first: usize, rows: usize) -> bool {
    p.valid[n * p.t + first..n * p.t + first + rows].iter().any(|&v| v)
}

pub(super) fn forward(q: &Tensor, k: &Tensor, v: &Tensor, p: &Plan, out: &mut Tensor, lse: &mut Tensor) -> Result<()> {
    let (qs, ks, vs) = (f32_values(q)?, f32_values(k)?, f32_values(v)?);
    let (t, d, group) = (p.t, p.d, p.group());
    let tasks: Vec<(Vec<f32>, Vec<f32>)> = (0..p.n * p.hq)
        .into_par_iter()
        .map(|task| {
            let (n, h, kv) = (task / p.hq, task % p.hq, task % p.hq / group);
            let (mut o, mut lse) = (vec![0.0f32; t * d], vec![0.0f32; t]);
            let mut scores = vec![0.0f32; QUERY_BLOCK.min(t) * t];
            for (first, rows, keys) in query_blocks(p).filter(|&(f, r, _)| any_real(p, n, f, r)) {
                let scores = &mut scores[..rows * keys];
                let kh = head_rows(&ks, p, p.hkv, n, kv, 0, keys);
                matmul(scores, head_rows(&qs, p, p.hq, n, h, first, rows), kh.t(), 0.0);
                probabilities(scores, Block { plan: p, n, first, keys }, &mut lse[first..first + rows], false);
                let probs = MatRef::row_major(scores, rows, keys);
                matmul(&mut o[first * d..(first + rows) * d], probs, head_rows(&vs, p, p.hkv, n, kv, 0, keys), 0.0);
            }
            (o, lse)
        })
        .collect();
    // Every (n, head) task covers its T rows: each element of `out` and `lse` is written.
    lse.as_mut_slice::<f32>()?.chunks_exact_mut(t).zip(&tasks).for_each(|(dst, (_, l))| dst.copy_from_slice(l));
    write_f32(out, |out| {
        for (task, (o, _)) in tasks.iter().enumerate() {
            scatter_head(out, o, p, p.hq, task / p.hq, task % p.hq);
        }
        Ok(())
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
    out: Outputs<'_>,
) -> Result<()> {
    let (g, qs, ks, vs) = (f32_values(grad_out)?, f32_values(q)?, f32_values(k)?, f32_values(v)?);
    let lse_all = f32_values(lse)?;
    let (t, d, group) = (p.t, p.d, p.group());
    let tasks: Vec<GroupGrads> = (0..p.n * p.hkv)
        .into_par_iter()
        .map(|task| {
            let (n, kv) = (task / p.hkv, task % p.hkv);
            let mut out = GroupGrads { dq: Vec::with_capacity(group), dk: vec![0.0; t * d], dv: vec![0.0; t * d] };
            let block = QUERY_BLOCK.min(t) * t;
            let (mut probs, mut dprobs) = (vec![0.0f32; block], vec![0.0f32; block]);
            for h in kv * group..(kv + 1) * group {
                let mut dq = vec![0.0f32; t * d];
                let mut lse_h = lse_all[(n * p.hq + h) * t..(n * p.hq + h + 1) * t].to_vec();
                for (first, rows, keys) in query_blocks(p).filter(|&(f, r, _)| any_real(p, n, f, r)) {
                    let (probs, dprobs) = (&mut probs[..rows * keys], &mut dprobs[..rows * keys]);
                    let (kh, vh) = (head_rows(&ks, p, p.hkv, n, kv, 0, keys), head_rows(&vs, p, p.hkv, n, kv, 0, keys));
                    let (qh, doh) =
                        (head_rows(&qs, p, p.hq, n, h, first, rows), head_rows(&g, p, p.hq, n, h, first, rows));
                    matmul(probs, qh, kh.t(), 0.0);
                    let block = Block { plan: p, n, first, keys };
                    probabilities(probs, block, &mut lse_h[first..first + rows], true);
                    let pm = MatRef::row_major(probs, rows, keys);
                    matmul(&mut out.dv[..keys * d], pm.t(), doh, 1.0);
                    matmul(dprobs, doh, vh.t(), 0.0);
                    score_grads(probs, dprobs, block);
                    let ds = MatRef::row_major(dprobs, rows, keys);
                    matmul(&mut dq[first * d..(first + rows) * d], ds, kh, 0.0);
                    matmul(&mut out.dk[..keys * d], ds.t(), qh, 1.0);
                }
                out.dq.push(dq);
            }
            out
        })
        .collect();
    // Every (n, KV head) task covers its T rows of d_k and d_v and those of its group's query heads in d_q.
    write_f32(out.grad_q, |dq| {
        for (task, gg) in tasks.iter().enumerate() {
            let (n, kv) = (task / p.hkv, task % p.hkv);
            for (i, dqh) in gg.dq.iter().enumerate() {
                scatter_head(dq, dqh, p, p.hq, n, kv * group + i);
            }
        }
        Ok(())
    })?;
    let write_kv = |dst: &mut Tensor, part: fn(&GroupGrads) -> &[f32]| {
        write_f32(dst, |d| {
            for (task, gg) in tasks.iter().enumerate() {
                scatter_head(d, part(gg), p, p.hkv, task / p.hkv, task % p.hkv);
            }
            Ok(())
        })
    };
    write_kv(out.grad_k, |gg| &gg.dk)?;
    write_kv(out.grad_v, |gg| &gg.dv)
}
