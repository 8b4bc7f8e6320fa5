//! The lines the filter writes: preference pairs, audit records of every judgment, and the run's counts.
//!
//! An understanding pair is a line [`crate::train::data::PairDataset::load_pairs`] reads (`prompt` with one
//! `<image>` / `<video>` per context media file, then the question; `chosen`, `rejected`; `image` or `video`); a
//! generation pair is a [`GenerationPair`] (the caption, the chosen and rejected media). Both carry the prompt's
//! `id` and `index`, the strategy and the evidence of the pick. Floats are written in their shortest round-trip
//! form and NaN as `null`, so that equal runs write equal bytes.

use serde::{Deserialize, Serialize};

use super::candidates::CandidatePrompt;
use super::judgments::{PairJudgment, PointJudgment};
use super::strategy::{Selected, Strategy};
use crate::judge::answer::Verdict;

/// Counts of a run (or of a shard, or of merged shards).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    /// Prompts judged.
    pub prompts: usize,
    /// Pairs written.
    pub pairs: usize,
    /// Judged prompts that yielded no pair.
    pub without_pair: usize,
    /// Pairwise judgments that were ties.
    pub ties: usize,
    /// Judgments with no verdict or score.
    pub unparsable: usize,
    /// Invalid prompts skipped.
    pub skipped: usize,
}

impl Summary {
    pub fn add(&mut self, other: &Summary) {
        self.prompts += other.prompts;
        self.pairs += other.pairs;
        self.without_pair += other.without_pair;
        self.ties += other.ties;
        self.unparsable += other.unparsable;
        self.skipped += other.skipped;
    }
}

/// An understanding pair, in the preference-pair format of the training data.
#[derive(Serialize)]
struct UnderstandingPair<'a> {
    id: &'a str,
    index: usize,
    task: &'static str,
    strategy: &'static str,
    prompt: String,
    chosen: &'a str,
    rejected: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    video: Option<&'a [String]>,
    chosen_index: usize,
    rejected_index: usize,
    chosen_score: Option<f32>,
    rejected_score: Option<f32>,
}

/// A generation pair: two images (or videos) for one caption, the chosen one better. Media paths are as the
/// candidates file wrote them (relative to its media folder).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationPair {
    pub id: String,
    pub index: usize,
    pub task: String,
    pub strategy: String,
    pub caption: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen_image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen_video: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_video: Option<String>,
    pub chosen_index: usize,
    pub rejected_index: usize,
    pub chosen_score: Option<f32>,
    pub rejected_score: Option<f32>,
}

/// The pair line (with its newline) of `pick` in `prompt`.
pub(crate) fn pair_line(prompt: &CandidatePrompt, strategy: Strategy, pick: &Selected) -> String {
    let subject = prompt.context.fields[prompt.subject_field()].clone();
    let (chosen, rejected) = (&prompt.written[pick.chosen], &prompt.written[pick.rejected]);
    let json = if prompt.is_generation() {
        let media = |path: &String, video: bool| (video == prompt.is_video()).then(|| path.clone());
        serde_json::to_string(&GenerationPair {
            id: prompt.id.clone(),
            index: prompt.index,
            task: prompt.task.name().into(),
            strategy: strategy.name().into(),
            caption: subject,
            chosen_image: media(chosen, false),
            rejected_image: media(rejected, false),
            chosen_video: media(chosen, true),
            rejected_video: media(rejected, true),
            chosen_index: pick.chosen,
            rejected_index: pick.rejected,
            chosen_score: pick.chosen_score,
            rejected_score: pick.rejected_score,
        })
    } else {
        let media = prompt.context_media.as_slice();
        serde_json::to_string(&UnderstandingPair {
            id: &prompt.id,
            index: prompt.index,
            task: prompt.task.name(),
            strategy: strategy.name(),
            prompt: prompt.user_text(),
            chosen,
            rejected,
            image: (!prompt.is_video()).then_some(media),
            video: prompt.is_video().then_some(media),
            chosen_index: pick.chosen,
            rejected_index: pick.rejected,
            chosen_score: pick.chosen_score,
            rejected_score: pick.rejected_score,
        })
    };
    json.expect("pair records serialize") + "\n"
}

/// One judgment, for audit: a line of the audit file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    pub id: String,
    pub index: usize,
    /// `pairwise` or `pointwise`.
    pub mode: String,
    /// The candidates judged: two (the first shown first) or one.
    pub candidates: Vec<usize>,
    /// Pairwise: `first`, `second` or `tie`, and the margin of the first over the second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margin: Option<f32>,
    /// Pointwise: the score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// Why the judgment has no verdict or score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unparsable: Option<String>,
    /// NaN is written `null`.
    #[serde(deserialize_with = "nan_for_null")]
    pub probs: Vec<f32>,
    /// A reasoned judgment's text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
}

/// Floats written with NaN as `null`, read back.
fn nan_for_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<f32>, D::Error> {
    let values: Vec<Option<f32>> = Deserialize::deserialize(d)?;
    Ok(values.into_iter().map(|v| v.unwrap_or(f32::NAN)).collect())
}

impl AuditRecord {
    /// The line, with its newline.
    fn line(&self) -> String {
        serde_json::to_string(self).expect("audit records serialize") + "\n"
    }
}

fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::First => "first",
        Verdict::Second => "second",
        Verdict::Tie => "tie",
    }
}

/// The audit line of a pairwise judgment.
pub(crate) fn pair_audit(prompt: &CandidatePrompt, pair: (usize, usize), j: &PairJudgment) -> String {
    AuditRecord {
        id: prompt.id.clone(),
        index: prompt.index,
        mode: "pairwise".into(),
        candidates: vec![pair.0, pair.1],
        verdict: j.verdict.as_ref().ok().map(|v| verdict_name(*v).into()),
        margin: Some(j.margin),
        score: None,
        unparsable: j.verdict.as_ref().err().cloned(),
        probs: j.probs.clone(),
        answer: j.answer.clone(),
    }
    .line()
}

/// The audit line of a pointwise judgment.
pub(crate) fn point_audit(prompt: &CandidatePrompt, candidate: usize, j: &PointJudgment) -> String {
    AuditRecord {
        id: prompt.id.clone(),
        index: prompt.index,
        mode: "pointwise".into(),
        candidates: vec![candidate],
        verdict: None,
        margin: None,
        score: j.score.as_ref().ok().copied(),
        unparsable: j.score.as_ref().err().cloned(),
        probs: j.probs.clone(),
        answer: j.answer.clone(),
    }
    .line()
}
