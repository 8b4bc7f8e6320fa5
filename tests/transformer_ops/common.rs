//! Shared test helpers: fixtures, tensors from f64, tolerances, seeds, finite differences.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use unireward::{DType, Device, Tensor};

pub const FLOATS: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

/// A fixture of `tests/fixtures/transformer_ops/`.
pub struct Fixture(Value);

impl Fixture {
    pub fn load(name: &str) -> Fixture {
        let path = format!("{}/tests/fixtures/transformer_ops/{name}.json", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        Fixture(serde_json::from_str(&text).unwrap())
    }

    pub fn f64s(&self, key: &str) -> Vec<f64> {
        self.0[key].as_array().unwrap_or_else(|| panic!("no {key}")).iter().map(|v| v.as_f64().unwrap()).collect()
    }

    pub fn i64s(&self, key: &str) -> Vec<i64> {
        self.0[key].as_array().unwrap_or_else(|| panic!("no {key}")).iter().map(|v| v.as_i64().unwrap()).collect()
    }

    pub fn usize(&self, key: &str) -> usize {
        self.0[key].as_u64().unwrap_or_else(|| panic!("no {key}")) as usize
    }

    pub fn usizes(&self, key: &str) -> Vec<usize> {
        self.i64s(key).into_iter().map(|v| v as usize).collect()
    }

    pub fn f64(&self, key: &str) -> f64 {
        self.0[key].as_f64().unwrap_or_else(|| panic!("no {key}"))
    }

    pub fn bool(&self, key: &str) -> bool {
        self.0[key].as_bool().unwrap_or_else(|| panic!("no {key}"))
    }
}

pub fn seed() -> StdRng {
    let seed = rand::random::<u64>();
    println!("seed {seed}");
    StdRng::seed_from_u64(seed)
}

pub fn normal(rng: &mut StdRng, len: usize) -> Vec<f64> {
    // Sum of uniforms: close enough to a normal for test inputs, no extra dependency.
    (0..len).map(|_| (0..4).map(|_| rng.gen_range(-1.0..1.0)).sum::<f64>() * 0.866).collect()
}

/// A float tensor of `dtype` on `device` from f64 values (rounded through f32).
pub fn tensor(data: &[f64], shape: &[usize], dtype: DType, device: Device) -> Tensor {
    let f: Vec<f32> = data.iter().map(|&v| v as f32).collect();
    Tensor::from_f32(&f, shape, dtype, device).unwrap()
}

/// An integer tensor of `dtype` (i32 or i64) on `device`.
pub fn ids(data: &[i64], shape: &[usize], dtype: DType, device: Device) -> Tensor {
    let t = Tensor::from_slice(data, shape, Device::Cpu).unwrap().to_dtype(dtype).unwrap();
    if device == Device::Cpu {
        t
    } else {
        t.to_device(device).unwrap()
    }
}

/// The values a tensor of `dtype` holds for `data`: what the op actually sees after rounding.
pub fn rounded(data: &[f64], dtype: DType) -> Vec<f64> {
    values(&tensor(data, &[data.len()], dtype, Device::Cpu))
}

/// A float tensor's elements as f64, from either device.
pub fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap().into_iter().map(f64::from).collect()
}

/// |got − want| ≤ atol + rtol·|want| element-wise, with atol = rtol · max|want| (so tiny entries of a large
/// vector are judged on the vector's scale).
pub fn assert_close(what: &str, got: &[f64], want: &[f64], rtol: f64) {
    assert_close_on_scale(what, got, want, rtol, 0.0);
}

/// [`assert_close`] with atol = rtol · max(max|want|, `scale`): for results whose terms cancel, judged on the scale
/// of the terms rather than of what is left.
pub fn assert_close_on_scale(what: &str, got: &[f64], want: &[f64], rtol: f64, scale: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let scale = want.iter().fold(scale, |m, w| m.max(w.abs())).max(1e-30);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= rtol * (scale + w.abs()) && g.is_finite(),
            "{what}[{i}]: got {g}, want {w} (rtol {rtol}, scale {scale})"
        );
    }
}

/// The tolerance for results stored in `dtype`.
pub fn tol(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 1e-5,
        _ => 1e-2,
    }
}

/// Central differences of `f` at `x` for `probes` coordinates spread over `x`: (index, derivative).
pub fn finite_differences(x: &[f64], probes: usize, f: impl Fn(&[f64]) -> f64) -> Vec<(usize, f64)> {
    let step = 1e-6;
    let stride = (x.len() / probes.max(1)).max(1);
    (0..x.len())
        .step_by(stride)
        .map(|i| {
            let mut xp = x.to_vec();
            xp[i] += step;
            let up = f(&xp);
            xp[i] -= 2.0 * step;
            (i, (up - f(&xp)) / (2.0 * step))
        })
        .collect()
}

/// The probed coordinates of `grad` against their finite differences.
pub fn assert_fd(what: &str, grad: &[f64], fd: &[(usize, f64)]) {
    let scale = grad.iter().fold(0.0f64, |m, g| m.max(g.abs())).max(1e-30);
    for &(i, want) in fd {
        assert!(
            (grad[i] - want).abs() <= 1e-4 * (scale + want.abs()),
            "{what}[{i}]: backward {} vs finite difference {want}",
            grad[i]
        );
    }
}

/// Σ a·b.
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// A float tensor full of NaN: an `_into` output holding garbage, which the op must overwrite whole.
pub fn garbage(shape: &[usize], dtype: DType, device: Device) -> Tensor {
    Tensor::from_f32(&vec![f32::NAN; shape.iter().product()], shape, dtype, device).unwrap()
}

/// The stored bits of a float tensor, from either device.
fn bits(t: &Tensor) -> Vec<u32> {
    match t.dtype() {
        DType::BF16 => t.to_vec::<half::bf16>().unwrap().iter().map(|v| u32::from(v.to_bits())).collect(),
        DType::F16 => t.to_vec::<half::f16>().unwrap().iter().map(|v| u32::from(v.to_bits())).collect(),
        _ => t.to_vec::<f32>().unwrap().iter().map(|v| v.to_bits()).collect(),
    }
}

/// `got` equals `want` bit for bit, with the same shape, dtype and device.
pub fn assert_same(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(
        (got.shape(), got.dtype(), got.device()),
        (want.shape(), want.dtype(), want.device()),
        "{what}: shape, dtype or device"
    );
    let (g, w) = (bits(got), bits(want));
    if let Some(i) = (0..g.len()).find(|&i| g[i] != w[i]) {
        panic!("{what}[{i}]: bits {:#x}, want {:#x}", g[i], w[i]);
    }
}
