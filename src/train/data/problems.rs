//! Bad records: what is wrong with a line of a data file, and whether a load skips it or stops.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use crate::{Error, Result};

/// What a load does with a bad record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BadRecordPolicy {
    /// Leave it out, and list it in the [`DataReport`].
    #[default]
    Skip,
    /// Stop the load with an error naming the file, the line and the reason.
    Refuse,
}

/// Why a record cannot be trained on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The line is not a JSON object.
    Unparsable(String),
    /// A field is missing or has the wrong type or value.
    Invalid(String),
    /// A media file named by the record does not exist (the path as resolved against the media folder).
    MissingMedia(PathBuf),
    /// A media file that cannot be decoded or preprocessed (corrupt, empty, an unsupported format).
    UnreadableMedia { path: PathBuf, reason: String },
    /// The conversation has no assistant (`gpt`) turn after its first user turn: nothing to learn.
    NoAssistantTurn,
    /// More tokens than the maximum length (placeholders counted as one token each).
    TooLong { tokens: usize, max: usize },
    /// The text's placeholders do not match the record's media.
    PlaceholderMismatch { placeholder: &'static str, found: usize, media: usize },
}

impl Problem {
    /// A short name of the kind of problem, for counts (`"too long"`, `"missing media"`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Problem::Unparsable(_) => "unparsable",
            Problem::Invalid(_) => "invalid",
            Problem::MissingMedia(_) => "missing media",
            Problem::UnreadableMedia { .. } => "unreadable media",
            Problem::NoAssistantTurn => "no assistant turn",
            Problem::TooLong { .. } => "too long",
            Problem::PlaceholderMismatch { .. } => "placeholder mismatch",
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Unparsable(e) => write!(f, "not a JSON object: {e}"),
            Problem::Invalid(e) => write!(f, "{e}"),
            Problem::MissingMedia(path) => write!(f, "media file {} does not exist", path.display()),
            Problem::UnreadableMedia { path, reason } => {
                write!(f, "media file {} cannot be read: {reason}", path.display())
            }
            Problem::NoAssistantTurn => write!(f, "no assistant (`gpt`) turn to learn from"),
            Problem::TooLong { tokens, max } => write!(f, "{tokens} tokens, more than the maximum length {max}"),
            Problem::PlaceholderMismatch { placeholder, found, media } => {
                write!(f, "{found} `{placeholder}` placeholder(s) in the text for {media} media item(s)")
            }
        }
    }
}

/// A record left out of a load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRecord {
    pub file: PathBuf,
    /// 1-based line number.
    pub line: usize,
    pub problem: Problem,
}

impl fmt::Display for BadRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} line {}: {}", self.file.display(), self.line, self.problem)
    }
}

/// What a load read, kept and left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataReport {
    /// Non-blank lines read.
    pub records: usize,
    /// Records kept, per task (indexed as the dataset's `tasks`).
    pub kept_per_task: Vec<usize>,
    /// Records left out, in file and line order.
    pub bad: Vec<BadRecord>,
}

impl DataReport {
    /// Records kept in all.
    pub fn kept(&self) -> usize {
        self.kept_per_task.iter().sum()
    }

    /// How many records were left out for each kind of problem ([`Problem::kind`]).
    pub fn bad_per_kind(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for bad in &self.bad {
            *counts.entry(bad.problem.kind()).or_insert(0) += 1;
        }
        counts
    }

    /// Records `policy` lets through: a bad one under [`BadRecordPolicy::Refuse`] is an error naming it.
    pub(crate) fn record_bad(&mut self, policy: BadRecordPolicy, bad: BadRecord) -> Result<()> {
        match policy {
            BadRecordPolicy::Skip => {
                self.bad.push(bad);
                Ok(())
            }
            BadRecordPolicy::Refuse => {
                Err(Error::InvalidArgument(format!("bad record (refused by the bad-record policy): {bad}")))
            }
        }
    }
}
