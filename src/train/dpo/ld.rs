//! LD-DPO (length desensitization, Liu et al. 2024, arXiv 2409.06411; TRL's `ld_alpha`): a completion's log-prob
//! is the sum over its first `ℓ_p` labelled tokens — `ℓ_p` the pair's public length, the smaller of its two
//! completions' labelled-token counts — plus α times the sum over the rest (the longer completion's verbose tail).
//! The trainer takes both sums in one pass through the fused head: the full sum and, weighted per token by
//! [`verbose_tokens`], the verbose one; the policy's go to the loss op as its `*_verbose` inputs, the reference's
//! are combined here ([`desensitized`]) so that both sides of the log-ratio are split alike, as in the paper.
//!
//! Positions count within each completion, as the paper defines them (TRL's `concatenated_forward` compares
//! positions in the whole prompt + completion row with the completion lengths, and leaves the reference whole).

use crate::train::data::SequenceBatch;

/// Per token of a pair batch's `2P` rows (chosen `0..P`, rejected `P..2P`), aligned with `rows.labels`: 1 on the
/// verbose tokens (a completion's predicted labels past its pair's public length), 0 elsewhere. Labels count as
/// [`SequenceBatch::predicted_labels`] counts them: other than `ignore`, past a row's first position.
pub(super) fn verbose_tokens(rows: &SequenceBatch, ignore: i64) -> Vec<f32> {
    let pairs = rows.rows / 2;
    let mut weights = vec![0.0; rows.rows * rows.len];
    for row in 0..rows.rows {
        let pair = row % pairs;
        let public = rows.predicted_labels(pair, ignore).min(rows.predicted_labels(pair + pairs, ignore));
        let span = row * rows.len..(row + 1) * rows.len;
        let predicted = rows.labels[span.clone()].iter().zip(&mut weights[span]).skip(1).filter(|(&l, _)| l != ignore);
        predicted.skip(public).for_each(|(_, w)| *w = 1.0);
    }
    weights
}

/// The LD-DPO log-prob of a completion from its full and verbose sums: public + α·verbose.
pub(super) fn desensitized(full: f64, verbose: f64, alpha: f32) -> f64 {
    full - (1.0 - f64::from(alpha)) * verbose
}
