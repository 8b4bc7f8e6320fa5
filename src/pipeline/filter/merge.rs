//! Joining the outputs of the n shards of one run into the files an unsharded run writes: every shard must be
//! finished and belong to the same run; their pair and audit lines are interleaved by prompt index (each shard's
//! lines are in index order, and a prompt's lines all come from its shard), bytes unchanged.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::progress::{read_progress, Header, OutputPaths};
use super::records::Summary;
use crate::model::files::open_regular;
use crate::{Error, Result};

/// A shard's pairs and audit files (its progress file is `<pairs>.progress`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardOutput {
    pub pairs: PathBuf,
    pub audit: PathBuf,
}

/// The field every pair and audit line has.
#[derive(Deserialize)]
struct Indexed {
    index: usize,
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::InvalidArgument(format!("cannot {what} {}: {e}", path.display()))
}

/// One shard file read line by line, with the index of its next line.
struct Lines {
    path: PathBuf,
    reader: BufReader<File>,
    line_no: usize,
    next: Option<(usize, Vec<u8>)>,
}

impl Lines {
    fn open(path: &Path) -> Result<Lines> {
        let mut lines =
            Lines { path: path.to_path_buf(), reader: BufReader::new(open_regular(path)?), line_no: 0, next: None };
        lines.advance()?;
        Ok(lines)
    }

    /// Reads the next line; its index must not go below the previous one's.
    fn advance(&mut self) -> Result<()> {
        let mut bytes = Vec::new();
        let read = self.reader.read_until(b'\n', &mut bytes).map_err(|e| io_error("read", &self.path, e))?;
        let previous = self.next.take().map(|(index, _)| index);
        if read == 0 {
            return Ok(());
        }
        self.line_no += 1;
        let bad =
            |what: String| Error::InvalidArgument(format!("{} line {}: {what}", self.path.display(), self.line_no));
        if bytes.last() != Some(&b'\n') {
            return Err(bad("no newline at its end (an unfinished shard?)".into()));
        }
        let Indexed { index } = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if previous.is_some_and(|p| index < p) {
            return Err(bad(format!("prompt index {index} after {}", previous.unwrap_or(0))));
        }
        self.next = Some((index, bytes));
        Ok(())
    }
}

/// Writes to `out` (which must not exist) the lines of every file of `inputs`, ordered by prompt index (ties: the
/// earlier input, then file order), then flushes it to disk.
fn interleave(inputs: &[PathBuf], out: &Path) -> Result<()> {
    let mut sources = inputs.iter().map(|p| Lines::open(p)).collect::<Result<Vec<_>>>()?;
    let file = File::options().write(true).create_new(true).open(out).map_err(|e| io_error("create", out, e))?;
    let mut writer = BufWriter::new(file);
    while let Some(s) = (0..sources.len())
        .filter(|&s| sources[s].next.is_some())
        .min_by_key(|&s| sources[s].next.as_ref().map(|(index, _)| *index))
    {
        let (_, bytes) = sources[s].next.as_ref().expect("a source with a line was picked");
        writer.write_all(bytes).map_err(|e| io_error("write", out, e))?;
        sources[s].advance()?;
    }
    let file = writer.into_inner().map_err(|e| io_error("write", out, e.into_error()))?;
    file.sync_all().map_err(|e| io_error("flush", out, e))
}

/// Merges the finished shards `shards` (all n of one run, in any order) into `pairs` and `audit`, which must not
/// exist; returns the summed counts.
pub fn merge_shards(shards: &[ShardOutput], pairs: &Path, audit: &Path) -> Result<Summary> {
    let mut seen: Vec<Option<usize>> = Vec::new();
    let mut first_run: Option<Header> = None;
    let mut summary = Summary::default();
    for (position, shard) in shards.iter().enumerate() {
        let progress = OutputPaths { pairs: shard.pairs.clone(), audit: shard.audit.clone() }.progress();
        let recorded = read_progress(&progress)?;
        let header = recorded.header.ok_or_else(|| {
            Error::InvalidArgument(format!("{}: the shard's run never started (no header)", progress.display()))
        })?;
        let [index, count] = header.shard;
        // The run, whatever the shard.
        let run = Header { shard: [0, count], ..header.clone() };
        match &first_run {
            None => {
                if count != shards.len() {
                    return Err(Error::InvalidArgument(format!(
                        "{} is shard {index}/{count}, but {} shards were given",
                        progress.display(),
                        shards.len()
                    )));
                }
                seen = vec![None; count];
                first_run = Some(run);
            }
            Some(first) if *first != run => {
                return Err(Error::InvalidArgument(format!(
                    "{} belongs to another run than the first shard",
                    progress.display()
                )))
            }
            Some(_) => {}
        }
        if let Some(other) = seen[index].replace(position) {
            return Err(Error::InvalidArgument(format!(
                "shard {index}/{count} is given twice (inputs {other} and {position})"
            )));
        }
        if recorded.last.map_or(0, |p| p.next) != header.records {
            return Err(Error::InvalidArgument(format!(
                "{}: shard {index}/{count} is unfinished (finish it with --resume first)",
                progress.display()
            )));
        }
        for (path, recorded_len) in [
            (&shard.pairs, recorded.last.map_or(0, |p| p.pairs_bytes)),
            (&shard.audit, recorded.last.map_or(0, |p| p.audit_bytes)),
        ] {
            let len = std::fs::metadata(path).map_err(|e| io_error("inspect", path, e))?.len();
            if len != recorded_len {
                return Err(Error::InvalidArgument(format!(
                    "{} has {len} bytes, its progress file records {recorded_len} (changed since, or unfinished)",
                    path.display()
                )));
            }
        }
        if let Some(last) = recorded.last {
            summary.add(&last.summary);
        }
    }
    if shards.is_empty() {
        return Err(Error::InvalidArgument("no shards to merge".into()));
    }
    for path in [pairs, audit] {
        if path.exists() {
            return Err(Error::InvalidArgument(format!("{} exists; merge into new files", path.display())));
        }
    }
    interleave(&shards.iter().map(|s| s.pairs.clone()).collect::<Vec<_>>(), pairs)?;
    interleave(&shards.iter().map(|s| s.audit.clone()).collect::<Vec<_>>(), audit)?;
    Ok(summary)
}
