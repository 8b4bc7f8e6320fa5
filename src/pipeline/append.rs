//! Output files that grow one record at a time and survive a kill: each append is flushed to disk before the run
//! goes on, a new file's name is flushed with its folder, and a resumed run cuts whatever a kill left half-written
//! (a line without its newline) before it continues. The filter's files and the sampler's and `eval`'s outputs use
//! them.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

pub(crate) fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::InvalidArgument(format!("cannot {what} {}: {e}", path.display()))
}

/// Refuses to start a new run over the files of an earlier one.
pub(crate) fn refuse_existing(path: &Path) -> Result<()> {
    if path.exists() {
        return Err(Error::InvalidArgument(format!(
            "{} exists: pass --resume to continue that run, or remove it",
            path.display()
        )));
    }
    Ok(())
}

/// Refuses to resume a run that left no file.
pub(crate) fn require_existing(path: &Path) -> Result<()> {
    if !path.exists() {
        return Err(Error::InvalidArgument(format!(
            "--resume: {} does not exist (no run to continue; run without --resume)",
            path.display()
        )));
    }
    Ok(())
}

pub(crate) fn open_rw(path: &Path, create_new: bool) -> Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    if create_new {
        options.create_new(true);
    }
    options.open(path).map_err(|e| io_error(if create_new { "create" } else { "open" }, path, e))
}

/// Cuts `file` to `len` bytes, positions writes at its end, and flushes the cut.
pub(crate) fn truncate_to(file: &mut File, len: u64, path: &Path) -> Result<()> {
    file.set_len(len).map_err(|e| io_error("truncate", path, e))?;
    file.seek(SeekFrom::Start(len)).map_err(|e| io_error("seek in", path, e))?;
    file.sync_all().map_err(|e| io_error("flush", path, e))
}

/// Flushes the folder holding `path`, so that a new file's name is on disk with it (a power cut must not lose it).
pub(crate) fn sync_folder_of(path: &Path) -> Result<()> {
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    File::open(&folder).and_then(|f| f.sync_all()).map_err(|e| io_error("flush", &folder, e))
}

/// Writes `text` at the file's position and flushes it to disk.
pub(crate) fn append_synced(file: &mut File, text: &str, path: &Path) -> Result<()> {
    file.write_all(text.as_bytes()).map_err(|e| io_error("write", path, e))?;
    file.sync_data().map_err(|e| io_error("flush", path, e))
}

/// The complete lines (without their newlines) of the output of an earlier run, which must exist, leaving the file
/// as it is: what [`JsonlAppender::resume`] would keep with `group` 1, for checks before anything is cut. Files
/// larger than `max_bytes` are refused.
pub fn read_complete_lines(path: &Path, max_bytes: u64) -> Result<Vec<String>> {
    require_existing(path)?;
    let text = crate::model::files::read_text(path, max_bytes)?;
    let complete = text.rfind('\n').map_or(0, |at| at + 1);
    Ok(text[..complete].split_terminator('\n').map(str::to_string).collect())
}

/// A JSONL output appended whole records at a time, each append on disk before [`JsonlAppender::append`] returns.
#[derive(Debug)]
pub struct JsonlAppender {
    path: PathBuf,
    file: File,
}

impl JsonlAppender {
    /// A new, empty file; one that exists is refused (`--resume` continues it).
    pub fn create(path: &Path) -> Result<JsonlAppender> {
        refuse_existing(path)?;
        let file = open_rw(path, true)?;
        sync_folder_of(path)?;
        Ok(JsonlAppender { path: path.to_path_buf(), file })
    }

    /// The file of an earlier run, cut after its last complete line, and further back to a multiple of `group`
    /// lines (records appended together; 1: line by line); returns it and the lines kept (without their newlines).
    /// Files larger than `max_bytes` are refused.
    pub fn resume(path: &Path, group: usize, max_bytes: u64) -> Result<(JsonlAppender, Vec<String>)> {
        let mut lines = read_complete_lines(path, max_bytes)?;
        lines.truncate(lines.len() / group.max(1) * group.max(1));
        let kept_bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
        let mut file = open_rw(path, false)?;
        truncate_to(&mut file, kept_bytes as u64, path)?;
        Ok((JsonlAppender { path: path.to_path_buf(), file }, lines))
    }

    /// Appends `text` (whole lines, each ending in a newline) and flushes it to disk.
    pub fn append(&mut self, text: &str) -> Result<()> {
        debug_assert!(text.is_empty() || text.ends_with('\n'), "records end with their newline");
        append_synced(&mut self.file, text, &self.path)
    }
}
