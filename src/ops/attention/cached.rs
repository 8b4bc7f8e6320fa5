//! Attention over a KV cache, for generation: new queries attend the keys and values already written to a cache of
//! S slots per sequence, and new keys and values are written into it. A sequence's queries sit at consecutive slots
//! from its own start, so sequences of a batch advance independently; a write may broadcast one block to every
//! sequence (prefix sharing: encode a prompt once, fork it to N continuations).
//!
//! CPU: rayon over (n, query, head) rows, straight from the storage dtype with f32 accumulation. CUDA:
//! `attention_cached` in `kernels/attention.cu`, one block per (n, query, head) whose warps split the keys, each
//! with an online softmax, merged at the end; `kv_cache_write`, a grid-stride copy.

use super::{cached_cpu, cached_cuda};
use crate::ops::check;
use crate::runtime::{Device, Tensor};
use crate::{Error, Result};

/// Validated sizes of an `attention_cached` call.
pub(super) struct CachedPlan {
    pub n: usize,
    /// Queries per sequence.
    pub tq: usize,
    /// Cache slots per sequence.
    pub s: usize,
    pub hq: usize,
    pub hkv: usize,
    pub d: usize,
}

impl CachedPlan {
    pub fn scale(&self) -> f32 {
        1.0 / (self.d as f32).sqrt()
    }

    /// Query heads per KV head.
    pub fn group(&self) -> usize {
        self.hq / self.hkv
    }
}

/// Validated sizes of a `kv_cache_write` call.
pub(super) struct WritePlan {
    pub n: usize,
    pub tq: usize,
    pub s: usize,
    /// Elements per slot (H·d).
    pub row: usize,
    /// `new` holds one block (B = 1), copied to every sequence.
    pub broadcast: bool,
}

/// `x` has the dtype of `like` (named `like_name`).
fn same_dtype(name: &'static str, x: &Tensor, like_name: &str, like: &Tensor) -> Result<()> {
    if x.dtype() != like.dtype() {
        return Err(Error::DType {
            arg: name,
            got: x.dtype(),
            expected: format!("the dtype of `{like_name}` ({})", like.dtype()),
        });
    }
    Ok(())
}

/// One start per sequence, each leaving room for `tq` slots in a cache of `s`.
fn check_starts(query_start: &[usize], n: usize, tq: usize, s: usize) -> Result<()> {
    if query_start.len() != n {
        return Err(Error::Shape(format!(
            "`query_start` has {} entries, expected one per sequence (N = {n})",
            query_start.len()
        )));
    }
    for (i, &start) in query_start.iter().enumerate() {
        if start.checked_add(tq).is_none_or(|end| end > s) {
            return Err(Error::InvalidArgument(format!(
                "`query_start[{i}]` = {start} plus {tq} new tokens overruns the cache of {s} slots"
            )));
        }
    }
    Ok(())
}

/// Attention of new queries over a KV cache. `q` `[N,Tq,Hq,d]`; `k_cache`, `v_cache` `[N,S,Hkv,d]` (same dtype as q);
/// `key_mask` `[N,S]` i32/i64 (nonzero = slot holds a real token); `query_start[n]` = the cache slot of query 0 of
/// sequence n. Query i of sequence n sits at slot s = `query_start[n]` + i and sees key j iff j <= s and
/// `key_mask[n,j]` != 0. A query that sees no key outputs zeros. Scale 1/sqrt(d), grouped-query as in
/// [`attention`](super::attention) (query head h reads KV head h / (Hq/Hkv)). Requires `query_start[n]` + Tq <= S
/// (error otherwise). Returns `[N,Tq,Hq,d]` in q's dtype, softmax in f32. Forward only (inference).
pub fn attention_cached(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    key_mask: &Tensor,
    query_start: &[usize],
) -> Result<Tensor> {
    let &[n, tq, hq, d] = check::rank("q", q, 4)? else { unreachable!("rank checked") };
    let &[_, s, hkv, _] = check::rank("k_cache", k_cache, 4)? else { unreachable!("rank checked") };
    check::float("q", q)?;
    same_dtype("k_cache", k_cache, "q", q)?;
    same_dtype("v_cache", v_cache, "q", q)?;
    check::shape("k_cache", k_cache, &[n, s, hkv, d])?;
    check::shape("v_cache", v_cache, &[n, s, hkv, d])?;
    check::non_empty("q (N·Tq)", n * tq)?;
    check::non_empty("q (d)", d)?;
    if hkv == 0 || hq == 0 || hq % hkv != 0 {
        return Err(Error::Shape(format!("query heads ({hq}) must be a positive multiple of KV heads ({hkv})")));
    }
    check::integer("key_mask", key_mask)?;
    check::shape("key_mask", key_mask, &[n, s])?;
    check_starts(query_start, n, tq, s)?;
    let device = check::same_device(&[("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("key_mask", key_mask)])?;
    let p = CachedPlan { n, tq, s, hq, hkv, d };
    match device {
        Device::Cpu => cached_cpu::attention(q, k_cache, v_cache, key_mask, query_start, &p),
        Device::Cuda(_) => cached_cuda::attention(q, k_cache, v_cache, key_mask, query_start, &p),
    }
}

/// Writes `new` `[B,Tq,H,d]` into `cache` `[N,S,H,d]` at slots `query_start[n]`..`query_start[n]`+Tq of each sequence
/// n. B is N, or 1 to broadcast one block to every sequence (prefix sharing: fork one encoded prompt to N rows). Same
/// dtype and device; query_start.len() == N; `query_start[n]` + Tq <= S, else a clear error.
pub fn kv_cache_write(cache: &mut Tensor, new: &Tensor, query_start: &[usize]) -> Result<()> {
    let &[n, s, h, d] = check::rank("cache", cache, 4)? else { unreachable!("rank checked") };
    let &[b, tq, _, _] = check::rank("new", new, 4)? else { unreachable!("rank checked") };
    check::float("cache", cache)?;
    same_dtype("new", new, "cache", cache)?;
    if b != n && b != 1 {
        return Err(Error::Shape(format!(
            "`new` has shape {:?}: its batch must be the cache's N = {n}, or 1 to broadcast",
            new.shape()
        )));
    }
    check::shape("new", new, &[b, tq, h, d])?;
    check_starts(query_start, n, tq, s)?;
    let device = check::same_device(&[("cache", &*cache), ("new", new)])?;
    if new.numel() == 0 || cache.numel() == 0 {
        return Ok(());
    }
    let p = WritePlan { n, tq, s, row: h * d, broadcast: b == 1 };
    match device {
        Device::Cpu => cached_cpu::write(cache, new, query_start, &p),
        Device::Cuda(_) => cached_cuda::write(cache, new, query_start, &p),
    }
}
