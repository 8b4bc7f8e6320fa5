//! What the demo can check because its world knows every answer: the filter's pairs against the truth, and the
//! three claims of the pipeline — the judge learned, the filter's pairs are better than chance, DPO on them made the
//! policy prefer true answers more often.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::judge::Task;
use crate::model::files::read_text;
use crate::pipeline::policy_eval::normalise_answer;
use crate::{Error, Result};

/// The largest pairs file read.
const MAX_PAIRS_BYTES: u64 = 256 << 20;

/// How a set of preference pairs compares with the true answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PairTruth {
    pub pairs: usize,
    /// Pairs with exactly one true answer: the ones the truth ranks.
    pub decisive: usize,
    /// Decisive pairs whose chosen answer is the true one.
    pub chosen_true: usize,
}

impl PairTruth {
    /// The share of decisive pairs that chose the true answer. A pair drawn at random from a prompt's candidates
    /// is as likely to choose either answer, so random pairs agree with the truth half the time.
    pub fn agreement(&self) -> Option<f64> {
        (self.decisive > 0).then(|| self.chosen_true as f64 / self.decisive as f64)
    }
}

/// The fields of an understanding pair the check reads.
#[derive(Deserialize)]
struct PairLine {
    id: String,
    task: String,
    chosen: String,
    rejected: String,
}

/// The pairs of the filter's `pairs` file (understanding pairs) against `answers` (the true answer by prompt id),
/// per task and over all (key `all`); answers compare as the policy evaluation compares them.
pub fn pair_truth(pairs: &Path, answers: &BTreeMap<String, String>) -> Result<BTreeMap<String, PairTruth>> {
    let text = read_text(pairs, MAX_PAIRS_BYTES)?;
    let answers: HashMap<&str, String> = answers.iter().map(|(id, a)| (id.as_str(), normalise_answer(a))).collect();
    let mut truth: BTreeMap<String, PairTruth> = BTreeMap::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let bad = |what: String| Error::InvalidArgument(format!("{} line {}: {what}", pairs.display(), i + 1));
        let pair: PairLine = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let answer = answers.get(pair.id.as_str()).ok_or_else(|| bad(format!("no answer for prompt {:?}", pair.id)))?;
        let task: Task = pair.task.parse().map_err(|e: Error| bad(e.to_string()))?;
        let [chosen, rejected] = [&pair.chosen, &pair.rejected].map(|a| normalise_answer(a) == *answer);
        for key in [task.name().to_string(), "all".into()] {
            let t = truth.entry(key).or_default();
            t.pairs += 1;
            if chosen != rejected {
                t.decisive += 1;
                t.chosen_true += usize::from(chosen);
            }
        }
    }
    Ok(truth)
}

/// The demo's claims, measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DemoChecks {
    /// The jointly trained judge's accuracy on the held-out image-understanding judgments (chance: 0.5).
    pub judge_image_understanding: f64,
    /// The filter's pairs against the truth, over all tasks.
    pub pairs: PairTruth,
    /// The policy's preference accuracy on its held-out questions (log p(true answer) above the wrong one's,
    /// what DPO trains) before and after DPO.
    pub policy_before: f64,
    pub policy_after: f64,
}

/// What each claim must reach: a margin over chance that a judge which learned nothing misses by several standard
/// deviations at the demo's sizes (100 held-out judgments: σ = 0.05; some 60 decisive pairs: σ ≈ 0.065).
const JUDGE_ACCURACY_AT_LEAST: f64 = 0.65;
const PAIR_AGREEMENT_AT_LEAST: f64 = 0.6;
const DECISIVE_PAIRS_AT_LEAST: usize = 20;

/// `value ≥ bound`; a NaN is not.
fn at_least(value: f64, bound: f64) -> bool {
    matches!(value.partial_cmp(&bound), Some(Ordering::Greater | Ordering::Equal))
}

impl DemoChecks {
    /// The claims that do not hold, each a sentence with its figures; empty when all hold.
    pub fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        if !at_least(self.judge_image_understanding, JUDGE_ACCURACY_AT_LEAST) {
            failures.push(format!(
                "the judge's held-out image-understanding accuracy is {:.3}, below {JUDGE_ACCURACY_AT_LEAST}",
                self.judge_image_understanding
            ));
        }
        match self.pairs.agreement() {
            Some(a) if at_least(a, PAIR_AGREEMENT_AT_LEAST) && self.pairs.decisive >= DECISIVE_PAIRS_AT_LEAST => {}
            agreement => failures.push(format!(
                "the filter's pairs chose the true answer in {} of {} decisive pairs ({}), not at least \
                 {PAIR_AGREEMENT_AT_LEAST} of at least {DECISIVE_PAIRS_AT_LEAST}",
                self.pairs.chosen_true,
                self.pairs.decisive,
                agreement.map_or("none".into(), |a| format!("{a:.3}"))
            )),
        }
        if self.policy_after.partial_cmp(&self.policy_before) != Some(Ordering::Greater) {
            failures.push(format!(
                "the policy's held-out preference accuracy went from {:.3} to {:.3}, not up",
                self.policy_before, self.policy_after
            ));
        }
        failures
    }
}
