//! Reference log-probabilities computed once over a pair file and cached beside the run's checkpoints
//! (`out/ref_logps.json`), with fingerprints of what they were computed from so that a cache made from another pair
//! file, another reference checkpoint or another tokenization (tokenizer, chat template, `--max-len`, the records
//! kept) or another LD-DPO `ld_alpha` (which splits the reference's log-probs) is refused instead of silently
//! reused. The values are the f32 log-probs the trainer would get from the reference on the fly (up to the padding
//! of the batch they ran in).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{reference_logps, PairLogps};
use crate::model::files::{read_text, MAX_JSON_BYTES};
use crate::model::qwen2::ForwardOptions;
use crate::train::data::{collate_pairs, PairDataset};
use crate::train::fingerprint::Fingerprint;
use crate::train::model::TrainModel;
use crate::{Error, Result};

/// The cache's file name in a run's output folder.
pub const CACHE_FILE: &str = "ref_logps.json";

/// What a cache was computed from: FNV-1a fingerprints of the pair file's bytes, of the reference checkpoint's
/// `config.json` and weight files, and of the tokenized pairs (line, prompt, chosen and rejected ids of each kept
/// record); and LD-DPO's α the values were split with (absent in caches written before LD-DPO: none).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheKey {
    pub pairs_file: u64,
    pub reference: u64,
    pub examples: u64,
    #[serde(default)]
    pub ld_alpha: Option<f32>,
}

impl CacheKey {
    pub fn new(pairs_file: &Path, reference_dir: &Path, data: &PairDataset, ld_alpha: Option<f32>) -> Result<CacheKey> {
        let mut file = Fingerprint::default();
        file.file(pairs_file)?;
        let mut reference = Fingerprint::default();
        for path in checkpoint_files(reference_dir)? {
            reference.bytes(path.file_name().map_or(&[][..], |n| n.as_encoded_bytes()));
            reference.file(&path)?;
        }
        let mut examples = Fingerprint::default();
        for e in &data.examples {
            examples.word(e.line as u64);
            // The prompt's ids as their bit patterns (a `llava_qwen` placeholder is negative); a token id hashes as
            // the completions' do.
            examples.word(e.prompt.len() as u64);
            e.prompt.iter().for_each(|&id| examples.word(id as u64));
            for ids in [&e.chosen, &e.rejected] {
                examples.word(ids.len() as u64);
                ids.iter().for_each(|&id| examples.word(u64::from(id)));
            }
        }
        Ok(CacheKey { pairs_file: file.finish(), reference: reference.finish(), examples: examples.finish(), ld_alpha })
    }
}

/// `config.json` and the weight files (`*.safetensors`, the index) of a checkpoint, sorted by name.
fn checkpoint_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::Checkpoint(format!("cannot list {}: {e}", dir.display())))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::Checkpoint(format!("cannot list {}: {e}", dir.display())))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if path.is_file() && (name == "config.json" || name.ends_with(".safetensors") || name.ends_with(".index.json"))
        {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The file's content.
#[derive(Serialize, Deserialize)]
struct CacheFile {
    key: CacheKey,
    /// Each pair's 1-based line in the pair file (for people reading the cache).
    lines: Vec<usize>,
    chosen: Vec<f32>,
    rejected: Vec<f32>,
}

/// Every pair's reference log-probabilities, in the dataset's order, in batches of `batch_size` pairs (split by
/// LD-DPO's `ld_alpha` when given, as [`reference_logps`] does).
pub fn compute(
    model: &TrainModel,
    data: &PairDataset,
    pad_id: u32,
    batch_size: usize,
    forward: ForwardOptions,
    ld_alpha: Option<f32>,
) -> Result<PairLogps> {
    let mut all = PairLogps::default();
    for chunk in data.examples.chunks(batch_size.max(1)) {
        let examples: Vec<_> = chunk.iter().collect();
        let logps = reference_logps(model, &collate_pairs(&examples, pad_id), forward, ld_alpha)?;
        all.chosen.extend(logps.chosen);
        all.rejected.extend(logps.rejected);
    }
    Ok(all)
}

/// Writes the cache at `path` (through a temporary file renamed into place: a killed run leaves no half cache).
pub fn save(path: &Path, logps: &PairLogps, key: CacheKey, data: &PairDataset) -> Result<()> {
    let file = CacheFile {
        key,
        lines: data.examples.iter().map(|e| e.line).collect(),
        chosen: logps.chosen.clone(),
        rejected: logps.rejected.clone(),
    };
    let json = serde_json::to_string(&file).map_err(|e| Error::Checkpoint(e.to_string()))?;
    let tmp = path.with_extension("json.partial");
    let io = |e: std::io::Error| Error::Checkpoint(format!("cannot write {}: {e}", path.display()));
    std::fs::write(&tmp, json).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The cache at `path` for `key`: `None` when there is no file, an error when it was computed from other inputs
/// (naming which) or does not hold one value per pair.
pub fn load(path: &Path, key: CacheKey, pairs: usize) -> Result<Option<PairLogps>> {
    if !path.exists() {
        return Ok(None);
    }
    // A pair takes at most ~45 bytes (two f32 in their shortest form and a line number): bound the read by the
    // pair count rather than by a fixed size, so a large pair file's cache reads back.
    let text = read_text(path, MAX_JSON_BYTES.max(4096 + 64 * pairs as u64))?;
    let file: CacheFile = serde_json::from_str(&text)
        .map_err(|e| Error::Checkpoint(format!("{} is not a reference cache: {e}", path.display())))?;
    let stale = [
        (file.key.pairs_file != key.pairs_file, "another pair file"),
        (file.key.reference != key.reference, "another reference checkpoint"),
        (file.key.examples != key.examples, "another tokenization of the pairs (tokenizer, template or --max-len)"),
        (file.key.ld_alpha != key.ld_alpha, "another `ld_alpha` (LD-DPO splits the reference's log-probs)"),
    ];
    if let Some((_, why)) = stale.iter().find(|(differs, _)| *differs) {
        return Err(Error::InvalidArgument(format!(
            "the reference cache {} was computed from {why}: delete it to recompute, or train into another --out",
            path.display()
        )));
    }
    if file.chosen.len() != pairs || file.rejected.len() != pairs || file.lines.len() != pairs {
        return Err(Error::Checkpoint(format!("{} does not hold one value per pair ({pairs} pairs)", path.display())));
    }
    if let Some(v) = file.chosen.iter().chain(&file.rejected).find(|v| !v.is_finite()) {
        return Err(Error::Checkpoint(format!("{} holds a log-probability of {v}", path.display())));
    }
    Ok(Some(PairLogps { chosen: file.chosen, rejected: file.rejected }))
}
