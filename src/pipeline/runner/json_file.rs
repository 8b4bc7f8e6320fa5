//! The stages' JSON files (records, summaries, evaluations): written whole or not at all (a temporary file synced
//! and renamed into place), so a run killed while writing one leaves the old file or none, never a torn one.

use std::io::Write;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::model::files::read_text;
use crate::{Error, Result};

/// The largest JSON file of a stage read back.
const MAX_JSON_BYTES: u64 = 1 << 26;

/// Writes `value` as pretty JSON at `path`, atomically.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let io = |e: std::io::Error| Error::InvalidArgument(format!("writing {}: {e}", path.display()));
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::InvalidArgument(e.to_string()))? + "\n";
    let mut file = std::fs::File::create(&tmp).map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Reads the JSON file at `path` as a `T`; what it is not is an error naming the file.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    serde_json::from_str(&read_text(path, MAX_JSON_BYTES)?)
        .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))
}
