//! FNV-1a (64-bit): the fingerprints that tie a saved state to what it was made from (a loader's plan, a
//! reference-log-prob cache's pair file and reference weights), so a resume or a cache built from other inputs is
//! refused instead of silently used. Not a defence against deliberate collisions.

use std::io::Read;
use std::path::Path;

use crate::{Error, Result};

/// An FNV-1a hash being fed.
#[derive(Clone, Copy, Debug)]
pub struct Fingerprint(u64);

impl Default for Fingerprint {
    fn default() -> Self {
        Fingerprint(0xcbf2_9ce4_8422_2325)
    }
}

impl Fingerprint {
    pub fn bytes(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// `word` as 8 little-endian bytes.
    pub fn word(&mut self, word: u64) {
        self.bytes(&word.to_le_bytes());
    }

    /// The whole content of the file at `path`, read in blocks.
    pub fn file(&mut self, path: &Path) -> Result<()> {
        let io = |e: std::io::Error| Error::InvalidArgument(format!("cannot read {}: {e}", path.display()));
        let mut file = crate::model::files::open_regular(path)?;
        let mut block = vec![0u8; 1 << 20];
        loop {
            let read = file.read(&mut block).map_err(io)?;
            if read == 0 {
                return Ok(());
            }
            self.bytes(&block[..read]);
        }
    }

    pub fn finish(self) -> u64 {
        self.0
    }
}
