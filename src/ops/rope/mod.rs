//! Rotary position embeddings as Qwen2 and Hugging Face apply them: the rotate-half convention (element i of the
//! first half pairs with element i of the second half), angle `position · inv_freq[i]` with
//! `inv_freq[i] = theta^(−2i/d)`. Angles are formed in f32 as transformers forms them (so positions in the tens
//! of thousands give the same rotation as the reference), and their cosine and sine are taken in f64.
//!
//! The backward of a rotation is the inverse rotation, so one routine serves both; it works in place on
//! `[N,T,heads,d]` tensors (q and k alike) with explicit position ids `[N,T]` (right padding is just positions).

mod cpu;
mod cuda;

use crate::ops::{check, launch};
use crate::runtime::cuda::KernelModule;
use crate::runtime::{Device, Tensor};
use crate::{Error, Result};

pub const KERNELS: KernelModule = crate::kernel_module!("rope");

/// The rotary base (Qwen2's `rope_theta`, 1,000,000 for Qwen2-0.5B).
#[derive(Clone, Copy, Debug)]
pub struct RopeConfig {
    pub theta: f32,
}

impl Default for RopeConfig {
    fn default() -> Self {
        RopeConfig { theta: 1_000_000.0 }
    }
}

/// Which way to rotate: `Forward` applies the embedding, `Inverse` undoes it (the backward).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rotation {
    Forward,
    Inverse,
}

/// `inv_freq[i] = 1 / theta^(2i/d)` for i < d/2, rounded to f32 as transformers computes it.
pub fn inv_freq(head_dim: usize, theta: f32) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| {
            let exponent = (2 * i) as f32 / head_dim as f32;
            1.0 / (theta as f64).powf(exponent as f64) as f32
        })
        .collect()
}

/// Validated sizes: `x` [N,T,heads,d] with d even, positions [N,T] non-negative; returns (heads, d, positions).
fn plan(x: &Tensor, positions: &Tensor, cfg: &RopeConfig) -> Result<(usize, usize, Vec<usize>)> {
    check::finite("theta", cfg.theta)?;
    if cfg.theta <= 0.0 {
        return Err(Error::InvalidArgument(format!("`theta` must be positive, got {}", cfg.theta)));
    }
    let &[n, t, heads, d] = check::rank("x", x, 4)? else { unreachable!() };
    check::float("x", x)?;
    if d == 0 || d % 2 != 0 {
        return Err(Error::Shape(format!("the head dimension of `x` must be even and positive, got {d}")));
    }
    check::non_empty("x (N·T·heads)", n * t * heads)?;
    check::integer("positions", positions)?;
    check::shape("positions", positions, &[n, t])?;
    check::same_device(&[("x", x), ("positions", positions)])?;
    let positions = launch::host_ids(positions)?
        .into_iter()
        .map(|p| {
            usize::try_from(p)
                .ok()
                .filter(|&p| p < 1 << 24)
                .ok_or_else(|| Error::InvalidArgument(format!("`positions` holds {p}, outside [0, 2^24)")))
        })
        .collect::<Result<Vec<usize>>>()?;
    Ok((heads, d, positions))
}

/// Rotates `x` `[N,T,heads,d]` in place by the angles of `positions` `[N,T]` (i32 or i64, each in [0, 2^24)).
pub fn rope_in_place(x: &mut Tensor, positions: &Tensor, cfg: &RopeConfig, rotation: Rotation) -> Result<()> {
    let (heads, d, pos) = plan(x, positions, cfg)?;
    let inv = inv_freq(d, cfg.theta);
    match x.device() {
        Device::Cpu => cpu::rotate(x, &pos, &inv, heads, rotation),
        Device::Cuda(_) => cuda::rotate(x, &pos, &inv, heads, rotation),
    }
}

/// `x` `[N,T,heads,d]` with rotary embeddings applied (a new tensor).
pub fn rope(x: &Tensor, positions: &Tensor, cfg: &RopeConfig) -> Result<Tensor> {
    let mut out = x.try_clone()?;
    rope_in_place(&mut out, positions, cfg, Rotation::Forward)?;
    Ok(out)
}

/// The gradient with respect to the input of [`rope`]: the inverse rotation of `grad_out` (a new tensor).
pub fn rope_backward(grad_out: &Tensor, positions: &Tensor, cfg: &RopeConfig) -> Result<Tensor> {
    let mut out = grad_out.try_clone()?;
    rope_in_place(&mut out, positions, cfg, Rotation::Inverse)?;
    Ok(out)
}
