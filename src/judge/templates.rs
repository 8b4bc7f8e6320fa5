//! UnifiedReward's task templates as data: the prompt of each task × mode (instruction text, the fields a caller
//! fills, where the images or video frames go) and the answer grammar the checkpoint was trained to answer in.
//!
//! The built-in templates are the files in `templates/` at the repository root (one per task × mode, each naming
//! the released script it was read from), embedded at build time; a user's own file in the same JSON schema
//! replaces one ([`TaskTemplate::from_file`]). In the instruction, `{name}` is a field the caller fills, `{frames}`
//! (video templates only) is where every frame placeholder goes, and `{{` / `}}` are literal braces. Field values
//! are inserted verbatim, never read as placeholders themselves.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::Deserialize;

use super::chat_template::ChatTemplate;
use super::tokenizer::ChatMessage;
use crate::{Error, Result};

/// What is judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    ImageGeneration,
    ImageUnderstanding,
    VideoGeneration,
    VideoUnderstanding,
}

/// How it is judged: which of two candidates is better, or one candidate's score.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Pairwise,
    Pointwise,
}

impl Task {
    pub const ALL: [Task; 4] =
        [Task::ImageGeneration, Task::ImageUnderstanding, Task::VideoGeneration, Task::VideoUnderstanding];
    pub fn name(self) -> &'static str {
        match self {
            Task::ImageGeneration => "image_generation",
            Task::ImageUnderstanding => "image_understanding",
            Task::VideoGeneration => "video_generation",
            Task::VideoUnderstanding => "video_understanding",
        }
    }
}

impl Mode {
    pub const ALL: [Mode; 2] = [Mode::Pairwise, Mode::Pointwise];
    pub fn name(self) -> &'static str {
        match self {
            Mode::Pairwise => "pairwise",
            Mode::Pointwise => "pointwise",
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which released checkpoint family a built-in template belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Variant {
    /// UnifiedReward (`inference_llava/`): every task, pairwise and pointwise.
    UnifiedReward,
    /// UnifiedReward-Think (`UnifiedReward-Think/inference_llava/`): pairwise only, reasoning in `<think>`, the
    /// verdict in `<answer>`.
    Think,
    /// The embedded demo's judge (`templates/demo/`): every task, pairwise and pointwise, with the released fields
    /// and verdict phrases in instructions of a few dozen tokens.
    Demo,
}

/// Accepts `image_generation` and the command line's `image-generation`.
impl FromStr for Task {
    type Err = Error;
    fn from_str(s: &str) -> Result<Task> {
        let wanted = s.trim().replace('-', "_");
        Task::ALL.into_iter().find(|t| t.name() == wanted).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "unknown task `{s}`; expected one of image-generation, image-understanding, video-generation, \
                 video-understanding"
            ))
        })
    }
}

impl FromStr for Mode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Mode> {
        Mode::ALL
            .into_iter()
            .find(|m| m.name() == s.trim())
            .ok_or_else(|| Error::InvalidArgument(format!("unknown mode `{s}`; expected pairwise or pointwise")))
    }
}

/// Where a template was read from.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    #[serde(default)]
    pub repo: String,
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub commit: String,
    /// The conversation format the script applies around the instruction.
    #[serde(default)]
    pub conversation: String,
}

/// The media a template takes, and how they appear in the text.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum MediaSpec {
    /// `count` images, each an `<image>` written in the instruction text itself.
    Image { count: usize },
    /// `count` videos, given as frames: `{frames}` expands to `frame_placeholder` once per frame of every video, in
    /// order (the released scripts decode `frames_per_video` frames and give each its own `<image>`).
    Video { count: usize, frame_placeholder: String, frames_per_video: usize },
}

/// The media of one request: how many images, or how many frames each video has.
#[derive(Clone, Copy, Debug)]
pub enum MediaInput<'a> {
    Images(usize),
    Videos(&'a [usize]),
}

/// How a pairwise answer states its verdict: phrases that mean "the first candidate is better", "the second is
/// better", "they tie" (the first phrase of each is the canonical one), after an optional fixed answer prefix.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerdictGrammar {
    #[serde(default)]
    pub prefix: String,
    pub first: Vec<String>,
    pub second: Vec<String>,
    #[serde(default)]
    pub tie: Vec<String>,
}

/// How a pointwise answer states its score: a whole number in `min..=max` after `prefix` ("Final Score:").
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreGrammar {
    pub prefix: String,
    pub min: i64,
    pub max: i64,
}

/// The answer grammar of a template: verdicts for pairwise, a score for pointwise.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AnswerGrammar {
    Verdict(VerdictGrammar),
    Score(ScoreGrammar),
}

/// One piece of a parsed instruction.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(String),
    Frames,
}

/// One task × mode template, validated when loaded.
#[derive(Clone, Debug)]
pub struct TaskTemplate {
    pub task: Task,
    pub mode: Mode,
    pub source: Source,
    pub note: String,
    pub media: MediaSpec,
    pub instruction: String,
    pub answer: AnswerGrammar,
    pieces: Vec<Piece>,
    fields: Vec<String>,
}

/// The file schema; [`TaskTemplate`] is this after validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateFile {
    task: Task,
    mode: Mode,
    #[serde(default)]
    source: Source,
    #[serde(default)]
    note: String,
    media: MediaSpec,
    instruction: String,
    answer: AnswerGrammar,
}

/// The image placeholder of LLaVA's conversation format.
pub const IMAGE_PLACEHOLDER: &str = "<image>";

/// The folder of a checkpoint whose templates replace the built-in ones ([`TaskTemplate::from_checkpoint_dir`]).
pub const CHECKPOINT_TEMPLATES: &str = "judge_templates";

/// Bounds a user's template file before reading it.
const MAX_TEMPLATE_BYTES: u64 = 1 << 20;

/// The text of a built-in template (the files in `templates/`), if that variant released one.
fn built_in_text(variant: Variant, task: Task, mode: Mode) -> Option<&'static str> {
    use {Mode::*, Task::*, Variant::*};
    Some(match (variant, task, mode) {
        (UnifiedReward, ImageGeneration, Pairwise) => include_str!("../../templates/image_generation.pairwise.json"),
        (UnifiedReward, ImageGeneration, Pointwise) => include_str!("../../templates/image_generation.pointwise.json"),
        (UnifiedReward, ImageUnderstanding, Pairwise) => {
            include_str!("../../templates/image_understanding.pairwise.json")
        }
        (UnifiedReward, ImageUnderstanding, Pointwise) => {
            include_str!("../../templates/image_understanding.pointwise.json")
        }
        (UnifiedReward, VideoGeneration, Pairwise) => include_str!("../../templates/video_generation.pairwise.json"),
        (UnifiedReward, VideoGeneration, Pointwise) => include_str!("../../templates/video_generation.pointwise.json"),
        (UnifiedReward, VideoUnderstanding, Pairwise) => {
            include_str!("../../templates/video_understanding.pairwise.json")
        }
        (UnifiedReward, VideoUnderstanding, Pointwise) => {
            include_str!("../../templates/video_understanding.pointwise.json")
        }
        (Think, ImageGeneration, Pairwise) => include_str!("../../templates/think/image_generation.pairwise.json"),
        (Think, ImageUnderstanding, Pairwise) => {
            include_str!("../../templates/think/image_understanding.pairwise.json")
        }
        (Think, VideoGeneration, Pairwise) => include_str!("../../templates/think/video_generation.pairwise.json"),
        (Think, VideoUnderstanding, Pairwise) => {
            include_str!("../../templates/think/video_understanding.pairwise.json")
        }
        (Think, _, Pointwise) => return None,
        (Demo, ImageGeneration, Pairwise) => include_str!("../../templates/demo/image_generation.pairwise.json"),
        (Demo, ImageGeneration, Pointwise) => include_str!("../../templates/demo/image_generation.pointwise.json"),
        (Demo, ImageUnderstanding, Pairwise) => include_str!("../../templates/demo/image_understanding.pairwise.json"),
        (Demo, ImageUnderstanding, Pointwise) => {
            include_str!("../../templates/demo/image_understanding.pointwise.json")
        }
        (Demo, VideoGeneration, Pairwise) => include_str!("../../templates/demo/video_generation.pairwise.json"),
        (Demo, VideoGeneration, Pointwise) => include_str!("../../templates/demo/video_generation.pointwise.json"),
        (Demo, VideoUnderstanding, Pairwise) => include_str!("../../templates/demo/video_understanding.pairwise.json"),
        (Demo, VideoUnderstanding, Pointwise) => {
            include_str!("../../templates/demo/video_understanding.pointwise.json")
        }
    })
}

impl TaskTemplate {
    /// The built-in template of `task` × `mode` (UnifiedReward's released format).
    pub fn built_in(task: Task, mode: Mode) -> Result<TaskTemplate> {
        TaskTemplate::built_in_variant(Variant::UnifiedReward, task, mode)
    }

    /// The built-in template of a checkpoint family; an error where that family released none (Think: pointwise).
    pub fn built_in_variant(variant: Variant, task: Task, mode: Mode) -> Result<TaskTemplate> {
        let text = TaskTemplate::built_in_file(variant, task, mode)?;
        TaskTemplate::from_json(text, &format!("built-in {variant:?} template {task}.{mode}"))
    }

    /// The JSON file of a built-in template, as `templates/` holds it (to copy into a checkpoint's
    /// [`CHECKPOINT_TEMPLATES`]).
    pub fn built_in_file(variant: Variant, task: Task, mode: Mode) -> Result<&'static str> {
        built_in_text(variant, task, mode)
            .ok_or_else(|| Error::InvalidArgument(format!("{variant:?} has no released {mode} template for {task}")))
    }

    /// The templates a checkpoint carries in [`CHECKPOINT_TEMPLATES`] (`*.json` files of the schema of
    /// `templates/`, read in name order), which replace the built-in ones for their task and mode; none when the
    /// folder is absent. Two files for one task and mode are refused.
    pub fn from_checkpoint_dir(dir: &Path) -> Result<Vec<TaskTemplate>> {
        let folder = dir.join(CHECKPOINT_TEMPLATES);
        if !folder.is_dir() {
            return Ok(Vec::new());
        }
        let listing =
            std::fs::read_dir(&folder).map_err(|e| Error::Checkpoint(format!("reading {}: {e}", folder.display())))?;
        let mut paths = Vec::new();
        for entry in listing {
            let path = entry.map_err(|e| Error::Checkpoint(format!("reading {}: {e}", folder.display())))?.path();
            if path.extension().is_some_and(|e| e == "json") {
                paths.push(path);
            }
        }
        paths.sort();
        let mut templates: Vec<TaskTemplate> = Vec::with_capacity(paths.len());
        for path in paths {
            let template = TaskTemplate::from_file(&path)?;
            if templates.iter().any(|t| (t.task, t.mode) == (template.task, template.mode)) {
                return Err(Error::Checkpoint(format!(
                    "{} holds two templates for {}.{} ({} is the second)",
                    folder.display(),
                    template.task,
                    template.mode,
                    path.display()
                )));
            }
            templates.push(template);
        }
        Ok(templates)
    }

    /// A user's template file (the JSON schema of `templates/`), validated.
    pub fn from_file(path: &Path) -> Result<TaskTemplate> {
        let origin = format!("template file {}", path.display());
        let len = std::fs::metadata(path).map_err(|e| Error::InvalidArgument(format!("{origin}: {e}")))?.len();
        if len > MAX_TEMPLATE_BYTES {
            return Err(Error::InvalidArgument(format!(
                "{origin}: {len} bytes, more than the {MAX_TEMPLATE_BYTES} allowed"
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::InvalidArgument(format!("{origin}: {e}")))?;
        TaskTemplate::from_json(&text, &origin)
    }

    /// Parses and validates a template; `origin` names it in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<TaskTemplate> {
        let file: TemplateFile =
            serde_json::from_str(text).map_err(|e| Error::InvalidArgument(format!("{origin}: {e}")))?;
        let bad = |what: String| Error::InvalidArgument(format!("{origin}: {what}"));
        let pieces = parse_instruction(&file.instruction).map_err(bad)?;
        let frames_slots = pieces.iter().filter(|p| **p == Piece::Frames).count();
        let image_slots: usize =
            pieces.iter().map(|p| if let Piece::Text(t) = p { t.matches(IMAGE_PLACEHOLDER).count() } else { 0 }).sum();
        match &file.media {
            MediaSpec::Image { count } => {
                if frames_slots != 0 {
                    return Err(bad("`{frames}` in an image template (media.kind is image)".into()));
                }
                if image_slots != *count {
                    return Err(bad(format!(
                        "the instruction has {image_slots} `{IMAGE_PLACEHOLDER}` but media.count is {count}"
                    )));
                }
            }
            MediaSpec::Video { frame_placeholder, frames_per_video, .. } => {
                if frames_slots != 1 {
                    return Err(bad(format!("a video template needs `{{frames}}` once, found {frames_slots}")));
                }
                if frame_placeholder.is_empty() || *frames_per_video == 0 {
                    return Err(bad("media.frame_placeholder and media.frames_per_video must not be empty".into()));
                }
            }
        }
        if matches!(&file.media, MediaSpec::Image { count: 0 } | MediaSpec::Video { count: 0, .. }) {
            return Err(bad("media.count must be at least 1".into()));
        }
        match (&file.answer, file.mode) {
            (AnswerGrammar::Verdict(v), Mode::Pairwise) => {
                let phrases = v.first.iter().chain(&v.second).chain(&v.tie);
                if v.first.is_empty() || v.second.is_empty() || phrases.clone().any(|p| p.trim().is_empty()) {
                    return Err(bad("answer.verdict needs non-empty phrases for `first` and `second`".into()));
                }
            }
            (AnswerGrammar::Score(s), Mode::Pointwise) => {
                if s.prefix.trim().is_empty() || s.min >= s.max {
                    return Err(bad(format!(
                        "answer.score needs a prefix and min < max (got prefix {:?}, {}..={})",
                        s.prefix, s.min, s.max
                    )));
                }
            }
            (_, mode) => {
                return Err(bad(format!(
                    "a {mode} template needs answer.{}",
                    if mode == Mode::Pairwise { "verdict" } else { "score" }
                )));
            }
        }
        let mut fields: Vec<String> = Vec::new();
        for piece in &pieces {
            if let Piece::Field(name) = piece {
                if !fields.contains(name) {
                    fields.push(name.clone());
                }
            }
        }
        Ok(TaskTemplate {
            task: file.task,
            mode: file.mode,
            source: file.source,
            note: file.note,
            media: file.media,
            instruction: file.instruction,
            answer: file.answer,
            pieces,
            fields,
        })
    }

    /// The fields a caller fills, in order of first appearance.
    pub fn fields(&self) -> &[String] {
        &self.fields
    }

    fn name(&self) -> String {
        format!("{}.{}", self.task, self.mode)
    }

    /// The filled instruction (the user turn): every field given exactly once, the media matching the template.
    pub fn render_instruction(&self, fields: &BTreeMap<String, String>, media: MediaInput<'_>) -> Result<String> {
        let name = self.name();
        if let Some(unknown) = fields.keys().find(|k| !self.fields.contains(k)) {
            return Err(Error::InvalidArgument(format!(
                "template {name} has no field `{unknown}` (its fields: {})",
                self.fields.join(", ")
            )));
        }
        if let Some(missing) = self.fields.iter().find(|f| !fields.contains_key(*f)) {
            return Err(Error::InvalidArgument(format!(
                "template {name} needs field `{missing}`, which was not given"
            )));
        }
        let frames = self.frames_text(media)?;
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Field(f) => out.push_str(&fields[f]),
                Piece::Frames => out.push_str(&frames),
            }
        }
        Ok(out)
    }

    /// The whole prompt: the instruction as the one user turn, in `chat`'s template, with the generation prompt.
    pub fn render_prompt(
        &self,
        chat: &ChatTemplate,
        fields: &BTreeMap<String, String>,
        media: MediaInput<'_>,
    ) -> Result<String> {
        let instruction = self.render_instruction(fields, media)?;
        chat.render(&[ChatMessage::user(instruction)], true)
    }

    /// Checks the media against the template; the text `{frames}` becomes (empty for image templates).
    fn frames_text(&self, media: MediaInput<'_>) -> Result<String> {
        let name = self.name();
        match (&self.media, media) {
            (MediaSpec::Image { count }, MediaInput::Images(n)) if n == *count => Ok(String::new()),
            (MediaSpec::Image { count }, MediaInput::Images(n)) => {
                Err(Error::InvalidArgument(format!("template {name} takes {count} image(s), {n} given")))
            }
            (MediaSpec::Video { count, frame_placeholder, .. }, MediaInput::Videos(frames)) => {
                if frames.len() != *count {
                    return Err(Error::InvalidArgument(format!(
                        "template {name} takes {count} video(s), {} given",
                        frames.len()
                    )));
                }
                if let Some(i) = frames.iter().position(|&f| f == 0) {
                    return Err(Error::InvalidArgument(format!("template {name}: video {} has no frames", i + 1)));
                }
                Ok(frame_placeholder.repeat(frames.iter().sum()))
            }
            (MediaSpec::Image { .. }, MediaInput::Videos(_)) => {
                Err(Error::InvalidArgument(format!("template {name} takes images, videos given")))
            }
            (MediaSpec::Video { .. }, MediaInput::Images(_)) => {
                Err(Error::InvalidArgument(format!("template {name} takes videos, images given")))
            }
        }
    }
}

/// Splits an instruction into text, `{field}` and `{frames}`; `{{` and `}}` are literal braces.
fn parse_instruction(instruction: &str) -> std::result::Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = instruction.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            '{' if chars.peek().is_some_and(|&(_, n)| n == '{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek().is_some_and(|&(_, n)| n == '}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let rest = &instruction[at + 1..];
                let end = rest.find('}').ok_or(format!("unclosed `{{` at byte {at} of the instruction"))?;
                let name = &rest[..end];
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!("bad field name `{{{name}}}` in the instruction (letters, digits and _ only)"));
                }
                for _ in 0..=end {
                    chars.next();
                }
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(if name == "frames" { Piece::Frames } else { Piece::Field(name.to_string()) });
            }
            '}' => return Err(format!("lone `}}` at byte {at} of the instruction (write `}}}}` for a brace)")),
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instruction_parsing_handles_escapes_fields_and_errors() {
        let pieces = parse_instruction("a {{b}} {c}{frames}é").unwrap();
        assert_eq!(
            pieces,
            vec![Piece::Text("a {b} ".into()), Piece::Field("c".into()), Piece::Frames, Piece::Text("é".into())]
        );
        assert!(parse_instruction("x {open").unwrap_err().contains("unclosed"));
        assert!(parse_instruction("x } y").unwrap_err().contains("lone"));
        assert!(parse_instruction("{a b}").unwrap_err().contains("bad field name"));
    }
}
