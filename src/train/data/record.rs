//! One line of a data file, parsed: a LLaVA conversation (`conversations` of `{"from", "value"}` turns, or
//! `{"role", "content"}`) or a preference pair (`prompt`, `chosen`, `rejected`), each with optional `image` / `video`
//! fields (a path or a list of paths, relative to the media folder) and an optional task field.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::problems::Problem;
use crate::judge::ChatMessage;

/// The text that stands for one image in a conversation.
pub const IMAGE_PLACEHOLDER: &str = "<image>";
/// The text that stands for one video.
pub const VIDEO_PLACEHOLDER: &str = "<video>";

/// What a media file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MediaKind {
    Image,
    Video,
}

/// A media file of a record: images first, then videos, each in the record's order (the order in which the model
/// fills the placeholders of each kind).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaRef {
    pub kind: MediaKind,
    /// Resolved against the media folder; checked to exist when the record was read.
    pub path: PathBuf,
}

/// A conversation record: the turns as chat messages (LLaVA's `human` / `gpt` mapped to `user` / `assistant`).
pub(crate) struct ConversationRecord {
    pub task: Option<String>,
    pub media: Vec<MediaRef>,
    pub turns: Vec<ChatMessage>,
}

/// A preference-pair record.
pub(crate) struct PairRecord {
    pub task: Option<String>,
    pub media: Vec<MediaRef>,
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    /// TRL's optional `margin` column (the reward trainer's Bradley–Terry margin).
    pub margin: Option<f32>,
}

/// A ranked-list record: K ≥ 2 responses to one prompt, listed best first.
pub(crate) struct RankingRecord {
    pub task: Option<String>,
    pub media: Vec<MediaRef>,
    pub prompt: String,
    pub responses: Vec<String>,
}

/// The most responses a ranked-list record may hold.
pub const MAX_RESPONSES: usize = 64;

fn object(line: &str) -> Result<Map<String, Value>, Problem> {
    match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(Problem::Unparsable(format!("a JSON {} instead of an object", kind_of(&other)))),
        Err(e) => Err(Problem::Unparsable(e.to_string())),
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn string_field(map: &Map<String, Value>, field: &str) -> Result<String, Problem> {
    match map.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(Problem::Invalid(format!("`{field}` is a {} instead of a string", kind_of(other)))),
        None => Err(Problem::Invalid(format!("no `{field}` field"))),
    }
}

fn task(map: &Map<String, Value>, task_field: &str) -> Result<Option<String>, Problem> {
    map.get(task_field).filter(|v| !v.is_null()).map(|_| string_field(map, task_field)).transpose()
}

/// The media of `field` (`image` or `video`): a path or a list of paths, each resolved against `folder` and
/// required to exist.
fn media_field(
    map: &Map<String, Value>,
    field: &str,
    kind: MediaKind,
    folder: &Path,
) -> Result<Vec<MediaRef>, Problem> {
    let paths: Vec<&str> = match map.get(field) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(path)) => vec![path],
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().ok_or_else(|| Problem::Invalid(format!("`{field}` lists a non-string item"))))
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(Problem::Invalid(format!("`{field}` is a {} instead of a path or a list", kind_of(other))))
        }
    };
    paths
        .into_iter()
        .map(|p| {
            let path = folder.join(p);
            if path.exists() {
                Ok(MediaRef { kind, path })
            } else {
                Err(Problem::MissingMedia(path))
            }
        })
        .collect()
}

fn media(map: &Map<String, Value>, folder: &Path) -> Result<Vec<MediaRef>, Problem> {
    let mut all = media_field(map, "image", MediaKind::Image, folder)?;
    all.extend(media_field(map, "video", MediaKind::Video, folder)?);
    Ok(all)
}

/// LLaVA's speaker names as chat roles (`human` → `user`, `gpt` → `assistant`; others kept, as LLaVA-NeXT does).
fn role(from: &str) -> String {
    match from {
        "human" => "user".into(),
        "gpt" => "assistant".into(),
        other => other.into(),
    }
}

fn turn(value: &Value, index: usize) -> Result<ChatMessage, Problem> {
    let map =
        value.as_object().ok_or_else(|| Problem::Invalid(format!("conversation turn {index} is not an object")))?;
    let pick = |a: &str, b: &str| -> Result<String, Problem> {
        string_field(map, a)
            .or_else(|_| string_field(map, b))
            .map_err(|_| Problem::Invalid(format!("conversation turn {index} has no string `{a}` (or `{b}`) field")))
    };
    Ok(ChatMessage::new(role(&pick("from", "role")?), pick("value", "content")?))
}

/// Parses a conversation line; `task_field` names the record's task field.
pub(crate) fn conversation(line: &str, folder: &Path, task_field: &str) -> Result<ConversationRecord, Problem> {
    let map = object(line)?;
    let turns = match map.get("conversations") {
        Some(Value::Array(turns)) => turns.iter().enumerate().map(|(i, t)| turn(t, i)).collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(Problem::Invalid(format!("`conversations` is a {} instead of a list", kind_of(other))))
        }
        None => return Err(Problem::Invalid("no `conversations` field".into())),
    };
    let media = media(&map, folder)?;
    Ok(ConversationRecord { task: task(&map, task_field)?, media, turns })
}

/// A completion's text, refused when empty (or all whitespace): there is nothing of it to prefer or learn, only
/// the template's end marker.
fn completion(text: String, name: &str) -> Result<String, Problem> {
    match text.trim().is_empty() {
        true => Err(Problem::Invalid(format!("`{name}` is empty"))),
        false => Ok(text),
    }
}

/// The optional finite number in `field`.
fn number_field(map: &Map<String, Value>, field: &str) -> Result<Option<f32>, Problem> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_f64().map(|v| v as f32).filter(|v| v.is_finite()) {
            Some(v) => Ok(Some(v)),
            None => Err(Problem::Invalid(format!("`{field}` is {n}, not a finite f32"))),
        },
        Some(other) => Err(Problem::Invalid(format!("`{field}` is a {} instead of a number", kind_of(other)))),
    }
}

/// Parses a preference-pair line (empty completions refused, an optional numeric `margin`).
pub(crate) fn pair(line: &str, folder: &Path, task_field: &str) -> Result<PairRecord, Problem> {
    let map = object(line)?;
    Ok(PairRecord {
        task: task(&map, task_field)?,
        prompt: string_field(&map, "prompt")?,
        chosen: completion(string_field(&map, "chosen")?, "chosen")?,
        rejected: completion(string_field(&map, "rejected")?, "rejected")?,
        margin: number_field(&map, "margin")?,
        media: media(&map, folder)?,
    })
}

/// Parses a ranked-list line: `prompt` and `responses`, a list of 2 to [`MAX_RESPONSES`] non-empty strings, best
/// first.
pub(crate) fn ranking(line: &str, folder: &Path, task_field: &str) -> Result<RankingRecord, Problem> {
    let map = object(line)?;
    let responses = match map.get("responses") {
        Some(Value::Array(items)) if (2..=MAX_RESPONSES).contains(&items.len()) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(text) => completion(text.clone(), &format!("responses[{i}]")),
                other => Err(Problem::Invalid(format!("`responses[{i}]` is a {} instead of a string", kind_of(other)))),
            })
            .collect::<Result<_, _>>()?,
        Some(Value::Array(items)) => {
            return Err(Problem::Invalid(format!(
                "`responses` lists {} responses: a ranking needs 2 to {MAX_RESPONSES}",
                items.len()
            )))
        }
        Some(other) => return Err(Problem::Invalid(format!("`responses` is a {} instead of a list", kind_of(other)))),
        None => return Err(Problem::Invalid("no `responses` field".into())),
    };
    Ok(RankingRecord {
        task: task(&map, task_field)?,
        prompt: string_field(&map, "prompt")?,
        responses,
        media: media(&map, folder)?,
    })
}

/// Checks that the texts' placeholders match the media, one `<image>` per image and one `<video>` per video. A
/// video record written as LLaVA-NeXT writes them (videos only, `<image>` for each) gets its `<image>`
/// placeholders turned into `<video>` ones, which the model fills with video features.
pub(crate) fn match_placeholders(texts: &mut [&mut String], media: &[MediaRef]) -> Result<(), Problem> {
    let count = |texts: &[&mut String], p: &str| texts.iter().map(|t| t.matches(p).count()).sum::<usize>();
    let images = media.iter().filter(|m| m.kind == MediaKind::Image).count();
    let videos = media.len() - images;
    let (found_images, found_videos) = (count(texts, IMAGE_PLACEHOLDER), count(texts, VIDEO_PLACEHOLDER));
    if images == 0 && videos > 0 && found_videos == 0 && found_images == videos {
        for text in texts.iter_mut() {
            **text = text.replace(IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER);
        }
        return Ok(());
    }
    if found_images != images {
        return Err(Problem::PlaceholderMismatch {
            placeholder: IMAGE_PLACEHOLDER,
            found: found_images,
            media: images,
        });
    }
    if found_videos != videos {
        return Err(Problem::PlaceholderMismatch {
            placeholder: VIDEO_PLACEHOLDER,
            found: found_videos,
            media: videos,
        });
    }
    Ok(())
}
