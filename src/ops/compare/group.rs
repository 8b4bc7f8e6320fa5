//! One group's inputs on the host, and the margins and probabilities every comparison is made of.

use super::ScoreLink;

/// How a margin becomes a probability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Link {
    Sigmoid,
    Hard,
}

impl Link {
    pub fn of(log_odds: bool, score_link: ScoreLink) -> Link {
        match (log_odds, score_link) {
            (false, ScoreLink::Hard) => Link::Hard,
            _ => Link::Sigmoid,
        }
    }

    /// `P` from a margin, in f64; NaN for a void pair.
    pub fn probability(self, margin: f32) -> f64 {
        let m = f64::from(margin);
        match self {
            Link::Sigmoid => sigmoid(m),
            Link::Hard if m > 0.0 => 1.0,
            Link::Hard if m < 0.0 => 0.0,
            Link::Hard if m == 0.0 => 0.5,
            Link::Hard => f64::NAN,
        }
    }
}

/// σ(x) without overflow for either sign.
pub(crate) fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// One group's verdicts, read as f32.
#[derive(Clone, Copy)]
pub(crate) enum Group<'a> {
    /// K scores.
    Scores(&'a [f32]),
    /// K×K log-odds, row-major, with K.
    LogOdds(&'a [f32], usize),
}

impl Group<'_> {
    /// `M[i,j]`: `s_i − s_j`, or `½(L[i,j] − L[j,i])`. `M[j,i] = −M[i,j]` exactly.
    #[inline]
    pub fn margin(&self, i: usize, j: usize) -> f32 {
        match *self {
            Group::Scores(s) => s[i] - s[j],
            Group::LogOdds(l, k) => 0.5 * (l[i * k + j] - l[j * k + i]),
        }
    }
}
