//! The output files of a run and its progress file, `<out>.progress`: a header line naming what the run is (the
//! candidates file's fingerprint, strategy, judge, shard), then one line per finished prompt with the lengths of the
//! pairs and audit files at that point and the counts so far. A prompt's pairs and audit lines are flushed to disk
//! before its progress line, and the progress line before the next prompt starts, so the last complete progress
//! line always describes complete outputs: a resume truncates whatever lies beyond it (a half-written prompt, a
//! half-written progress line) and continues after it.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::records::Summary;
use crate::pipeline::append::{
    append_synced, io_error, open_rw, refuse_existing, require_existing, sync_folder_of, truncate_to,
};
use crate::{Error, Result};

/// The progress file's format name.
pub const FORMAT: &str = "unireward-filter-progress/1";
/// The largest progress file read (one short line per prompt).
const MAX_PROGRESS_BYTES: u64 = 1 << 30;

/// What a run is: a resume or a merge must find the same.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub format: String,
    /// FNV-1a 64 of the candidates file, in hex.
    pub candidates: String,
    /// Prompts in the candidates file.
    pub records: usize,
    pub strategy: String,
    /// How the judge was asked (its folder, one-pass or reasoned), as the caller names it.
    pub judge: String,
    /// `[i, n]`: shard i of n.
    pub shard: [usize; 2],
}

/// The state after a prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Progress {
    /// The index of the next prompt to judge (every prompt of the shard before it is done).
    pub next: usize,
    pub pairs_bytes: u64,
    pub audit_bytes: u64,
    pub summary: Summary,
}

/// Where a run writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputPaths {
    pub pairs: PathBuf,
    pub audit: PathBuf,
}

impl OutputPaths {
    /// `<pairs>.progress`.
    pub fn progress(&self) -> PathBuf {
        let mut name = self.pairs.as_os_str().to_owned();
        name.push(".progress");
        PathBuf::from(name)
    }
}

fn corrupt(path: &Path, what: String) -> Error {
    Error::Checkpoint(format!("corrupt filter progress file {}: {what}", path.display()))
}

/// A progress file as read: its header (`None` when a run was killed before writing it whole), the last complete
/// record, and the byte length of its complete lines.
pub struct Recorded {
    pub header: Option<Header>,
    pub last: Option<Progress>,
    complete_bytes: u64,
}

/// Reads a progress file; a final line without its newline (a write cut short) is ignored.
pub fn read_progress(path: &Path) -> Result<Recorded> {
    let text = crate::model::files::read_text(path, MAX_PROGRESS_BYTES)?;
    let complete = text.rfind('\n').map_or(0, |at| at + 1);
    let mut lines = text[..complete].lines().enumerate();
    let Some((_, first)) = lines.next() else {
        return Ok(Recorded { header: None, last: None, complete_bytes: 0 });
    };
    let header: Header = serde_json::from_str(first).map_err(|e| corrupt(path, format!("line 1: {e}")))?;
    if header.format != FORMAT {
        return Err(corrupt(path, format!("line 1: format {:?}, expected {FORMAT:?}", header.format)));
    }
    if header.shard[0] >= header.shard[1] {
        return Err(corrupt(path, format!("line 1: shard {}/{}", header.shard[0], header.shard[1])));
    }
    let mut last: Option<Progress> = None;
    for (i, line) in lines {
        let record: Progress = serde_json::from_str(line).map_err(|e| corrupt(path, format!("line {}: {e}", i + 1)))?;
        if let Some(before) = last {
            if record.next <= before.next
                || record.pairs_bytes < before.pairs_bytes
                || record.audit_bytes < before.audit_bytes
            {
                return Err(corrupt(path, format!("line {}: goes back from the line before", i + 1)));
            }
        }
        last = Some(record);
    }
    Ok(Recorded { header: Some(header), last, complete_bytes: complete as u64 })
}

/// The open output files of a run.
pub struct Outputs {
    pub paths: OutputPaths,
    pairs: File,
    audit: File,
    progress: File,
    pairs_bytes: u64,
    audit_bytes: u64,
}

fn file_len(path: &Path) -> Result<u64> {
    std::fs::metadata(path).map(|m| m.len()).map_err(|e| io_error("inspect", path, e))
}

impl Outputs {
    /// New output files (none may exist) with the header written.
    pub fn create(paths: OutputPaths, header: &Header) -> Result<Outputs> {
        for path in [&paths.pairs, &paths.audit, &paths.progress()] {
            refuse_existing(path)?;
        }
        let progress_path = paths.progress();
        let mut outputs = Outputs {
            pairs: open_rw(&paths.pairs, true)?,
            audit: open_rw(&paths.audit, true)?,
            progress: open_rw(&progress_path, true)?,
            paths,
            pairs_bytes: 0,
            audit_bytes: 0,
        };
        outputs.append_progress_line(&serde_json::to_string(header).expect("headers serialize"))?;
        sync_folder_of(&outputs.paths.pairs)?;
        Ok(outputs)
    }

    /// The files of an earlier run with the same `header`, cut back to its last progress record; returns them and
    /// that record (`None`: no prompt was finished).
    pub fn resume(paths: OutputPaths, header: &Header) -> Result<(Outputs, Option<Progress>)> {
        let progress_path = paths.progress();
        require_existing(&progress_path)?;
        let recorded = read_progress(&progress_path)?;
        let header_text = serde_json::to_string(header).expect("headers serialize");
        match &recorded.header {
            // Killed while creating the files: nothing was judged yet, the header is written again below.
            None => {}
            Some(found) if found == header => {}
            Some(found) => {
                return Err(Error::InvalidArgument(format!(
                    "--resume: {} belongs to another run ({}), not this one ({header_text})",
                    progress_path.display(),
                    serde_json::to_string(found).expect("headers serialize"),
                )))
            }
        }
        let (pairs_bytes, audit_bytes) = recorded.last.map_or((0, 0), |p| (p.pairs_bytes, p.audit_bytes));
        for (path, recorded_len) in [(&paths.pairs, pairs_bytes), (&paths.audit, audit_bytes)] {
            let len = file_len(path)?;
            if len < recorded_len || (recorded.header.is_none() && len > 0) {
                return Err(corrupt(
                    &progress_path,
                    format!("{} has {len} bytes, but the progress file records {recorded_len}", path.display()),
                ));
            }
        }
        let mut outputs = Outputs {
            pairs: open_rw(&paths.pairs, false)?,
            audit: open_rw(&paths.audit, false)?,
            progress: open_rw(&progress_path, false)?,
            paths,
            pairs_bytes,
            audit_bytes,
        };
        truncate_to(&mut outputs.pairs, pairs_bytes, &outputs.paths.pairs)?;
        truncate_to(&mut outputs.audit, audit_bytes, &outputs.paths.audit)?;
        truncate_to(&mut outputs.progress, recorded.complete_bytes, &progress_path)?;
        if recorded.header.is_none() {
            outputs.append_progress_line(&header_text)?;
        }
        Ok((outputs, recorded.last))
    }

    fn append_progress_line(&mut self, line: &str) -> Result<()> {
        append_synced(&mut self.progress, &format!("{line}\n"), &self.paths.progress())
    }

    /// Appends one finished prompt: its audit and pair lines, flushed to disk, then its progress record (`next`
    /// the index after it), flushed.
    pub fn append_prompt(&mut self, audit: &str, pairs: &str, next: usize, summary: Summary) -> Result<()> {
        for (file, text, path, len) in [
            (&mut self.audit, audit, &self.paths.audit, &mut self.audit_bytes),
            (&mut self.pairs, pairs, &self.paths.pairs, &mut self.pairs_bytes),
        ] {
            append_synced(file, text, path)?;
            *len += text.len() as u64;
        }
        let record = Progress { next, pairs_bytes: self.pairs_bytes, audit_bytes: self.audit_bytes, summary };
        self.append_progress_line(&serde_json::to_string(&record).expect("progress records serialize"))
    }
}
