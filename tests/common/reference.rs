//! What the tests against the float64 PyTorch references (tests/reference/train_*.py) share: fixture paths, values
//! as f64, the relative tolerance check, and the reference's text batches.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use unireward::train::data::SequenceBatch;
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

/// A text-only batch as a reference script wrote it (with a reward run's per-pair margins when it has them).
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
}

impl ReferenceBatch {
    pub fn sequence_batch(&self) -> SequenceBatch {
        let media = vec![Vec::new(); self.rows];
        let (ids, mask, labels, tasks) = (self.ids.clone(), self.mask.clone(), self.labels.clone(), self.tasks.clone());
        SequenceBatch { rows: self.rows, len: self.len, ids, mask, labels, tasks, media }
    }
}
