//! Inference with a KV cache: the rotated keys and the values of every layer for the tokens seen so far, so that
//! new tokens cost one pass over themselves. A batch-1 cache (one encoded prompt) forks into many rows: prefix
//! sharing, so that K candidates of one prompt reuse its keys and values instead of re-encoding it K times.

use super::layer::{self, Dims, LayerActivations};
use super::Qwen2Model;
use crate::model::views::next_view;
use crate::ops::attention::{attention_cached, attention_into, kv_cache_write, Masking};
use crate::ops::embedding::{embedding, embedding_into};
use crate::ops::linear::linear;
use crate::ops::rmsnorm::rmsnorm;
use crate::runtime::arena::{Arena, Slot};
use crate::runtime::{DType, Tensor};
use crate::{Error, Result};

/// Keys and values of every layer for a batch of sequences, each with its own length.
#[derive(Debug)]
pub struct KvCache {
    /// Per layer: rotated keys and values [N,S,Hkv,d] in the model's dtype (S = capacity).
    layers: Vec<(Tensor, Tensor)>,
    /// [N·S]: 1 where a slot holds a token.
    valid: Vec<i64>,
    /// Tokens held per sequence.
    lengths: Vec<usize>,
    capacity: usize,
    /// The activations of the last `extend`, reused by the next (decode steps allocate nothing).
    scratch: Option<Arena>,
}

impl KvCache {
    /// Sequences in the batch.
    pub fn batch(&self) -> usize {
        self.lengths.len()
    }

    /// Slots per sequence.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Tokens held by each sequence.
    pub fn lengths(&self) -> &[usize] {
        &self.lengths
    }

    /// Bytes held by the keys and values.
    pub fn size_in_bytes(&self) -> usize {
        self.layers.iter().map(|(k, v)| k.size_in_bytes() + v.size_in_bytes()).sum()
    }

    /// `copies` sequences that each start with what this batch-1 cache holds, with room for `capacity` tokens
    /// each (at least this cache's capacity). The keys and values are copied on the device; nothing is recomputed.
    pub fn fork(&self, copies: usize, capacity: usize) -> Result<KvCache> {
        if self.batch() != 1 {
            return Err(Error::InvalidArgument(format!(
                "only a batch-1 cache (one encoded prefix) can be forked, this one holds {} sequences",
                self.batch()
            )));
        }
        if copies == 0 || capacity < self.capacity {
            return Err(Error::InvalidArgument(format!(
                "fork needs at least one copy and a capacity of at least {} (got {copies} copies of {capacity})",
                self.capacity
            )));
        }
        let starts = vec![0; copies];
        let layers = self
            .layers
            .iter()
            .map(|(k, v)| {
                let fork = |src: &Tensor| -> Result<Tensor> {
                    let &[_, _, heads, d] = src.shape() else { unreachable!("caches are [N,S,H,d]") };
                    let mut dst = Tensor::zeros(&[copies, capacity, heads, d], src.dtype(), src.device())?;
                    kv_cache_write(&mut dst, src, &starts)?;
                    Ok(dst)
                };
                Ok((fork(k)?, fork(v)?))
            })
            .collect::<Result<_>>()?;
        let mut valid = vec![0; copies * capacity];
        for row in valid.chunks_mut(capacity) {
            row[..self.capacity].copy_from_slice(&self.valid);
        }
        Ok(KvCache { layers, valid, lengths: vec![self.lengths[0]; copies], capacity, scratch: None })
    }
}

impl Qwen2Model {
    /// An empty cache for `batch` sequences of up to `capacity` tokens each.
    pub fn new_cache(&self, batch: usize, capacity: usize) -> Result<KvCache> {
        let c = &self.config;
        if batch == 0 || capacity == 0 || capacity > c.max_position_embeddings {
            return Err(Error::InvalidArgument(format!(
                "a KV cache needs batch ≥ 1 and 1 ≤ capacity ≤ max_position_embeddings ({}), got batch {batch}, \
                 capacity {capacity}",
                c.max_position_embeddings
            )));
        }
        let shape = [batch, capacity, c.num_key_value_heads, c.head_dim()];
        let layers = (0..c.num_hidden_layers)
            .map(|_| {
                Ok((
                    Tensor::zeros(&shape, self.dtype(), self.device())?,
                    Tensor::zeros(&shape, self.dtype(), self.device())?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(KvCache { layers, valid: vec![0; batch * capacity], lengths: vec![0; batch], capacity, scratch: None })
    }

    /// Runs `tokens[n]` after what sequence n of `cache` holds (an empty list adds nothing to that sequence),
    /// appending their keys and values, and returns the f32 logits `[N,V]` after each sequence's last new token
    /// (rows of sequences that got none are unspecified).
    pub fn extend(&self, cache: &mut KvCache, tokens: &[&[u32]]) -> Result<Tensor> {
        let last: Vec<Vec<usize>> = tokens.iter().map(|t| vec![t.len().max(1) - 1]).collect();
        self.extend_logits_at(cache, tokens, &last)
    }

    /// [`Qwen2Model::extend`] returning the f32 logits `[R,V]` at the listed new positions: `at[n]` indexes the new
    /// tokens of sequence n (each below its count), rows in order, sequence by sequence (teacher-forced scoring of
    /// every token of a continuation in one step).
    pub fn extend_logits_at(&self, cache: &mut KvCache, tokens: &[&[u32]], at: &[Vec<usize>]) -> Result<Tensor> {
        let n = cache.batch();
        if tokens.len() != n {
            return Err(Error::InvalidArgument(format!("{} token lists for a cache of {n} sequences", tokens.len())));
        }
        let vocab = self.config.vocab_size as u32;
        if let Some((row, id)) =
            tokens.iter().enumerate().find_map(|(row, t)| t.iter().find(|&&id| id >= vocab).map(|&id| (row, id)))
        {
            return Err(Error::InvalidArgument(format!(
                "token {id} of sequence {row} is outside the vocabulary [0, {vocab})"
            )));
        }
        if at.len() != n {
            return Err(Error::InvalidArgument(format!("{} position lists for a cache of {n} sequences", at.len())));
        }
        let counts: Vec<usize> = tokens.iter().map(|t| t.len()).collect();
        let tq = counts.iter().copied().max().unwrap_or(0);
        let mut ids = vec![0i64; n * tq];
        for (row, list) in tokens.iter().enumerate() {
            for (i, &id) in list.iter().enumerate() {
                ids[row * tq + i] = i64::from(id);
            }
        }
        // Built before the checks of `extend_with`, which refuse an empty step before `fill` reads it.
        let ids = Tensor::from_slice(&ids, &[n, tq], self.device());
        let table = &self.weights.embed_tokens;
        self.extend_with(cache, &counts, at, |x| embedding_into(table, &ids?, x))
    }

    /// [`Qwen2Model::extend`] from input embeddings `[N,Tq,H]` in the model's dtype: every sequence gets `Tq` new
    /// positions (a prompt's token embeddings with image features spliced in, for the judge's prefill).
    pub fn extend_embeds(&self, cache: &mut KvCache, embeds: &Tensor) -> Result<Tensor> {
        let &[n, tq, h] = crate::ops::check::rank("inputs_embeds", embeds, 3)? else { unreachable!() };
        if n != cache.batch() || h != self.config.hidden_size {
            return Err(Error::Shape(format!(
                "`inputs_embeds` is {:?}; the cache holds {} sequences and the model's width is {}",
                embeds.shape(),
                cache.batch(),
                self.config.hidden_size
            )));
        }
        crate::ops::check::dtype("inputs_embeds", embeds, self.dtype())?;
        let embeds = embeds.to_device(self.device())?;
        let last: Vec<Vec<usize>> = vec![vec![tq.max(1) - 1]; n];
        self.extend_with(cache, &vec![tq; n], &last, |x| x.copy_from(&embeds))
    }

    /// The cached forward over `counts[n]` new positions per sequence, whose input `[N,Tq,H]` `fill` writes; the
    /// logits at new positions `at[n]` of each sequence.
    fn extend_with(
        &self,
        cache: &mut KvCache,
        counts: &[usize],
        at: &[Vec<usize>],
        fill: impl FnOnce(&mut Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        let n = cache.batch();
        let tq = counts.iter().copied().max().unwrap_or(0);
        if tq == 0 {
            return Err(Error::InvalidArgument("extend needs at least one new token".into()));
        }
        if at.iter().all(Vec::is_empty) {
            return Err(Error::InvalidArgument("extend needs at least one position to return logits at".into()));
        }
        if let Some((row, &i)) = at
            .iter()
            .enumerate()
            .find_map(|(row, list)| list.iter().find(|&&i| i >= counts[row].max(1)).map(|i| (row, i)))
        {
            return Err(Error::InvalidArgument(format!(
                "logits asked at new position {i} of sequence {row}, which gets {} new tokens",
                counts[row]
            )));
        }
        let starts = cache.lengths.clone();
        if let Some(row) = (0..n).find(|&r| starts[r] + tq > cache.capacity) {
            return Err(Error::InvalidArgument(format!(
                "sequence {row} holds {} tokens; {tq} more exceed the cache capacity {}",
                starts[row], cache.capacity
            )));
        }
        // The cache's bookkeeping changes only once every layer has run (an error leaves it as it was).
        let (mut valid, mut lengths) = (cache.valid.clone(), cache.lengths.clone());
        let mut positions = vec![0i64; n * tq];
        for (row, &count) in counts.iter().enumerate() {
            for i in 0..tq {
                positions[row * tq + i] = (starts[row] + i) as i64;
            }
            for i in 0..count {
                valid[row * cache.capacity + starts[row] + i] = 1;
            }
            lengths[row] += count;
        }
        let device = self.device();
        let positions = Tensor::from_slice(&positions, &[n, tq], device)?;
        let slot_mask = Tensor::from_slice(&valid, &[n, cache.capacity], device)?;
        // A prefill into an empty cache is plain causal attention over the new tokens: the tiled (flash-style)
        // kernels instead of one cached-attention row per query.
        let prefill_mask = if starts.iter().all(|&s| s == 0) {
            let real: Vec<i64> = counts.iter().flat_map(|&c| (0..tq).map(move |i| i64::from(i < c))).collect();
            Some(Tensor::from_slice(&real, &[n, tq], device)?)
        } else {
            None
        };
        let dims = Dims::new(&self.config, n, tq);
        let ctx = self.layer_context(dims, &positions, &slot_mask);
        let mut slots = vec![Slot::new(&dims.stream(), self.dtype()); 2];
        slots.extend(LayerActivations::slots(&dims, self.dtype()));
        let mut arena = Arena::reuse_or_new(cache.scratch.take(), slots, device)?;
        // SAFETY: the views live in this block only; the arena outlives them and is not laid out again meanwhile.
        let mut views = unsafe { arena.views()? }.into_iter();
        let (mut x, mut y) = (next_view(&mut views)?, next_view(&mut views)?);
        let mut acts = LayerActivations::from_views(&mut views)?;
        fill(&mut x)?;
        for (w, (k_cache, v_cache)) in self.weights.layers.iter().zip(&mut cache.layers) {
            layer::forward_into(w, &ctx, &x, &mut acts, &mut y, |q, k, v, attn| {
                kv_cache_write(k_cache, k, &starts)?;
                kv_cache_write(v_cache, v, &starts)?;
                match &prefill_mask {
                    Some(mask) => attention_into(q, k, v, mask, Masking::Causal, &mut attn.out, &mut attn.lse),
                    None => attn.out.copy_from(&attention_cached(q, k_cache, v_cache, &slot_mask, &starts)?),
                }
            })?;
            std::mem::swap(&mut x, &mut y);
        }
        // Only the asked positions reach the LM head: gather those rows ([N·Tq, H] read as a table).
        let h = self.config.hidden_size;
        let picked: Vec<i64> =
            at.iter().enumerate().flat_map(|(row, list)| list.iter().map(move |&i| (row * tq + i) as i64)).collect();
        x.reshape_in_place(&[n * tq, h])?;
        let rows = embedding(&x, &Tensor::from_slice(&picked, &[picked.len()], device)?)?;
        let hidden = rmsnorm(&rows, &self.weights.norm, &self.norm_config())?.y;
        let logits = linear(&hidden, self.weights.head(), None)?.to_dtype(DType::F32)?;
        drop((x, y, acts, views));
        (cache.valid, cache.lengths, cache.scratch) = (valid, lengths, Some(arena));
        Ok(logits)
    }
}
