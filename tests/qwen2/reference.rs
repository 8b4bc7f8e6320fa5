//! The float64 reference of tests/reference/qwen2_model.py: `tests/fixtures/qwen2/<model>/reference.safetensors`.

use std::collections::HashMap;
use std::path::PathBuf;

use safetensors::{Dtype, SafeTensors};
use unireward::{DType, Tensor};

pub fn model_dir(model: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2").join(model)
}

/// Every tensor of a model's reference file as f64 (float64 and int64 entries alike), with its shape.
pub struct Reference {
    tensors: HashMap<String, (Vec<usize>, Vec<f64>)>,
}

impl Reference {
    pub fn load(model: &str) -> Reference {
        Reference::from_file(&model_dir(model).join("reference.safetensors"))
    }

    /// A reference file of another fixture family (tests/siglip reads its own through this module).
    pub fn from_file(path: &std::path::Path) -> Reference {
        let bytes = std::fs::read(path).expect("reference fixture");
        let file = SafeTensors::deserialize(&bytes).expect("reference fixture parses");
        let tensors = file
            .tensors()
            .into_iter()
            .map(|(name, view)| {
                let values = view
                    .data()
                    .chunks_exact(8)
                    .map(|b| {
                        let b: [u8; 8] = b.try_into().unwrap();
                        match view.dtype() {
                            Dtype::F64 => f64::from_le_bytes(b),
                            Dtype::I64 => i64::from_le_bytes(b) as f64,
                            other => panic!("unexpected dtype {other:?} for {name}"),
                        }
                    })
                    .collect();
                (name, (view.shape().to_vec(), values))
            })
            .collect();
        Reference { tensors }
    }

    pub fn get(&self, name: &str) -> &[f64] {
        &self.tensors.get(name).unwrap_or_else(|| panic!("reference has no `{name}`")).1
    }

    pub fn shape(&self, name: &str) -> &[usize] {
        &self.tensors[name].0
    }

    pub fn ids(&self, name: &str) -> Vec<i64> {
        self.get(name).iter().map(|&v| v as i64).collect()
    }

    /// Names starting with `prefix`.
    pub fn tensors_named(&self, prefix: &str) -> Vec<String> {
        self.tensors.keys().filter(|n| n.starts_with(prefix)).cloned().collect()
    }
}

/// max |got − want| / max |want| over the selected elements.
pub fn relative_error(got: &[f64], want: &[f64], keep: impl Fn(usize) -> bool) -> f64 {
    assert_eq!(got.len(), want.len());
    let (mut diff, mut scale) = (0.0f64, 0.0f64);
    for i in (0..want.len()).filter(|&i| keep(i)) {
        diff = diff.max((got[i] - want[i]).abs());
        scale = scale.max(want[i].abs());
    }
    diff / scale.max(f64::MIN_POSITIVE)
}

/// A float tensor's values as f64 (through f32, exact for every storage dtype).
pub fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap().into_iter().map(f64::from).collect()
}
