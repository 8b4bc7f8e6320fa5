//! What the filter asks a judge: which of two candidates of a prompt is better, and each candidate's score. An
//! answer that states no verdict or score (a reasoned judgment's unparsable text) is kept as unparsable with its
//! reason, never read as a tie or a zero.

use super::candidates::CandidatePrompt;
use crate::judge::answer::Verdict;
use crate::judge::Mode;
use crate::Result;

/// The largest margin magnitude: ln-probability ratios of near-certain verdicts are clamped to it, so that an
/// underflowed probability never turns into an infinite margin.
pub const MAX_MARGIN: f32 = 80.0;

/// A pairwise judgment of (first, second), the first shown first.
#[derive(Clone, Debug, PartialEq)]
pub struct PairJudgment {
    /// The verdict, or why the answer has none.
    pub verdict: std::result::Result<Verdict, String>,
    /// The judge's probabilities (one-pass: position-debiased `[first better, second better(, tie)]`; reasoned: of
    /// the final verdict given the reasoning); empty when the judge gives none.
    pub probs: Vec<f32>,
    /// The evidence that the first beats the second, as the comparison ops take it: positive when the verdict is
    /// First, negative when Second, 0 for a tie, NaN when unparsable. Its magnitude is |ln P(first) − ln P(second)|
    /// (clamped to [`MAX_MARGIN`], and at least the smallest normal f32 so that a decided verdict never reads as a
    /// tie).
    pub margin: f32,
    /// A reasoned judgment's generated answer.
    pub answer: Option<String>,
}

impl PairJudgment {
    /// A judgment from its verdict and the judge's `log_odds` = ln P(first) − ln P(second) (only its magnitude is
    /// used: the verdict decides the sign).
    pub fn new(
        verdict: std::result::Result<Verdict, String>,
        log_odds: f32,
        probs: Vec<f32>,
        answer: Option<String>,
    ) -> PairJudgment {
        let magnitude = log_odds.abs().clamp(f32::MIN_POSITIVE, MAX_MARGIN);
        let margin = match verdict {
            Ok(Verdict::First) => magnitude,
            Ok(Verdict::Second) => -magnitude,
            Ok(Verdict::Tie) => 0.0,
            Err(_) => f32::NAN,
        };
        PairJudgment { verdict, probs, margin, answer }
    }
}

/// A pointwise judgment of one candidate.
#[derive(Clone, Debug, PartialEq)]
pub struct PointJudgment {
    /// The score (compared as a number), or why the answer has none.
    pub score: std::result::Result<f64, String>,
    /// One-pass: one probability per value of the scale.
    pub probs: Vec<f32>,
    pub answer: Option<String>,
}

/// A judge as the filter uses it, one prompt at a time (so that a judge can batch a prompt's judgments).
pub trait Judgments {
    /// Refuses (with the reason) a prompt this judge cannot judge in every one of `modes`: its template cannot do
    /// the task, the model cannot see the media, a field is missing. Called for every prompt before any is judged.
    fn check(&self, prompt: &CandidatePrompt, modes: &[Mode]) -> Result<()>;

    /// The judgments of the candidate pairs `pairs` (indices into the prompt's candidates, the first shown first).
    fn pairwise(&self, prompt: &CandidatePrompt, pairs: &[(usize, usize)]) -> Result<Vec<PairJudgment>>;

    /// The scores of the candidates `candidates`.
    fn pointwise(&self, prompt: &CandidatePrompt, candidates: &[usize]) -> Result<Vec<PointJudgment>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_margin_takes_the_verdicts_sign_and_never_reads_a_decision_as_a_tie() {
        assert_eq!(PairJudgment::new(Ok(Verdict::First), -2.5, vec![], None).margin, 2.5);
        assert_eq!(PairJudgment::new(Ok(Verdict::Second), 2.5, vec![], None).margin, -2.5);
        assert_eq!(PairJudgment::new(Ok(Verdict::Tie), 2.5, vec![], None).margin, 0.0);
        assert_eq!(PairJudgment::new(Ok(Verdict::First), 0.0, vec![], None).margin, f32::MIN_POSITIVE);
        assert_eq!(PairJudgment::new(Ok(Verdict::Second), f32::INFINITY, vec![], None).margin, -MAX_MARGIN);
        assert!(PairJudgment::new(Err("no verdict".into()), 1.0, vec![], None).margin.is_nan());
    }
}
