//! Deterministic synthetic inputs, generated in parallel (a Qwen2-sized batch has hundreds of millions of logits).

use rayon::prelude::*;
use unireward::{DType, Device, Tensor};

/// A uniform value in [-1, 1) from a 64-bit index (splitmix64), so any element can be generated independently.
fn uniform(seed: u64, i: u64) -> f32 {
    let mut z = seed.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

/// Roughly normal values (a sum of three uniforms) times `scale`.
pub fn values(seed: u64, len: usize, scale: f32) -> Vec<f32> {
    let mut out = vec![0.0f32; len];
    out.par_chunks_mut(1 << 16).enumerate().for_each(|(block, chunk)| {
        let base = (block << 16) as u64 * 3;
        for (j, x) in chunk.iter_mut().enumerate() {
            let k = base + 3 * j as u64;
            *x = scale * (uniform(seed, k) + uniform(seed, k + 1) + uniform(seed, k + 2));
        }
    });
    out
}

/// A float tensor of synthetic values.
pub fn tensor(seed: u64, shape: &[usize], scale: f32, dtype: DType, device: Device) -> unireward::Result<Tensor> {
    let len = shape.iter().product();
    Tensor::from_f32(&values(seed, len, scale), shape, dtype, device)
}

/// Labels [N,T]: the first `prompt` tokens of each sequence are ignored (−100), the rest are tokens of `vocab`.
pub fn labels(seed: u64, n: usize, t: usize, prompt: usize, vocab: usize, device: Device) -> unireward::Result<Tensor> {
    let labels: Vec<i64> = (0..n * t)
        .map(|p| {
            if p % t < prompt {
                -100
            } else {
                ((uniform(seed, p as u64) + 1.0) * 0.5 * vocab as f32) as i64 % vocab as i64
            }
        })
        .collect();
    Tensor::from_slice(&labels, &[n, t], device)
}
