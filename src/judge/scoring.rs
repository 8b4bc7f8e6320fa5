//! Teacher-forced scoring of continuations: the sum of the log-probabilities of each continuation's tokens, every
//! token given everything before it, for many sequences that share a prefix. The shared prefix (the media and the
//! instruction) is prefilled once through the KV cache and forked to every sequence; each sequence then runs its
//! own remaining tokens in one batched step whose logits are read at the scored positions only.
//!
//! Works on the text-only Qwen2 model and on LLaVA-OneVision ([`JudgeModel`]); on LLaVA the media are encoded once,
//! in the prefill.

use crate::model::llava::{LlavaOnevisionModel, MediaInput};
use crate::model::qwen2::KvCache;
use crate::model::Qwen2Model;
use crate::ops::embedding::embedding;
use crate::ops::logprobs::{sequence_logprobs, LogProbsConfig};
use crate::runtime::Tensor;
use crate::{Error, Result};

/// A model that can judge: the text-only decoder, or the multimodal one.
#[derive(Debug)]
pub enum JudgeModel {
    Text(Box<Qwen2Model>),
    Llava(Box<LlavaOnevisionModel>),
}

/// One sequence to score: token ids (LLaVA placeholders included, as the model's config numbers them) of which
/// `ids[scored_from..]` is the scored continuation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScoredSequence {
    pub ids: Vec<i64>,
    pub scored_from: usize,
}

/// The scores of a batch of sequences, and what prefix sharing saved.
#[derive(Clone, Debug, PartialEq)]
pub struct SequenceScores {
    /// Per sequence: Σ log p(token | everything before it) over the scored tokens.
    pub log_probs: Vec<f32>,
    /// Positions run through the model: the shared prefix once, then every sequence's remaining tokens but the last.
    pub prefill_tokens: usize,
    /// Positions that running each sequence alone would have run on top of `prefill_tokens`: the shared prefix once
    /// more per extra sequence.
    pub prefill_tokens_saved: usize,
    /// Length of the shared prefix.
    pub shared_prefix: usize,
}

/// A sequence's part after the shared prefix: `context` (run, not scored) then `scored` (non-empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Continuation {
    pub context: Vec<u32>,
    pub scored: Vec<u32>,
}

impl JudgeModel {
    /// The decoder that reads the tokens.
    pub fn language_model(&self) -> &Qwen2Model {
        match self {
            JudgeModel::Text(m) => m,
            JudgeModel::Llava(m) => &m.language_model,
        }
    }

    /// The ids that stand for media rows (none for the text-only model).
    pub fn placeholder_ids(&self) -> Vec<i64> {
        match self {
            JudgeModel::Text(_) => Vec::new(),
            JudgeModel::Llava(m) => vec![m.config.image_token_id, m.config.video_token_id],
        }
    }

    /// Scores `sequences`, which all see the same `media` (empty for the text-only model): their longest common
    /// prefix, cut before the first scored token of any, is prefilled once (it must hold every media placeholder).
    /// Equal to scoring each sequence alone.
    pub fn score(&self, sequences: &[ScoredSequence], media: &[MediaInput<'_>]) -> Result<SequenceScores> {
        if sequences.is_empty() {
            return Err(Error::InvalidArgument("nothing to score: no sequences".into()));
        }
        for (i, s) in sequences.iter().enumerate() {
            if s.scored_from == 0 || s.scored_from >= s.ids.len() {
                return Err(Error::InvalidArgument(format!(
                    "sequence {i}: the scored part must start after at least one token and hold at least one \
                     (scored_from {} of {} ids)",
                    s.scored_from,
                    s.ids.len()
                )));
            }
        }
        let limit = sequences.iter().map(|s| s.scored_from).min().unwrap_or(0);
        let shared = common_prefix_len(sequences).min(limit);
        let placeholders = self.placeholder_ids();
        let prefix = &sequences[0].ids[..shared];
        let continuations = sequences
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let to_u32 = |ids: &[i64]| -> Result<Vec<u32>> {
                    ids.iter()
                        .map(|&id| {
                            if placeholders.contains(&id) {
                                return Err(Error::InvalidArgument(format!(
                                    "sequence {i}: a media placeholder after the shared prefix (the sequences must \
                                     agree up to their last placeholder)"
                                )));
                            }
                            u32::try_from(id)
                                .map_err(|_| Error::InvalidArgument(format!("sequence {i}: {id} is not a token id")))
                        })
                        .collect()
                };
                Ok(Continuation {
                    context: to_u32(&s.ids[shared..s.scored_from])?,
                    scored: to_u32(&s.ids[s.scored_from..])?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        match self {
            JudgeModel::Text(lm) => {
                if !media.is_empty() {
                    return Err(Error::InvalidArgument(
                        "the text-only model takes no images or videos (load a LLaVA-OneVision checkpoint)".into(),
                    ));
                }
                let prefix = prefix
                    .iter()
                    .map(|&id| u32::try_from(id).map_err(|_| Error::InvalidArgument(format!("{id} is not a token id"))))
                    .collect::<Result<Vec<u32>>>()?;
                score_with_prefilled_prefix(lm, shared, |cache| lm.extend(cache, &[&prefix]), &continuations)
            }
            JudgeModel::Llava(model) => {
                let embeds = model.prompt_embeds(prefix, media)?;
                let lm = &model.language_model;
                score_with_prefilled_prefix(lm, shared, |cache| lm.extend_embeds(cache, &embeds), &continuations)
            }
        }
    }
}

/// The length of the longest prefix every sequence shares.
fn common_prefix_len(sequences: &[ScoredSequence]) -> usize {
    let first = &sequences[0].ids;
    sequences[1..]
        .iter()
        .fold(first.len(), |len, s| first.iter().zip(&s.ids).take(len).take_while(|(a, b)| a == b).count())
}

/// Sums of the continuations' scored log-probabilities after a prefix of `prefix_len` positions that `prefill`
/// writes into an empty one-sequence cache (returning the f32 logits `[1,V]` after its last position).
pub fn score_with_prefilled_prefix(
    model: &Qwen2Model,
    prefix_len: usize,
    prefill: impl FnOnce(&mut KvCache) -> Result<Tensor>,
    continuations: &[Continuation],
) -> Result<SequenceScores> {
    if prefix_len == 0 || continuations.is_empty() || continuations.iter().any(|c| c.scored.is_empty()) {
        return Err(Error::InvalidArgument(
            "scoring needs a non-empty prefix and at least one continuation, each with a scored token".into(),
        ));
    }
    // Every token but the last is run: the last one is only read.
    let runs: Vec<Vec<u32>> = continuations
        .iter()
        .map(|c| c.context.iter().chain(&c.scored[..c.scored.len() - 1]).copied().collect())
        .collect();
    let capacity = prefix_len + runs.iter().map(Vec::len).max().unwrap_or(0);
    let positions = model.config.max_position_embeddings;
    if capacity > positions {
        return Err(Error::InvalidArgument(format!(
            "a scored sequence of {capacity} positions is longer than the model's max_position_embeddings ({positions})"
        )));
    }
    let mut shared = model.new_cache(1, prefix_len)?;
    let prefix_logits = prefill(&mut shared)?;
    // The scored token j of a continuation is read at new position context + j − 1; position −1 is the prefix's
    // last, whose logits the prefill returned.
    let mut at: Vec<Vec<usize>> = Vec::with_capacity(continuations.len());
    let (mut from_prefix, mut from_prefix_labels, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    for (row, c) in continuations.iter().enumerate() {
        let from_prefill = usize::from(c.context.is_empty());
        at.push((c.context.len() + from_prefill - 1..c.context.len() + c.scored.len() - 1).collect());
        labels.extend(c.scored[from_prefill..].iter().map(|&t| i64::from(t)));
        if from_prefill == 1 {
            from_prefix.push(row);
            from_prefix_labels.push(i64::from(c.scored[0]));
        }
    }
    let mut log_probs = vec![0.0f32; continuations.len()];
    if !labels.is_empty() {
        let mut cache = shared.fork(continuations.len(), capacity)?;
        let lists: Vec<&[u32]> = runs.iter().map(Vec::as_slice).collect();
        let logits = model.extend_logits_at(&mut cache, &lists, &at)?;
        let per_token = token_log_probs(logits, &labels)?;
        let mut next = per_token.iter();
        for (row, positions) in at.iter().enumerate() {
            log_probs[row] += positions.iter().map(|_| next.next().copied().unwrap_or(f32::NAN)).sum::<f32>();
        }
    }
    if !from_prefix.is_empty() {
        let rows = vec![0i64; from_prefix.len()];
        let repeated = embedding(&prefix_logits, &Tensor::from_slice(&rows, &[rows.len()], prefix_logits.device())?)?;
        for (row, lp) in from_prefix.iter().zip(token_log_probs(repeated, &from_prefix_labels)?) {
            log_probs[*row] += lp;
        }
    }
    let extra: usize = runs.iter().map(Vec::len).sum();
    Ok(SequenceScores {
        log_probs,
        prefill_tokens: prefix_len + extra,
        prefill_tokens_saved: (continuations.len() - 1) * prefix_len,
        shared_prefix: prefix_len,
    })
}

/// log softmax(logits[r])[labels[r]] for each row of `logits` `[R,V]` (f32), on the logits' device.
fn token_log_probs(logits: Tensor, labels: &[i64]) -> Result<Vec<f32>> {
    let &[r, v] = logits.shape() else {
        return Err(Error::Shape(format!("logits {:?} are not [R,V]", logits.shape())));
    };
    let logits = logits.reshape(&[r, 1, v])?;
    let labels = Tensor::from_slice(labels, &[r, 1], logits.device())?;
    sequence_logprobs(&logits, &labels, None, &LogProbsConfig::default())?.logps.to_vec::<f32>()
}
