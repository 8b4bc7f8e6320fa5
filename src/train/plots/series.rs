//! Metric series from a metrics log: JSONL, one object a line, as the trainers write it (`{"step": 3, "loss":
//! 0.52, "lr": 1e-5, "task_loss": [0.4, null]}`; TRL's `rewards/accuracies`; evaluation's `eval/loss`).
//!
//! Every numeric value is a point at the record's `step` (the record's position, from 1, when it has none). A
//! resumed run appends steps it had already logged before it was killed: the last value logged for a step is the
//! one kept, and each series is in step order.
//! Arrays and objects are flattened into `key/index` and `key/field` series. `null`, `NaN` and `±Infinity` (the
//! Python `json` module's tokens, or such strings) are non-finite points: gaps in the plotted line, counted per
//! series. A key absent from a record is simply not a point there. Strings that are not numbers and booleans are
//! not metrics. A last line cut short (a run killed while writing) is skipped and flagged; any other line that is
//! not a JSON object is an error naming it.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Map, Value};

use crate::model::files::read_text;
use crate::{Error, Result};

/// The largest metrics log read (a million steps of a few dozen metrics each).
pub const MAX_METRICS_BYTES: u64 = 256 << 20;
/// The most series one log may hold, after flattening.
pub const MAX_SERIES: usize = 512;
/// How deep arrays and objects are flattened; deeper values are not metrics.
const MAX_DEPTH: usize = 4;
/// The record key read as the x coordinate.
const STEP_KEY: &str = "step";

/// One metric over the run.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// The flattened key: `loss`, `task_loss/0`, `rewards/accuracies`, `eval/loss`.
    pub name: String,
    /// `(step, value)` in file order; a non-finite value (NaN) breaks the line there.
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// How many of the points are not finite (`null`, NaN, ±Infinity in the log).
    pub fn gaps(&self) -> usize {
        self.points.iter().filter(|(_, v)| !v.is_finite()).count()
    }

    /// The plot this series belongs to, a file-name-safe word: `loss` for `loss`, `*_loss` and `task_loss/*`;
    /// otherwise the key's first `/` component (`rewards` for `rewards/margins`); `eval/` keys join the family of
    /// the key they evaluate, so evaluation and training curves share a plot.
    pub fn family(&self) -> String {
        let base = self.name.strip_prefix("eval/").unwrap_or(&self.name);
        let first = base.split('/').next().unwrap_or(base);
        let family = if first == "loss" || first == "task_loss" || first.ends_with("_loss") { "loss" } else { first };
        family.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
    }
}

/// A parsed metrics log.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsLog {
    /// In order of first appearance.
    pub series: Vec<Series>,
    /// Records read (non-blank lines, less a cut last line).
    pub records: usize,
    /// The last line was not complete JSON and had no newline: skipped.
    pub cut_last_line: bool,
}

/// Reads and parses the metrics log at `path` (at most [`MAX_METRICS_BYTES`]).
pub fn read_metrics(path: &Path) -> Result<MetricsLog> {
    let text = read_text(path, MAX_METRICS_BYTES)?;
    parse_metrics(&text).map_err(naming(path))
}

/// An error about the content of the file at `path`, with the path in front of its message.
pub(super) fn naming(path: &Path) -> impl Fn(Error) -> Error + '_ {
    move |e| match e {
        Error::InvalidArgument(m) => Error::InvalidArgument(format!("{}: {m}", path.display())),
        other => other,
    }
}

/// Parses a metrics log's text; see the module's documentation for what counts as a point.
pub fn parse_metrics(text: &str) -> Result<MetricsLog> {
    let mut log = MetricsLog::default();
    let mut positions: HashMap<String, usize> = HashMap::new();
    let lines: Vec<&str> = text.split('\n').collect();
    for (index, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record = match parse_record(line) {
            Ok(record) => record,
            // No newline after it: the writer was stopped mid-line.
            Err(_) if index + 1 == lines.len() => {
                log.cut_last_line = true;
                break;
            }
            Err(message) => return Err(Error::InvalidArgument(format!("line {}: {message}", index + 1))),
        };
        log.records += 1;
        let step = match record.get(STEP_KEY).and_then(number) {
            Some(step) if step.is_finite() => step,
            _ => log.records as f64,
        };
        let mut values = Vec::new();
        for (key, value) in record.iter().filter(|(key, _)| *key != STEP_KEY) {
            flatten(key.clone(), value, 0, &mut values);
        }
        for (name, value) in values {
            let position = match positions.get(&name) {
                Some(&position) => position,
                None if log.series.len() == MAX_SERIES => {
                    return Err(Error::InvalidArgument(format!(
                        "line {}: more than {MAX_SERIES} metric keys (`{name}` is one too many)",
                        index + 1
                    )))
                }
                None => {
                    positions.insert(name.clone(), log.series.len());
                    log.series.push(Series { name, points: Vec::new() });
                    log.series.len() - 1
                }
            };
            log.series[position].points.push((step, value));
        }
    }
    if log.records == 0 {
        return Err(Error::InvalidArgument("no metrics records".into()));
    }
    for series in &mut log.series {
        keep_latest_per_step(&mut series.points);
    }
    Ok(log)
}

/// `points` sorted by step, with only the last value logged at each step.
fn keep_latest_per_step(points: &mut Vec<(f64, f64)>) {
    // Stable: the values of one step stay in file order, the last written last.
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut kept: Vec<(f64, f64)> = Vec::with_capacity(points.len());
    for point in points.drain(..) {
        match kept.last_mut() {
            Some(last) if last.0 == point.0 => *last = point,
            _ => kept.push(point),
        }
    }
    *points = kept;
}

/// A line as a JSON object; Python's `NaN` / `Infinity` tokens are read as the strings they spell.
fn parse_record(line: &str) -> std::result::Result<Map<String, Value>, String> {
    let value = match serde_json::from_str::<Value>(line) {
        Ok(value) => value,
        Err(first) => {
            serde_json::from_str(&quote_non_finite_tokens(line)).map_err(|_| format!("not JSON ({first})"))?
        }
    };
    match value {
        Value::Object(map) => Ok(map),
        _ => Err("a metrics record is a JSON object".into()),
    }
}

/// `line` with every `NaN`, `Infinity` and `-Infinity` outside strings put in quotes.
fn quote_non_finite_tokens(line: &str) -> String {
    let mut out = String::with_capacity(line.len() + 8);
    let (mut in_string, mut escaped) = (false, false);
    let mut rest = line;
    while let Some(c) = rest.chars().next() {
        if !in_string {
            if let Some(token) = ["NaN", "-Infinity", "Infinity"].into_iter().find(|t| rest.starts_with(t)) {
                out.push('"');
                out.push_str(token);
                out.push('"');
                rest = &rest[token.len()..];
                continue;
            }
        }
        match c {
            _ if escaped => escaped = false,
            '\\' if in_string => escaped = true,
            '"' => in_string = !in_string,
            _ => {}
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// A value as a point: numbers, `null` (NaN) and strings that spell a number; anything else is not a metric.
fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::Null => Some(f64::NAN),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn flatten(name: String, value: &Value, depth: usize, out: &mut Vec<(String, f64)>) {
    match value {
        Value::Array(items) if depth < MAX_DEPTH => {
            for (i, item) in items.iter().enumerate() {
                flatten(format!("{name}/{i}"), item, depth + 1, out);
            }
        }
        Value::Object(fields) if depth < MAX_DEPTH => {
            for (key, item) in fields {
                flatten(format!("{name}/{key}"), item, depth + 1, out);
            }
        }
        _ => {
            if let Some(v) = number(value) {
                out.push((name, v));
            }
        }
    }
}
