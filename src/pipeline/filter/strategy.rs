//! The selection strategies: which judgments each makes for a prompt of K candidates, and the pairs it selects
//! from them. The aggregation is [`crate::ops::compare`]'s (`select_pairs`, `compare`) on the CPU.
//!
//! Policies, the same in every strategy: a **tie** verdict (margin 0) adds to neither list and counts as neither
//! a win nor a loss; an **unparsable** verdict voids its pair (NaN margin: neither a win, a loss nor a tie, left out
//! of the Bradley–Terry fit); a candidate with an **unparsable score** can be neither the chosen nor the rejected
//! one of a score-based pick. With an **odd K**, adjacent pairing leaves the last candidate unpaired: it is in
//! neither list (it is still scored). Scores are compared as numbers. Among equal scores (or equal log-strengths)
//! the lowest index is picked; round-robin breaks Copeland ties as the compare op does.
//!
//! - `pair-rank+point-sift` (UnifiedReward's): pairs (0,1), (2,3), …; winners form the chosen list, losers the
//!   rejected list; every candidate is scored; one pair, (best-scored chosen, worst-scored rejected), only when the
//!   chosen score is strictly higher.
//! - `pair-rank`: the same pairs; every decided pair is a pair (winner chosen, loser rejected): up to K/2.
//! - `point-sift`: every candidate scored; one pair (best-scored, worst-scored) when the best is strictly higher.
//! - `round-robin`: all K(K−1)/2 pairs judged; one pair (best, worst) by Copeland score (wins − losses), the
//!   compare op's tie-breaks (then Bradley–Terry strength, then index), only when the best's Copeland score is
//!   strictly higher than the worst's.
//! - `bradley-terry`: all pairs judged, the margins fitted by Bradley–Terry (ridge 0.01); one pair (strongest,
//!   weakest) when their log-strengths differ by more than [`STRENGTH_TIE`].

use std::fmt;
use std::str::FromStr;

use crate::judge::Mode;
use crate::ops::compare::{
    compare, select_pairs, CompareConfig, NanPolicy, Pairing, SelectionConfig, TiePolicy, Verdicts,
};
use crate::runtime::{Device, Tensor};
use crate::{Error, Result};

/// Log-strengths closer than this are equal (the compare op's own tie tolerance).
pub const STRENGTH_TIE: f32 = 1e-5;

/// How a prompt's candidates become pairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    PairRankPointSift,
    PairRank,
    PointSift,
    RoundRobin,
    BradleyTerry,
}

/// One selected pair of a prompt: candidate indices, and the evidence each was picked on (point-sift strategies:
/// the pointwise scores; round-robin: Copeland scores; Bradley–Terry: log-strengths; pair-rank: none).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Selected {
    pub chosen: usize,
    pub rejected: usize,
    pub chosen_score: Option<f32>,
    pub rejected_score: Option<f32>,
}

impl Strategy {
    pub const ALL: [Strategy; 5] = [
        Strategy::PairRankPointSift,
        Strategy::PairRank,
        Strategy::PointSift,
        Strategy::RoundRobin,
        Strategy::BradleyTerry,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Strategy::PairRankPointSift => "pair-rank+point-sift",
            Strategy::PairRank => "pair-rank",
            Strategy::PointSift => "point-sift",
            Strategy::RoundRobin => "round-robin",
            Strategy::BradleyTerry => "bradley-terry",
        }
    }

    /// The judge modes the strategy uses.
    pub fn modes(self) -> &'static [Mode] {
        match self {
            Strategy::PairRankPointSift => &[Mode::Pairwise, Mode::Pointwise],
            Strategy::PointSift => &[Mode::Pointwise],
            Strategy::PairRank | Strategy::RoundRobin | Strategy::BradleyTerry => &[Mode::Pairwise],
        }
    }

    /// The pairs to judge for K candidates, the first of each shown first: adjacent (0,1), (2,3), … or all i < j.
    pub fn pairs(self, k: usize) -> Vec<(usize, usize)> {
        match self {
            Strategy::PairRankPointSift | Strategy::PairRank => (0..k / 2).map(|p| (2 * p, 2 * p + 1)).collect(),
            Strategy::PointSift => Vec::new(),
            Strategy::RoundRobin | Strategy::BradleyTerry => {
                (0..k).flat_map(|i| (i + 1..k).map(move |j| (i, j))).collect()
            }
        }
    }

    /// Whether every candidate is scored pointwise.
    pub fn scores(self) -> bool {
        self.modes().contains(&Mode::Pointwise)
    }

    /// The pairs selected among `k` candidates from the margins of the judged `pairs` (positive: the first is
    /// better; 0: tie; NaN: unparsable) and, for the point-sift strategies, every candidate's score (NaN:
    /// unparsable).
    pub fn select(self, k: usize, pairs: &[(usize, usize)], margins: &[f32], scores: &[f32]) -> Result<Vec<Selected>> {
        if pairs.len() != margins.len() || (self.scores() && scores.len() != k) {
            return Err(Error::InvalidArgument(format!(
                "{}: {} pairs with {} margins and {} scores for {k} candidates",
                self.name(),
                pairs.len(),
                margins.len(),
                scores.len()
            )));
        }
        match self {
            Strategy::PairRank => Ok(pairs
                .iter()
                .zip(margins)
                .filter_map(|(&(a, b), &m)| match m {
                    m if m > 0.0 => Some(unscored(a, b)),
                    m if m < 0.0 => Some(unscored(b, a)),
                    _ => None,
                })
                .collect()),
            Strategy::PairRankPointSift => {
                let log_odds = log_odds_matrix(k, pairs, margins)?;
                sift(Verdicts::LogOdds(&log_odds), scores, Pairing::Adjacent)
            }
            Strategy::PointSift => {
                let by_score = Tensor::from_slice(scores, &[1, k], Device::Cpu)?;
                sift(Verdicts::Scores(&by_score), scores, Pairing::AllPairs)
            }
            Strategy::RoundRobin | Strategy::BradleyTerry => {
                let log_odds = log_odds_matrix(k, pairs, margins)?;
                let result = compare(Verdicts::LogOdds(&log_odds), &CompareConfig::default())?;
                if self == Strategy::RoundRobin {
                    let copeland: Vec<f32> = result.copeland.to_vec::<i32>()?.into_iter().map(|c| c as f32).collect();
                    let (best, worst) =
                        (result.best.to_vec::<i32>()?[0] as usize, result.worst.to_vec::<i32>()?[0] as usize);
                    Ok(scored_pick(best, worst, &copeland, copeland[best] > copeland[worst]))
                } else {
                    let strengths = result.strengths.to_vec::<f32>()?;
                    let best = extreme(&strengths, |a, b| a > b);
                    let worst = extreme(&strengths, |a, b| a < b);
                    Ok(scored_pick(best, worst, &strengths, strengths[best] - strengths[worst] > STRENGTH_TIE))
                }
            }
        }
    }
}

fn unscored(chosen: usize, rejected: usize) -> Selected {
    Selected { chosen, rejected, chosen_score: None, rejected_score: None }
}

fn scored_pick(chosen: usize, rejected: usize, scores: &[f32], kept: bool) -> Vec<Selected> {
    let pick =
        Selected { chosen, rejected, chosen_score: Some(scores[chosen]), rejected_score: Some(scores[rejected]) };
    if kept {
        vec![pick]
    } else {
        Vec::new()
    }
}

/// The first index whose value beats every other under `better`.
fn extreme(values: &[f32], better: impl Fn(f32, f32) -> bool) -> usize {
    (1..values.len()).fold(0, |best, i| if better(values[i], values[best]) { i } else { best })
}

/// `[1, K, K]` log-odds holding each judged pair's margin both ways (`L[a,b] = m`, `L[b,a] = −m`), so that the
/// op's margin `½(L[a,b] − L[b,a])` is `m`; unjudged pairs hold 0.
fn log_odds_matrix(k: usize, pairs: &[(usize, usize)], margins: &[f32]) -> Result<Tensor> {
    let mut l = vec![0.0f32; k * k];
    for (&(a, b), &m) in pairs.iter().zip(margins) {
        if a >= k || b >= k || a == b {
            return Err(Error::InvalidArgument(format!("pair ({a}, {b}) is not a pair of {k} candidates")));
        }
        l[a * k + b] = m;
        l[b * k + a] = -m;
    }
    Tensor::from_slice(&l, &[1, k, k], Device::Cpu)
}

/// UnifiedReward's selection (`select_pairs`) of one group, ties skipped and NaNs left out.
fn sift(verdicts: Verdicts<'_>, scores: &[f32], pairing: Pairing) -> Result<Vec<Selected>> {
    let pointwise = Tensor::from_slice(scores, &[1, scores.len()], Device::Cpu)?;
    let cfg = SelectionConfig { pairing, ties: TiePolicy::Skip, nans: NanPolicy::Skip };
    let selection = select_pairs(verdicts, &pointwise, &cfg)?;
    if selection.kept.to_vec::<i32>()?[0] == 0 {
        return Ok(Vec::new());
    }
    let (chosen, rejected) =
        (selection.chosen.to_vec::<i32>()?[0] as usize, selection.rejected.to_vec::<i32>()?[0] as usize);
    Ok(scored_pick(chosen, rejected, scores, true))
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Strategy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Strategy> {
        Strategy::ALL.into_iter().find(|st| st.name() == s.trim()).ok_or_else(|| {
            let names: Vec<&str> = Strategy::ALL.iter().map(|st| st.name()).collect();
            Error::InvalidArgument(format!("unknown strategy `{s}`; expected one of {}", names.join(", ")))
        })
    }
}
