//! [`Judgments`] by a loaded [`Judge`]: one-pass by default (a prompt's judgments scored in one batch, sharing
//! the prefix of the prompt's media and question), or reasoned (each answer generated and parsed).
//!
//! One-pass: the verdict is the judge's debiased most probable class and the score its expected score. Reasoned:
//! the verdict or score is what the generated answer states (unparsable when it states none, or a score off the
//! scale), and the probabilities are the one-pass ones of the final verdict given the reasoning.

use std::path::{Path, PathBuf};

use super::candidates::CandidatePrompt;
use super::judgments::{Judgments, PairJudgment, PointJudgment};
use crate::judge::answer::Judgment;
use crate::judge::{GenerationConfig, Judge, JudgeRequest, JudgeResult, Mode};
use crate::runtime::{DType, Device};
use crate::Result;

/// A judge answering the filter's questions.
pub struct JudgeJudgments<'a> {
    pub judge: &'a Judge,
    /// `Some`: reasoned judgments generated with this configuration.
    pub reasoned: Option<GenerationConfig>,
    /// One-pass judgments scored per model batch (bounds memory: round-robin over K = 256 asks 32,640 pairs); at
    /// least 1. The same for a run and its resumption, so that both batch a prompt alike.
    pub batch: usize,
}

impl JudgeJudgments<'_> {
    /// What a filter's outputs depend on besides the candidates and the strategy (its progress header's `judge`): the
    /// judge checkpoint `dir`, the mode, the batch, dtype and device — a resume must ask the same judge the same way.
    pub fn label(&self, dir: &Path, dtype: DType, device: Device) -> String {
        let mode = match &self.reasoned {
            Some(cfg) => format!("reasoned max_new_tokens={}", cfg.max_new_tokens),
            None => "one-pass".into(),
        };
        format!("{} {mode} batch={} {dtype:?} {device:?}", dir.display(), self.batch)
    }
}

/// `<pairs>.audit.jsonl`: the default audit file beside a pairs file.
pub fn default_audit(pairs: &Path) -> PathBuf {
    let mut name = pairs.as_os_str().to_owned();
    name.push(".audit.jsonl");
    PathBuf::from(name)
}

fn request(prompt: &CandidatePrompt, mode: Mode, candidates: &[usize]) -> JudgeRequest {
    JudgeRequest {
        task: prompt.task,
        mode,
        context: prompt.context.clone(),
        candidates: candidates.iter().map(|&c| prompt.candidates[c].clone()).collect(),
    }
}

/// ln P(first) − ln P(second) of a pairwise result's probabilities.
fn log_odds(probs: &[f32]) -> f32 {
    match probs {
        [first, second, ..] => first.ln() - second.ln(),
        _ => f32::NAN,
    }
}

impl JudgeJudgments<'_> {
    fn results(&self, requests: &[JudgeRequest]) -> Result<Vec<JudgeResult>> {
        match &self.reasoned {
            None => {
                let mut results = Vec::with_capacity(requests.len());
                for chunk in requests.chunks(self.batch.max(1)) {
                    results.extend(self.judge.judge_many(chunk)?.results);
                }
                Ok(results)
            }
            Some(cfg) => requests.iter().map(|r| self.judge.reasoned(r, cfg)).collect(),
        }
    }
}

/// What a reasoned answer states, or why it states nothing usable.
fn stated(result: &JudgeResult) -> Option<(std::result::Result<Judgment, String>, String)> {
    result.reasoning.as_ref().map(|r| (r.parsed.clone().map_err(|e| e.to_string()), r.text.clone()))
}

impl Judgments for JudgeJudgments<'_> {
    fn check(&self, prompt: &CandidatePrompt, modes: &[Mode]) -> Result<()> {
        for &mode in modes {
            let shown: &[usize] = if mode == Mode::Pairwise { &[0, 1] } else { &[0] };
            self.judge.check(&request(prompt, mode, shown))?;
        }
        Ok(())
    }

    fn pairwise(&self, prompt: &CandidatePrompt, pairs: &[(usize, usize)]) -> Result<Vec<PairJudgment>> {
        let requests: Vec<JudgeRequest> =
            pairs.iter().map(|&(a, b)| request(prompt, Mode::Pairwise, &[a, b])).collect();
        let results = self.results(&requests)?;
        Ok(results
            .into_iter()
            .map(|r| {
                let (verdict, answer) = match stated(&r) {
                    Some((Ok(Judgment::Verdict(v)), text)) => (Ok(v), Some(text)),
                    Some((Ok(Judgment::Score(s)), text)) => {
                        (Err(format!("a score ({s}) instead of a verdict")), Some(text))
                    }
                    Some((Err(e), text)) => (Err(e), Some(text)),
                    None => (r.verdict.ok_or_else(|| "the judge gave no verdict".to_string()), None),
                };
                PairJudgment::new(verdict, log_odds(&r.probs), r.probs, answer)
            })
            .collect())
    }

    fn pointwise(&self, prompt: &CandidatePrompt, candidates: &[usize]) -> Result<Vec<PointJudgment>> {
        let requests: Vec<JudgeRequest> = candidates.iter().map(|&c| request(prompt, Mode::Pointwise, &[c])).collect();
        let results = self.results(&requests)?;
        Ok(results
            .into_iter()
            .map(|r| {
                let (score, answer) = match stated(&r) {
                    Some((Ok(Judgment::Score(s)), text)) => (Ok(s), Some(text)),
                    Some((Ok(Judgment::Verdict(v)), text)) => {
                        (Err(format!("a verdict ({v:?}) instead of a score")), Some(text))
                    }
                    Some((Err(e), text)) => (Err(e), Some(text)),
                    None => match r.score {
                        Some(s) if s.is_finite() => (Ok(f64::from(s)), None),
                        other => (Err(format!("the judge gave no finite score ({other:?})")), None),
                    },
                };
                PointJudgment { score, probs: r.probs, answer }
            })
            .collect())
    }
}
