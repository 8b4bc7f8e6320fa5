//! Directories that appear whole or not at all: written under a temporary name beside their destination, flushed
//! to disk, then renamed into place. A run killed mid-write leaves only the temporary directory, whose name
//! ([`PARTIAL_MARKER`]) no reader takes for a checkpoint.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{Error, Result};

/// Part of every temporary directory's name.
pub const PARTIAL_MARKER: &str = ".partial-";

fn io<'a>(what: &str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    let what = what.to_string();
    move |e| Error::Checkpoint(format!("cannot {what} {}: {e}", path.display()))
}

/// A fresh sibling of `out` named `.NAME.partial-PID-N` (hidden, and never a checkpoint's name).
fn sibling(out: &Path, kind: &str) -> Result<PathBuf> {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let name = out
        .file_name()
        .ok_or_else(|| Error::InvalidArgument(format!("checkpoint path {} has no directory name", out.display())))?;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let sibling = format!(".{}{kind}{}-{n}", name.to_string_lossy(), std::process::id());
    Ok(out.with_file_name(sibling))
}

/// Flushes every file under `dir`, then each directory (its entries), to disk.
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(io("list", dir))? {
        let entry = entry.map_err(io("list", dir))?;
        let (path, kind) = (entry.path(), entry.file_type().map_err(io("inspect", dir))?);
        if kind.is_dir() {
            sync_tree(&path)?;
        } else if kind.is_file() {
            File::open(&path).and_then(|f| f.sync_all()).map_err(io("flush", &path))?;
        }
    }
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|f| f.sync_all()).map_err(io("flush", dir))
}

/// Creates the directory `out` by running `write` on an empty temporary directory beside it, then renaming that
/// into place. An existing `out` is an error unless `overwrite`, when it is replaced (renamed aside, then removed
/// once the new one is in place). On any failure the temporary directory is removed and `out` is left as it was.
pub fn write_dir_atomically(out: &Path, overwrite: bool, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if out.exists() && !overwrite {
        return Err(Error::InvalidArgument(format!(
            "{} exists; choose a new directory or allow overwriting",
            out.display()
        )));
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io("create", &parent))?;
    let partial = sibling(out, PARTIAL_MARKER)?;
    std::fs::create_dir(&partial).map_err(io("create", &partial))?;
    let result = write(&partial).and_then(|()| sync_tree(&partial)).and_then(|()| {
        if out.exists() {
            let old = sibling(out, ".old-")?;
            std::fs::rename(out, &old).map_err(io("move aside", out))?;
            std::fs::rename(&partial, out).map_err(io("rename into place", out))?;
            std::fs::remove_dir_all(&old).map_err(io("remove", &old))?;
        } else {
            std::fs::rename(&partial, out).map_err(io("rename into place", out))?;
        }
        sync_dir(&parent)
    });
    if result.is_err() && partial.exists() {
        // Best effort: the error being returned matters more than a failure to tidy up.
        let _ = std::fs::remove_dir_all(&partial);
    }
    result
}
