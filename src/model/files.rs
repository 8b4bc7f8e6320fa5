//! Opening the files of a checkpoint safely: only regular files (a FIFO would block the open forever, a device could
//! stream without end), and text read with a size bound before anything is allocated for it.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// The largest `config.json`, index or generation config we read (real ones are a few KiB to a few MiB).
pub const MAX_JSON_BYTES: u64 = 64 << 20;
/// The largest `tokenizer.json` (Qwen2's is 7 MiB; multilingual ones reach tens of MiB).
pub const MAX_TOKENIZER_BYTES: u64 = 512 << 20;

/// Opens `path` for reading if it is a regular file (symbolic links followed), without blocking on special files.
pub fn open_regular(path: &Path) -> Result<File> {
    let metadata =
        std::fs::metadata(path).map_err(|e| Error::Checkpoint(format!("cannot open {}: {e}", path.display())))?;
    if !metadata.is_file() {
        return Err(Error::Checkpoint(format!("{} is not a regular file", path.display())));
    }
    File::open(path).map_err(|e| Error::Checkpoint(format!("cannot open {}: {e}", path.display())))
}

/// The UTF-8 text of the regular file `path`, refused when it is longer than `max_bytes`.
pub fn read_text(path: &Path, max_bytes: u64) -> Result<String> {
    let file = open_regular(path)?;
    let too_long = || Error::Checkpoint(format!("{} is larger than {max_bytes} bytes", path.display()));
    let declared = file.metadata().map(|m| m.len()).unwrap_or(0);
    if declared > max_bytes {
        return Err(too_long());
    }
    let mut bytes = Vec::with_capacity(declared as usize);
    // The bound holds even when the file grows while it is read.
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::Checkpoint(format!("cannot read {}: {e}", path.display())))?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_long());
    }
    String::from_utf8(bytes).map_err(|_| Error::Checkpoint(format!("{} is not UTF-8 text", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_directories_and_long_files() {
        let dir = std::env::temp_dir().join(format!("unireward-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = read_text(&dir, 10).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        let file = dir.join("long.json");
        std::fs::write(&file, "0123456789A").unwrap();
        let err = read_text(&file, 10).unwrap_err().to_string();
        assert!(err.contains("larger than 10 bytes"), "{err}");
        assert_eq!(read_text(&file, 11).unwrap(), "0123456789A");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
