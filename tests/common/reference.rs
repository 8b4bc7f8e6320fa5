//! What the tests against the float64 PyTorch references (tests/reference/train_*.py) share: fixture paths, values
//! as f64, the relative tolerance check, and the reference's batches.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use unireward::train::data::{MediaKind, MediaRef, SequenceBatch};
use unireward::{DType, Tensor};

pub fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(path)
}

pub fn values_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap().into_iter().map(f64::from).collect()
}

/// `|got - want| <= rel · max(|want|, floor)`.
pub fn assert_close(what: &str, got: f64, want: f64, rel: f64, floor: f64) {
    let tol = rel * want.abs().max(floor);
    assert!((got - want).abs() <= tol, "{what}: got {got}, want {want} (tolerance {tol:e})");
}

/// An image or video of a reference batch row, named relative to the LLaVA fixture folder.
#[derive(Deserialize, Clone)]
pub struct ReferenceMedia {
    pub kind: String,
    pub path: String,
}

impl ReferenceMedia {
    fn media_ref(&self) -> MediaRef {
        let kind = if self.kind == "video" { MediaKind::Video } else { MediaKind::Image };
        MediaRef { kind, path: fixture("llava").join(&self.path) }
    }
}

/// A batch as a reference script wrote it: its rows' media when it has them (none for text-only scripts), and a
/// reward run's per-pair margins when it has them.
#[derive(Deserialize, Clone)]
pub struct ReferenceBatch {
    pub rows: usize,
    pub len: usize,
    pub ids: Vec<i64>,
    pub mask: Vec<i64>,
    pub labels: Vec<i64>,
    pub tasks: Vec<usize>,
    #[serde(default)]
    pub margin: Option<Vec<f32>>,
    #[serde(default)]
    pub media: Vec<Vec<ReferenceMedia>>,
}

impl ReferenceBatch {
    pub fn sequence_batch(&self) -> SequenceBatch {
        let media = match self.media.is_empty() {
            true => vec![Vec::new(); self.rows],
            false => self.media.iter().map(|row| row.iter().map(ReferenceMedia::media_ref).collect()).collect(),
        };
        let (ids, mask, labels, tasks) = (self.ids.clone(), self.mask.clone(), self.labels.clone(), self.tasks.clone());
        SequenceBatch { rows: self.rows, len: self.len, ids, mask, labels, tasks, media }
    }
}
