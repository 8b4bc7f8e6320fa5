//! Reading a generated answer: the verdict of a pairwise judgment or the score of a pointwise one, found anywhere in
//! the text per the template's [`AnswerGrammar`].
//!
//! Matching ignores case, treats any run of whitespace as one space and drops Markdown emphasis (`*`), so
//! "**Final Score:**  7" and "final score:7" read alike. The rules:
//! - **Verdict**: every phrase of the grammar is looked for (a final period of a phrase is optional); the phrase that
//!   starts last wins, since reasoned answers discuss both candidates before concluding (the longer phrase on a tie
//!   of positions). With an answer prefix in the grammar (Think's `<answer>`) only the text after its last occurrence
//!   is read (the whole answer when it never occurs). No phrase found → unparsable.
//! - **Score**: the number right after the *last* occurrence of the score prefix (its colon optional), so with two
//!   numbers ("visual quality: 4 … Final Score: 6", or a revised "Final Score") the final one counts, and a number
//!   after the score ("Final Score: 7 8") is ignored. Numbers are compared as numbers ("10" > "9"); decimals are
//!   kept ("4.5"). "N/D" is accepted when D is the scale's maximum, otherwise a scale mismatch. No prefix, or no
//!   number after it ("Final" alone, "Final Score: N/A") → unparsable, never 0. A score outside the scale is an
//!   error carrying the score.

use std::fmt;

use super::templates::{AnswerGrammar, ScoreGrammar, VerdictGrammar};

/// A pairwise verdict, in the order the candidates were shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    First,
    Second,
    Tie,
}

/// Why an answer gave no verdict or score.
#[derive(Clone, Debug, PartialEq)]
pub enum AnswerError {
    /// Nothing in the answer follows the grammar; says what was looked for.
    Unparsable(String),
    /// A score was read but lies outside the template's scale.
    OutOfScale { score: f64, min: i64, max: i64 },
    /// The answer states its own scale ("7/10") and it is not the template's.
    ScaleMismatch { score: f64, stated_max: f64, max: i64 },
}

impl fmt::Display for AnswerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AnswerError::Unparsable(what) => write!(f, "unparsable answer: {what}"),
            AnswerError::OutOfScale { score, min, max } => {
                write!(f, "score {score} is outside the scale {min}..={max}")
            }
            AnswerError::ScaleMismatch { score, stated_max, max } => {
                write!(f, "score {score}/{stated_max} is on another scale than the template's 0..={max}")
            }
        }
    }
}

impl std::error::Error for AnswerError {}

/// What an answer says: a verdict or a score, per the grammar.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Judgment {
    Verdict(Verdict),
    Score(f64),
}

/// Reads `answer` with `grammar`.
pub fn parse_answer(answer: &str, grammar: &AnswerGrammar) -> Result<Judgment, AnswerError> {
    match grammar {
        AnswerGrammar::Verdict(g) => parse_verdict(answer, g).map(Judgment::Verdict),
        AnswerGrammar::Score(g) => parse_score(answer, g).map(Judgment::Score),
    }
}

/// Lowercase, `*` dropped, whitespace runs as one space, trimmed.
fn normalize(text: &str) -> String {
    let lowered = text.to_lowercase().replace('*', "");
    lowered.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The verdict stated last in `answer`.
pub fn parse_verdict(answer: &str, grammar: &VerdictGrammar) -> Result<Verdict, AnswerError> {
    let text = normalize(answer);
    let prefix = normalize(&grammar.prefix);
    let text = match text.rfind(&prefix) {
        Some(at) if !prefix.is_empty() => &text[at + prefix.len()..],
        _ => text.as_str(),
    };
    let mut best: Option<(usize, usize, Verdict)> = None;
    let options = [(Verdict::First, &grammar.first), (Verdict::Second, &grammar.second), (Verdict::Tie, &grammar.tie)];
    for (verdict, phrases) in options {
        for phrase in phrases {
            let phrase = normalize(phrase);
            let phrase = phrase.trim_end_matches('.');
            if let Some(at) = text.rfind(phrase) {
                if best.is_none_or(|(b_at, b_len, _)| (at, phrase.len()) > (b_at, b_len)) {
                    best = Some((at, phrase.len(), verdict));
                }
            }
        }
    }
    best.map(|(_, _, v)| v).ok_or_else(|| {
        let mut phrases = grammar.first.iter().chain(&grammar.second).chain(&grammar.tie).map(|p| format!("{p:?}"));
        AnswerError::Unparsable(format!(
            "no verdict phrase found (looked for {})",
            phrases.by_ref().collect::<Vec<_>>().join(", ")
        ))
    })
}

/// The score after the last score prefix in `answer`, checked against the scale.
pub fn parse_score(answer: &str, grammar: &ScoreGrammar) -> Result<f64, AnswerError> {
    let text = normalize(answer);
    let prefix = normalize(&grammar.prefix);
    let prefix = prefix.trim_end_matches(':').trim_end();
    let at =
        text.rfind(prefix).ok_or_else(|| AnswerError::Unparsable(format!("no {:?} in the answer", grammar.prefix)))?;
    let rest = text[at + prefix.len()..].trim_start();
    let rest = rest.strip_prefix(':').unwrap_or(rest).trim_start();
    let (score, rest) = leading_number(rest)
        .ok_or_else(|| AnswerError::Unparsable(format!("no number after the last {:?}", grammar.prefix)))?;
    if let Some((stated_max, _)) = rest.trim_start().strip_prefix('/').and_then(|r| leading_number(r.trim_start())) {
        if stated_max != grammar.max as f64 {
            return Err(AnswerError::ScaleMismatch { score, stated_max, max: grammar.max });
        }
    }
    if !(grammar.min as f64..=grammar.max as f64).contains(&score) {
        return Err(AnswerError::OutOfScale { score, min: grammar.min, max: grammar.max });
    }
    Ok(score)
}

/// A number at the start of `text` (`-`? digits, then `.digits`), and what follows it.
fn leading_number(text: &str) -> Option<(f64, &str)> {
    let bytes = text.as_bytes();
    let mut end = usize::from(bytes.first() == Some(&b'-'));
    let digits_start = end;
    while bytes.get(end).is_some_and(u8::is_ascii_digit) {
        end += 1;
    }
    if end == digits_start {
        return None;
    }
    if bytes.get(end) == Some(&b'.') && bytes.get(end + 1).is_some_and(u8::is_ascii_digit) {
        end += 1;
        while bytes.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
    }
    text[..end].parse().ok().map(|n| (n, &text[end..]))
}
