//! Fixture loading, tensors from plain vectors, tolerance checks and seeded random numbers.

use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::Value;
use unireward::{DType, Device, Tensor};

/// A fixture written by `tests/reference/preference.py`.
pub fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/preference/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

pub fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number")).collect()
}

pub fn f32s(v: &Value) -> Vec<f32> {
    f64s(v).into_iter().map(|x| x as f32).collect()
}

pub fn i64s(v: &Value) -> Vec<i64> {
    v.as_array().expect("array").iter().map(|x| x.as_i64().expect("integer")).collect()
}

/// A float tensor of `dtype` on `device`.
pub fn tensor(values: &[f32], shape: &[usize], dtype: DType, device: Device) -> Tensor {
    Tensor::from_f32(values, shape, dtype, device).expect("tensor")
}

/// Any float tensor's values as f32.
pub fn values(t: &Tensor) -> Vec<f32> {
    t.to_f32_cow().expect("float tensor").into_owned()
}

/// Values rounded through `dtype` (what a bf16/f16 input actually holds).
pub fn rounded(v: &[f32], dtype: DType) -> Vec<f32> {
    values(&tensor(v, &[v.len()], dtype, Device::Cpu))
}

/// `|got - want| <= rtol·|want| + atol`.
pub fn assert_close(what: &str, got: f64, want: f64, rtol: f64, atol: f64) {
    let ok = (got - want).abs() <= rtol * want.abs() + atol || (got.is_nan() && want.is_nan());
    assert!(ok, "{what}: got {got:e}, want {want:e} (rtol {rtol:e}, atol {atol:e})");
}

/// Element-wise [`assert_close`], with `atol = rtol · max |want|` (elements far below the largest are compared
/// at the scale of the largest).
pub fn assert_all_close(what: &str, got: &[f32], want: &[f64], rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert_close(&format!("{what}[{i}]"), g as f64, w, rtol, rtol * scale + 1e-30);
    }
}

/// A seeded generator; the seed is printed so that a failure can be replayed.
pub fn rng(test: &str) -> StdRng {
    let seed: u64 = std::env::var("UNIREWARD_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(7)
    });
    println!("{test}: seed {seed} (UNIREWARD_SEED={seed} replays it)");
    StdRng::seed_from_u64(seed)
}

/// The first CUDA device, for the GPU tests.
pub fn cuda() -> Device {
    assert!(unireward::runtime::cuda::is_available(), "the GPU tests need a CUDA device and NVRTC");
    Device::Cuda(0)
}

pub const FLOAT_DTYPES: [DType; 3] = [DType::F32, DType::BF16, DType::F16];
