//! UnifiedReward's selection rule for one group on the CPU (the same steps as `cmp_select` in
//! `kernels/compare.cu`, which writes [`NanKind::code`] per group).

use super::group::Group;
use super::{NanPolicy, Pairing, SelectionConfig, TiePolicy};

/// What was NaN in a group under [`NanPolicy::Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NanKind {
    Verdict,
    Score,
}

impl NanKind {
    pub fn describe(self) -> &'static str {
        match self {
            NanKind::Verdict => "a pair verdict",
            NanKind::Score => "the pointwise score of a paired candidate",
        }
    }

    /// The kernel's per-group status code (0 means no NaN).
    pub fn from_code(code: i32) -> Option<NanKind> {
        match code {
            1 => Some(NanKind::Verdict),
            2 => Some(NanKind::Score),
            _ => None,
        }
    }
}

/// One group's pick.
pub(crate) struct Pick {
    pub chosen: i32,
    pub rejected: i32,
    pub chosen_score: f32,
    pub rejected_score: f32,
    pub kept: bool,
}

const NO_PICK: Pick = Pick { chosen: -1, rejected: -1, chosen_score: f32::NAN, rejected_score: f32::NAN, kept: false };

/// The candidates `c` is compared with under `pairing` (a range that may include `c` itself, which callers skip):
/// its neighbour 2j ↔ 2j+1 (none for the last of an odd K), or everyone.
fn partners(pairing: Pairing, c: usize, k: usize) -> std::ops::Range<usize> {
    match pairing {
        Pairing::Adjacent if (c ^ 1) < k => (c ^ 1)..(c ^ 1) + 1,
        Pairing::Adjacent => 0..0,
        Pairing::AllPairs => 0..k,
    }
}

/// Applies the rule to one group of `scores.len()` candidates.
pub(crate) fn select_group(group: Group<'_>, scores: &[f32], cfg: &SelectionConfig) -> Result<Pick, NanKind> {
    let k = scores.len();
    let mut dropped = false;
    for a in 0..k {
        for b in partners(cfg.pairing, a, k).filter(|&b| b > a) {
            let m = group.margin(a, b);
            if cfg.nans == NanPolicy::Error {
                if m.is_nan() {
                    return Err(NanKind::Verdict);
                }
                if scores[a].is_nan() || scores[b].is_nan() {
                    return Err(NanKind::Score);
                }
            }
            dropped |= m == 0.0 && cfg.ties == TiePolicy::DropGroup;
        }
    }
    if dropped {
        return Ok(NO_PICK);
    }
    let mut pick = NO_PICK;
    for c in (0..k).filter(|&c| !scores[c].is_nan()) {
        let (mut won, mut lost) = (false, false);
        for p in partners(cfg.pairing, c, k).filter(|&p| p != c) {
            let m = group.margin(c, p);
            let first_wins = m == 0.0 && cfg.ties == TiePolicy::FirstWins;
            won |= m > 0.0 || (first_wins && c < p);
            lost |= m < 0.0 || (first_wins && c > p);
        }
        if won && (pick.chosen < 0 || scores[c] > pick.chosen_score) {
            (pick.chosen, pick.chosen_score) = (c as i32, scores[c]);
        }
        if lost && (pick.rejected < 0 || scores[c] < pick.rejected_score) {
            (pick.rejected, pick.rejected_score) = (c as i32, scores[c]);
        }
    }
    pick.kept = pick.chosen >= 0 && pick.rejected >= 0 && pick.chosen_score > pick.rejected_score;
    Ok(pick)
}
