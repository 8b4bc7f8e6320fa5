//! A stage's record, `<out>/<stage>/record.json`: what the stage was run on — the hashes of its input files (a
//! checkpoint folder: every file in it), its options, and the digest of the stage before it (so a change anywhere
//! upstream reaches every later stage) — and whether it finished. A rerun skips a finished stage whose record is
//! the one it would write, continues an unfinished one, and starts over one whose record differs.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::json_file::{read_json, write_json};
use crate::train::fingerprint::Fingerprint;
use crate::{Error, Result};

pub const RECORD_FILE: &str = "record.json";
const FORMAT: &str = "unireward-pipeline-stage-1";

/// What a stage runs on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageRecord {
    pub format: String,
    pub stage: String,
    /// The digest of the previous stage's record ("" for the first).
    pub upstream: String,
    /// Input name → the hash of its content (hex).
    pub inputs: BTreeMap<String, String>,
    pub options: serde_json::Value,
    /// Set once the stage has finished.
    pub complete: bool,
}

impl StageRecord {
    pub fn new(stage: &str, upstream: &str, options: serde_json::Value) -> StageRecord {
        StageRecord {
            format: FORMAT.into(),
            stage: stage.into(),
            upstream: upstream.into(),
            inputs: BTreeMap::new(),
            options,
            complete: false,
        }
    }

    /// Adds the hash of the file or checkpoint folder at `path` as input `name` (hashed once a run).
    pub fn input(mut self, name: &str, path: &Path, hashes: &mut Hashes) -> Result<StageRecord> {
        self.inputs.insert(name.into(), hashes.of(path)?);
        Ok(self)
    }

    /// The digest of what the stage runs on (its record less `complete`).
    pub fn digest(&self) -> String {
        let plan = StageRecord { complete: false, ..self.clone() };
        let mut f = Fingerprint::default();
        f.bytes(serde_json::to_string(&plan).expect("records serialize").as_bytes());
        format!("{:016x}", f.finish())
    }

    /// The record in `dir`, if one is there (an unreadable one is an error: it is not overwritten unasked).
    pub fn read(dir: &Path) -> Result<Option<StageRecord>> {
        let path = dir.join(RECORD_FILE);
        if !path.exists() {
            return Ok(None);
        }
        read_json(&path).map(Some).map_err(|e| {
            Error::InvalidArgument(format!(
                "not a stage record ({e}); remove the stage's folder or rerun it with --rerun",
            ))
        })
    }

    /// Writes the record into `dir`, atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        write_json(&dir.join(RECORD_FILE), self)
    }
}

/// The hash of a file's content, or of a folder's files (names and contents, sorted by name, not recursing).
pub fn hash_path(path: &Path) -> Result<u64> {
    let mut f = Fingerprint::default();
    if path.is_dir() {
        let io = |e: std::io::Error| Error::InvalidArgument(format!("reading {}: {e}", path.display()));
        let mut names: Vec<_> = std::fs::read_dir(path)
            .map_err(io)?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .map_err(io)?;
        names.sort();
        for file in names.iter().filter(|p| p.is_file()) {
            f.bytes(file.file_name().map_or(&[][..], |n| n.as_encoded_bytes()));
            f.word(hash_path(file)?);
        }
    } else {
        f.file(path)?;
    }
    Ok(f.finish())
}

/// The hashes of a run's input files, each computed once (a checkpoint's weights can be large).
#[derive(Default)]
pub struct Hashes(HashMap<PathBuf, String>);

impl Hashes {
    pub fn of(&mut self, path: &Path) -> Result<String> {
        if let Some(hash) = self.0.get(path) {
            return Ok(hash.clone());
        }
        let hash = format!("{:016x}", hash_path(path)?);
        self.0.insert(path.to_path_buf(), hash.clone());
        Ok(hash)
    }
}
