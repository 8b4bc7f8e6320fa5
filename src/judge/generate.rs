//! Text generation with a KV cache: greedy or sampled (temperature, top-p, seed), with stop tokens, for a batch of
//! prompts of different lengths, or for many continuations of one shared prefix encoded once.
//!
//! Each sequence draws from its own generator, seeded by `seed + row`, so a sequence's tokens do not depend on what
//! else is in the batch: generating with a shared prefix gives exactly what generating each prompt alone gives.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::model::qwen2::KvCache;
use crate::model::Qwen2Model;
use crate::{Error, Result};

/// How to pick each next token.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    /// 0 picks the most likely token (greedy); above 0 samples from softmax(logits / temperature).
    pub temperature: f32,
    /// Nucleus sampling: sample among the most likely tokens whose probabilities sum to at least `top_p` (1 keeps
    /// every token).
    pub top_p: f32,
    pub seed: u64,
    /// Generation of a sequence ends after it produces one of these (which is kept in its output).
    pub stop_tokens: Vec<u32>,
    /// Tokens never generated (their logits taken as -inf), as transformers' `suppress_tokens`: a LLaVA model adds
    /// its image and video placeholders, which an answer cannot hold (a sequence with one more placeholder than
    /// media has no meaning to a forward pass).
    pub suppress_tokens: Vec<u32>,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            max_new_tokens: 64,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop_tokens: Vec::new(),
            suppress_tokens: Vec::new(),
        }
    }
}

impl GenerationConfig {
    /// Refuses a temperature below 0 or not finite, a `top_p` outside (0, 1], `max_new_tokens` 0.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::InvalidArgument(format!(
                "`temperature` must be finite and ≥ 0, got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::InvalidArgument(format!("`top_p` must be in (0, 1], got {}", self.top_p)));
        }
        if self.max_new_tokens == 0 {
            return Err(Error::InvalidArgument("`max_new_tokens` must be at least 1".into()));
        }
        Ok(())
    }
}

/// The new tokens of each prompt (prompts of any lengths, run as one batch).
pub fn generate(model: &Qwen2Model, prompts: &[Vec<u32>], cfg: &GenerationConfig) -> Result<Vec<Vec<u32>>> {
    cfg.validate()?;
    if prompts.is_empty() || prompts.iter().any(|p| p.is_empty()) {
        return Err(Error::InvalidArgument("generate needs at least one prompt, and no empty prompt".into()));
    }
    let lengths: Vec<usize> = prompts.iter().map(Vec::len).collect();
    let limits = new_token_limits(model, &lengths, cfg)?;
    let mut cache = model.new_cache(prompts.len(), cache_capacity(&lengths, &limits))?;
    let lists: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let logits = model.extend(&mut cache, &lists)?.to_vec::<f32>()?;
    decode(model, &mut cache, logits, cfg, &limits)
}

/// The new tokens after `prefix + suffixes[i]` for each i: the prefix is encoded once and its keys and values are
/// forked to every continuation. Equal to [`generate`] on the concatenated prompts.
pub fn generate_with_prefix(
    model: &Qwen2Model,
    prefix: &[u32],
    suffixes: &[Vec<u32>],
    cfg: &GenerationConfig,
) -> Result<Vec<Vec<u32>>> {
    generate_with_prefilled_prefix(model, prefix.len(), |cache| model.extend(cache, &[prefix]), suffixes, cfg)
}

/// [`generate_with_prefix`] for a prefix of `prefix_len` positions that `prefill` writes into an empty one-sequence
/// cache, returning the f32 logits `[1,V]` after its last position (a multimodal prompt run from its input
/// embeddings, its images encoded once for every continuation).
pub fn generate_with_prefilled_prefix(
    model: &Qwen2Model,
    prefix_len: usize,
    prefill: impl FnOnce(&mut KvCache) -> Result<crate::runtime::Tensor>,
    suffixes: &[Vec<u32>],
    cfg: &GenerationConfig,
) -> Result<Vec<Vec<u32>>> {
    cfg.validate()?;
    if prefix_len == 0 || suffixes.is_empty() {
        return Err(Error::InvalidArgument(
            "generate_with_prefix needs a non-empty prefix and at least one suffix".into(),
        ));
    }
    let lengths: Vec<usize> = suffixes.iter().map(|s| prefix_len + s.len()).collect();
    let limits = new_token_limits(model, &lengths, cfg)?;
    let mut shared = model.new_cache(1, prefix_len)?;
    let prefix_logits = prefill(&mut shared)?.to_vec::<f32>()?;
    let longest = suffixes.iter().map(Vec::len).max().unwrap_or(0);
    let mut cache = shared.fork(suffixes.len(), cache_capacity(&lengths, &limits))?;
    let vocab = prefix_logits.len();
    let mut logits = if longest > 0 {
        let lists: Vec<&[u32]> = suffixes.iter().map(Vec::as_slice).collect();
        model.extend(&mut cache, &lists)?.to_vec::<f32>()?
    } else {
        Vec::new()
    };
    // A continuation with no suffix starts from the prefix's own next-token logits.
    logits.resize(suffixes.len() * vocab, 0.0);
    for (row, suffix) in suffixes.iter().enumerate() {
        if suffix.is_empty() {
            logits[row * vocab..(row + 1) * vocab].copy_from_slice(&prefix_logits);
        }
    }
    decode(model, &mut cache, logits, cfg, &limits)
}

/// Why a sequence's generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// It produced one of the stop tokens (the last token).
    Stop,
    /// It produced `max_new_tokens` tokens.
    MaxNewTokens,
    /// Prompt and new tokens filled the model's `max_position_embeddings`.
    ContextLength,
}

impl FinishReason {
    /// Why the generation of `new_tokens` after a prompt of `prompt_len` tokens ended, under `cfg` on `model`:
    /// read from the result, so that [`generate`] keeps returning plain token lists.
    pub fn of(model: &Qwen2Model, prompt_len: usize, new_tokens: &[u32], cfg: &GenerationConfig) -> FinishReason {
        if new_tokens.last().is_some_and(|t| cfg.stop_tokens.contains(t)) {
            FinishReason::Stop
        } else if prompt_len + new_tokens.len() >= model.config.max_position_embeddings {
            FinishReason::ContextLength
        } else {
            FinishReason::MaxNewTokens
        }
    }

    /// Its name in the CLI's output and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::MaxNewTokens => "max_new_tokens",
            FinishReason::ContextLength => "context_length",
        }
    }
}

/// How many tokens each sequence may add: `max_new_tokens`, fewer where the prompt and the new tokens would pass the
/// model's `max_position_embeddings` (generation then stops there, as transformers' does at its maximum length). Only
/// a prompt that leaves no room for one new token is refused.
fn new_token_limits(model: &Qwen2Model, prompt_lengths: &[usize], cfg: &GenerationConfig) -> Result<Vec<usize>> {
    let positions = model.config.max_position_embeddings;
    prompt_lengths
        .iter()
        .map(|&len| match positions.checked_sub(len) {
            Some(room) if room > 0 => Ok(room.min(cfg.max_new_tokens)),
            _ => Err(Error::InvalidArgument(format!(
                "a prompt of {len} tokens leaves no room for a new token within the model's \
                 max_position_embeddings ({positions})"
            ))),
        })
        .collect()
}

/// The cache positions the longest sequence needs: its prompt and every new token but the last (never fed back), plus
/// the slot a finished sequence's padding takes while the others go on (each step writes one slot per sequence).
fn cache_capacity(prompt_lengths: &[usize], limits: &[usize]) -> usize {
    prompt_lengths.iter().zip(limits).map(|(len, limit)| len + limit).max().unwrap_or(1)
}

/// The decoding loop from the logits [N·V] after each sequence's prompt.
fn decode(
    model: &Qwen2Model,
    cache: &mut KvCache,
    mut logits: Vec<f32>,
    cfg: &GenerationConfig,
    limits: &[usize],
) -> Result<Vec<Vec<u32>>> {
    let n = cache.batch();
    let vocab = logits.len() / n;
    let mut rngs: Vec<StdRng> = (0..n as u64).map(|row| StdRng::seed_from_u64(cfg.seed.wrapping_add(row))).collect();
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut done = vec![false; n];
    loop {
        let mut next: Vec<Vec<u32>> = vec![Vec::new(); n];
        for row in 0..n {
            if done[row] {
                continue;
            }
            let row_logits = &mut logits[row * vocab..(row + 1) * vocab];
            for &token in &cfg.suppress_tokens {
                if let Some(logit) = row_logits.get_mut(token as usize) {
                    *logit = f32::NEG_INFINITY;
                }
            }
            let token = pick(row_logits, cfg, &mut rngs[row]);
            out[row].push(token);
            done[row] = cfg.stop_tokens.contains(&token) || out[row].len() == limits[row];
            if !done[row] {
                next[row].push(token);
            }
        }
        if done.iter().all(|&d| d) {
            return Ok(out);
        }
        let lists: Vec<&[u32]> = next.iter().map(Vec::as_slice).collect();
        logits = model.extend(cache, &lists)?.to_vec::<f32>()?;
    }
}

/// The next token from one row of logits.
fn pick(logits: &[f32], cfg: &GenerationConfig, rng: &mut StdRng) -> u32 {
    if cfg.temperature == 0.0 {
        // The first maximum, as torch.argmax picks it.
        let best = logits.iter().enumerate().fold(0, |best, (i, &x)| if x > logits[best] { i } else { best });
        return best as u32;
    }
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let t = f64::from(cfg.temperature);
    let mut probs: Vec<(usize, f64)> =
        logits.iter().enumerate().map(|(i, &x)| (i, ((f64::from(x) - f64::from(max)) / t).exp())).collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    // The nucleus: the most likely tokens until their mass reaches top_p (at least one).
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = 0;
    let mut mass = 0.0;
    while kept < probs.len() && (kept == 0 || mass < f64::from(cfg.top_p) * total) {
        mass += probs[kept].1;
        kept += 1;
    }
    let mut draw = rng.gen::<f64>() * mass;
    for &(i, p) in &probs[..kept] {
        if draw < p {
            return i as u32;
        }
        draw -= p;
    }
    probs[kept - 1].0 as u32
}
