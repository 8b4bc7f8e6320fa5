//! WPO (weighted preference optimization, Zhou et al. 2024, arXiv 2406.11827; TRL's `use_weighting`): each pair's
//! loss is weighted by how likely the policy itself finds both completions, `min(exp(w_chosen + w_rejected), 1)`,
//! `w` a completion's mean over its tokens of `log p(token) − log Σ_v p_v²` (the token's log-prob against the
//! distribution's own collision probability, the paper's Eq. 2). The weights are constants to the gradient; the fused
//! head takes each token's `log Σ_v p_v²` in the pass that takes the log-probs.
//!
//! Each log-prob is taken against the distribution that predicts it (TRL subtracts the next position's
//! `log Σ_v p_v²` from each token's log-prob, having rolled the log-probs by one position).

/// Each pair's weight from the rows' summed log-probs, summed `log Σ_v p_v²` and token counts (rows `0..P` the
/// chosen completions, `P..2P` the rejected ones; every count at least 1).
pub(super) fn pair_weights(logps: &[f64], log_collision: &[f64], tokens: &[usize]) -> Vec<f32> {
    let w: Vec<f64> =
        logps.iter().zip(log_collision).zip(tokens).map(|((&l, &c), &n)| (l - c) / n.max(1) as f64).collect();
    let (chosen, rejected) = w.split_at(w.len() / 2);
    chosen.iter().zip(rejected).map(|(c, r)| (c + r).exp().min(1.0) as f32).collect()
}
