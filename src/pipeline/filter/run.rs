//! A filter run: every prompt of the shard checked, then judged in order, its audit and pair lines appended and a
//! progress record written after each (see the `progress` module); a resumed run continues after the last record, so
//! that a run killed at any point and resumed writes the same bytes as one never stopped.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};

use super::candidates::{refuse_invalid, CandidateFile, CandidatePrompt, InvalidPrompt};
use super::judgments::Judgments;
use super::progress::{Header, OutputPaths, Outputs, FORMAT};
use super::records::{pair_audit, pair_line, point_audit, Summary};
use super::strategy::Strategy;
use crate::judge::answer::Verdict;
use crate::{Error, Result};

/// Shard `index` of `count`: the prompts whose index is `index` modulo `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// The whole file.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    pub fn contains(&self, prompt_index: usize) -> bool {
        prompt_index % self.count == self.index
    }
}

/// Parses `i/n` with `0 ≤ i < n`.
impl FromStr for Shard {
    type Err = Error;
    fn from_str(s: &str) -> Result<Shard> {
        let bad = || Error::InvalidArgument(format!("--shard `{s}`: expected i/n with 0 <= i < n, as 0/4"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

/// What invalid prompts do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InvalidPolicy {
    /// The run fails before writing anything, listing them.
    #[default]
    Refuse,
    /// They are left out and counted as skipped.
    Skip,
}

/// A run's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterOptions {
    pub strategy: Strategy,
    pub shard: Shard,
    /// Continue the run whose files these are.
    pub resume: bool,
    pub invalid: InvalidPolicy,
    /// The pairs file (its progress file is `<pairs>.progress`) and the audit file.
    pub pairs: PathBuf,
    pub audit: PathBuf,
    /// Names the judge and how it is asked; a resumed run must give the same.
    pub judge: String,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterOutcome {
    /// Counts over the whole shard, earlier runs of a resumed one included.
    pub summary: Summary,
    /// The shard's invalid prompts (skipped).
    pub invalid: Vec<InvalidPrompt>,
    /// The shard's valid prompts, and how many were done before this run started.
    pub total: usize,
    pub resumed_from: usize,
    /// Stopped by the stop flag before the last prompt.
    pub interrupted: bool,
}

/// Runs the filter over `file`'s prompts of `options.shard` with `judgments`. Every prompt is checked before any
/// output is written. `stop` is read before each prompt (set it to end the run after the prompt being judged);
/// `on_prompt(done, total, summary)` follows each finished prompt.
pub fn run_filter(
    file: &CandidateFile,
    judgments: &dyn Judgments,
    options: &FilterOptions,
    stop: &AtomicBool,
    mut on_prompt: impl FnMut(usize, usize, &Summary),
) -> Result<FilterOutcome> {
    let shard = options.shard;
    if shard.index >= shard.count {
        return Err(Error::InvalidArgument(format!(
            "shard {}/{}: the index must be below the count",
            shard.index, shard.count
        )));
    }
    let mut invalid: Vec<InvalidPrompt> = file.invalid.iter().filter(|p| shard.contains(p.index)).cloned().collect();
    let mut prompts: Vec<&CandidatePrompt> = Vec::new();
    for prompt in file.prompts.iter().filter(|p| shard.contains(p.index)) {
        match judgments.check(prompt, options.strategy.modes()) {
            Ok(()) => prompts.push(prompt),
            Err(e) => {
                let reason = match e {
                    Error::InvalidArgument(m) => m,
                    other => other.to_string(),
                };
                invalid.push(InvalidPrompt { index: prompt.index, line: prompt.line, reason })
            }
        }
    }
    invalid.sort_by_key(|p| p.index);
    if !invalid.is_empty() && options.invalid == InvalidPolicy::Refuse {
        return Err(refuse_invalid(&file.path, &invalid, " (skip them with --skip-invalid)"));
    }
    let header = Header {
        format: FORMAT.into(),
        candidates: format!("{:016x}", file.fingerprint),
        records: file.records,
        strategy: options.strategy.name().into(),
        judge: options.judge.clone(),
        shard: [shard.index, shard.count],
    };
    let paths = OutputPaths { pairs: options.pairs.clone(), audit: options.audit.clone() };
    let (mut outputs, last) =
        if options.resume { Outputs::resume(paths, &header)? } else { (Outputs::create(paths, &header)?, None) };
    let next = last.map_or(0, |p| p.next);
    let mut summary = last.map_or(Summary { skipped: invalid.len(), ..Summary::default() }, |p| p.summary);
    let resumed_from = prompts.iter().filter(|p| p.index < next).count();
    let mut outcome = FilterOutcome { summary, invalid, total: prompts.len(), resumed_from, interrupted: false };
    let mut written = next;
    for (done, prompt) in prompts.iter().enumerate().skip(resumed_from) {
        if stop.load(Ordering::SeqCst) {
            outcome.interrupted = true;
            break;
        }
        let (audit, pairs) = filter_prompt(prompt, judgments, options.strategy, &mut summary)?;
        written = prompt.index + 1;
        outputs.append_prompt(&audit, &pairs, written, summary)?;
        on_prompt(done + 1, prompts.len(), &summary);
    }
    // The record that says the shard is finished (its last prompts may be another shard's or invalid).
    if !outcome.interrupted && written < file.records {
        outputs.append_prompt("", "", file.records, summary)?;
    }
    outcome.summary = summary;
    Ok(outcome)
}

/// Judges one prompt: its audit lines and pair lines, with the counts added to `summary`.
fn filter_prompt(
    prompt: &CandidatePrompt,
    judgments: &dyn Judgments,
    strategy: Strategy,
    summary: &mut Summary,
) -> Result<(String, String)> {
    let k = prompt.candidates.len();
    let in_prompt = |e: Error| match e {
        Error::InvalidArgument(m) => {
            Error::InvalidArgument(format!("prompt {:?} (line {}): {m}", prompt.id, prompt.line))
        }
        other => other,
    };
    let pairs = strategy.pairs(k);
    let pair_judgments =
        if pairs.is_empty() { Vec::new() } else { judgments.pairwise(prompt, &pairs).map_err(in_prompt)? };
    let all: Vec<usize> = (0..k).collect();
    let point_judgments =
        if strategy.scores() { judgments.pointwise(prompt, &all).map_err(in_prompt)? } else { Vec::new() };
    if pair_judgments.len() != pairs.len() || point_judgments.len() != if strategy.scores() { k } else { 0 } {
        return Err(Error::InvalidArgument(format!(
            "prompt {:?}: the judge answered {} of {} pairs and {} of {k} scores",
            prompt.id,
            pair_judgments.len(),
            pairs.len(),
            point_judgments.len()
        )));
    }
    let mut audit = String::new();
    for (&pair, j) in pairs.iter().zip(&pair_judgments) {
        audit += &pair_audit(prompt, pair, j);
        summary.ties += usize::from(j.verdict == Ok(Verdict::Tie));
        summary.unparsable += usize::from(j.verdict.is_err());
    }
    for (c, j) in point_judgments.iter().enumerate() {
        audit += &point_audit(prompt, c, j);
        summary.unparsable += usize::from(j.score.is_err());
    }
    let margins: Vec<f32> = pair_judgments.iter().map(|j| j.margin).collect();
    let scores: Vec<f32> = point_judgments.iter().map(|j| j.score.as_ref().map_or(f32::NAN, |&s| s as f32)).collect();
    let selected = strategy.select(k, &pairs, &margins, &scores)?;
    let lines: String = selected.iter().map(|pick| pair_line(prompt, strategy, pick)).collect();
    summary.prompts += 1;
    summary.pairs += selected.len();
    summary.without_pair += usize::from(selected.is_empty());
    Ok((audit, lines))
}
