//! The candidates file: one prompt a line,
//!
//! ```text
//! {"id": "q1", "task": "image_understanding", "context": {"question": "…", "image": "cat.png"},
//!  "candidates": ["response 1", "response 2", …]}
//! {"id": "c1", "task": "image_generation", "context": {"caption": "…"}, "candidates": ["c1_0.png", "c1_1.png", …]}
//! ```
//!
//! `task` is a judge task name (`image_generation` or `image-generation`, …). `context` holds the template's text
//! fields (`caption` for generation tasks, `question` for understanding tasks) and, for understanding tasks, the
//! `image` or `video` asked about (a path or a list of paths). `candidates` are K ≥ 2 response texts (understanding)
//! or media paths (generation). Paths are relative to the media folder. Every line is checked before anything is
//! judged; a bad line becomes an [`InvalidPrompt`] naming its line and what is wrong.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::judge::{Candidate, Context, MediaFile, Task};
use crate::model::files::read_text;
use crate::train::data::{IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER};
use crate::Result;

/// The most candidates a prompt may have (round-robin judges K(K−1)/2 pairs).
pub const MAX_CANDIDATES: usize = 256;
/// The largest candidates file read.
pub const MAX_CANDIDATES_BYTES: u64 = 1 << 30;

/// One prompt and its candidates, checked: paths resolved against the media folder and found to exist.
#[derive(Clone, Debug, PartialEq)]
pub struct CandidatePrompt {
    /// Position among the file's prompts (its non-blank lines), from 0: shards split by it, outputs are in its order.
    pub index: usize,
    /// 1-based line in the file.
    pub line: usize,
    pub id: String,
    pub task: Task,
    /// The template's fields, and the context media (understanding tasks) with resolved paths.
    pub context: Context,
    /// The context media as written in the file (what the pairs file repeats).
    pub context_media: Vec<String>,
    /// As written: response texts, or media paths.
    pub written: Vec<String>,
    /// The candidates as the judge takes them (media paths resolved).
    pub candidates: Vec<Candidate>,
}

impl CandidatePrompt {
    /// Whether the candidates are media (generation tasks) rather than response texts.
    pub fn is_generation(&self) -> bool {
        is_generation(self.task)
    }

    /// Whether the task's media are videos.
    pub fn is_video(&self) -> bool {
        matches!(self.task, Task::VideoGeneration | Task::VideoUnderstanding)
    }

    /// The text field the task is about: `caption` (generation) or `question` (understanding).
    pub fn subject_field(&self) -> &'static str {
        subject_field(self.task)
    }

    /// An understanding prompt's user turn as a policy sees it and the preference pairs write it: one `<image>` /
    /// `<video>` line per context media file, then the question.
    pub fn user_text(&self) -> String {
        let placeholder = if self.is_video() { VIDEO_PLACEHOLDER } else { IMAGE_PLACEHOLDER };
        let subject = &self.context.fields[self.subject_field()];
        format!("{}{subject}", format!("{placeholder}\n").repeat(self.context_media.len()))
    }
}

/// A prompt that cannot be judged, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidPrompt {
    pub index: usize,
    pub line: usize,
    pub reason: String,
}

/// A whole candidates file, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct CandidateFile {
    pub path: PathBuf,
    /// The valid prompts, in file order.
    pub prompts: Vec<CandidatePrompt>,
    /// The prompts refused, in file order.
    pub invalid: Vec<InvalidPrompt>,
    /// Prompts in the file (valid and invalid).
    pub records: usize,
    /// FNV-1a 64 of the file's bytes: a resumed run must read the same file.
    pub fingerprint: u64,
}

/// One line as written (a prompts file's lines have no `candidates`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    id: String,
    task: String,
    context: BTreeMap<String, Value>,
    #[serde(default)]
    candidates: Option<Vec<String>>,
}

/// What a file's lines list.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// K ≥ 2 candidates per prompt, to judge.
    Candidates,
    /// Understanding prompts alone, for a policy to answer.
    Prompts,
}

fn is_generation(task: Task) -> bool {
    matches!(task, Task::ImageGeneration | Task::VideoGeneration)
}

fn subject_field(task: Task) -> &'static str {
    if is_generation(task) {
        "caption"
    } else {
        "question"
    }
}

/// The most invalid prompts an error lists.
const LISTED_PROBLEMS: usize = 10;

/// The error refusing a file for its `invalid` prompts (the first few listed by line); `hint` says how to go on.
pub(crate) fn refuse_invalid(path: &Path, invalid: &[InvalidPrompt], hint: &str) -> crate::Error {
    let listed: Vec<String> = invalid
        .iter()
        .take(LISTED_PROBLEMS)
        .map(|p| format!("{} line {}: {}", path.display(), p.line, p.reason))
        .collect();
    crate::Error::InvalidArgument(format!(
        "{} invalid prompts{hint}: {}{}",
        invalid.len(),
        listed.join("; "),
        if invalid.len() > LISTED_PROBLEMS { "; …" } else { "" }
    ))
}

/// FNV-1a, 64 bits.
pub(crate) fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Reads and checks every line of `path`; media paths are relative to `media_folder`. Only an unreadable file is an
/// error: bad lines are returned in [`CandidateFile::invalid`].
pub fn read_candidates(path: &Path, media_folder: &Path) -> Result<CandidateFile> {
    read_lines(path, media_folder, Kind::Candidates)
}

/// Reads and checks a prompts file: the candidates file's lines without `candidates`, understanding tasks only (a
/// policy answers their question about their image or video); the prompts' candidate lists are empty. Errors as
/// [`read_candidates`].
pub fn read_prompts(path: &Path, media_folder: &Path) -> Result<CandidateFile> {
    read_lines(path, media_folder, Kind::Prompts)
}

fn read_lines(path: &Path, media_folder: &Path, kind: Kind) -> Result<CandidateFile> {
    let text = read_text(path, MAX_CANDIDATES_BYTES)?;
    let mut file = CandidateFile {
        path: path.to_path_buf(),
        prompts: Vec::new(),
        invalid: Vec::new(),
        records: 0,
        fingerprint: fingerprint(text.as_bytes()),
    };
    let mut ids: HashMap<String, usize> = HashMap::new();
    for (i, raw) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let (index, line) = (file.records, i + 1);
        file.records += 1;
        let parsed = serde_json::from_str::<Line>(raw)
            .map_err(|e| e.to_string())
            .and_then(|l| prompt(l, index, line, media_folder, kind));
        let parsed = parsed.and_then(|p| match ids.insert(p.id.clone(), line) {
            Some(first) => Err(format!("`id` {:?} repeats line {first}'s", p.id)),
            None => Ok(p),
        });
        match parsed {
            Ok(p) => file.prompts.push(p),
            Err(reason) => file.invalid.push(InvalidPrompt { index, line, reason }),
        }
    }
    Ok(file)
}

/// A prompts file's line from its parts, checked as [`read_prompts`] checks it (understanding tasks, media paths
/// resolved against `folder` and found): for files whose lines carry more than a prompt (a policy's held-out
/// questions with their answers).
pub(crate) fn understanding_prompt(
    id: String,
    task: String,
    context: BTreeMap<String, Value>,
    index: usize,
    line: usize,
    folder: &Path,
) -> std::result::Result<CandidatePrompt, String> {
    prompt(Line { id, task, context, candidates: None }, index, line, folder, Kind::Prompts)
}

/// A media file of `task`'s kind at `written` under `folder`, required to exist.
fn media(task: Task, written: &str, folder: &Path, what: &str) -> std::result::Result<MediaFile, String> {
    let path = folder.join(written);
    if !path.exists() {
        return Err(format!("{what}: media file {} does not exist", path.display()));
    }
    Ok(match task {
        Task::ImageGeneration | Task::ImageUnderstanding => MediaFile::Image(path),
        Task::VideoGeneration | Task::VideoUnderstanding => MediaFile::Video(path),
    })
}

fn paths(value: &Value, key: &str) -> std::result::Result<Vec<String>, String> {
    let bad = || format!("`context.{key}` must be a path or a list of paths");
    match value {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) => items.iter().map(|v| v.as_str().map(str::to_string).ok_or_else(bad)).collect(),
        _ => Err(bad()),
    }
}

fn prompt(
    line: Line,
    index: usize,
    line_no: usize,
    folder: &Path,
    kind: Kind,
) -> std::result::Result<CandidatePrompt, String> {
    let task: Task = line.task.parse().map_err(|e: crate::Error| format!("`task`: {e}"))?;
    let generation = is_generation(task);
    let written = match (kind, line.candidates) {
        (Kind::Candidates, None) => return Err("`candidates` is missing".into()),
        (Kind::Candidates, Some(c)) if !(2..=MAX_CANDIDATES).contains(&c.len()) => {
            return Err(format!("`candidates` has {}; a prompt needs between 2 and {MAX_CANDIDATES}", c.len()))
        }
        (Kind::Candidates, Some(c)) => c,
        (Kind::Prompts, Some(_)) => {
            return Err("`candidates`: a prompts file lists none (the policy makes them)".into())
        }
        (Kind::Prompts, None) if generation => {
            return Err(format!(
                "`task`: {task} is a generation task; a policy here answers questions (image or video \
                 understanding), a generator's candidates go in a candidates file"
            ))
        }
        (Kind::Prompts, None) => Vec::new(),
    };
    let media_key = if matches!(task, Task::VideoGeneration | Task::VideoUnderstanding) { "video" } else { "image" };
    let mut context = Context::default();
    let mut context_media = Vec::new();
    for (key, value) in &line.context {
        if key == "image" || key == "video" {
            if generation {
                return Err(format!("`context.{key}`: {task} judges the candidates' media, the context has none"));
            }
            if key != media_key {
                return Err(format!("`context.{key}`: {task} is about a {media_key}"));
            }
            for written in paths(value, key)? {
                context.media.push(media(task, &written, folder, &format!("`context.{key}`"))?);
                context_media.push(written);
            }
        } else {
            let text = value.as_str().ok_or_else(|| format!("`context.{key}` must be a string"))?;
            context.fields.insert(key.clone(), text.to_string());
        }
    }
    let subject = subject_field(task);
    if !context.fields.contains_key(subject) {
        return Err(format!("`context.{subject}` is missing ({task} needs it)"));
    }
    if !generation && context.media.is_empty() {
        return Err(format!("`context.{media_key}` is missing (the {media_key} the question is about)"));
    }
    let candidates = if generation {
        let resolve = |(i, c): (usize, &String)| media(task, c, folder, &format!("`candidates[{i}]`"));
        written
            .iter()
            .enumerate()
            .map(resolve)
            .map(|m| m.map(Candidate::Media))
            .collect::<std::result::Result<_, _>>()?
    } else {
        written.iter().map(|c| Candidate::Text(c.clone())).collect()
    };
    Ok(CandidatePrompt { index, line: line_no, id: line.id, task, context, context_media, written, candidates })
}
