//! Preference losses on per-sequence quantities: the DPO family (TRL's loss types, SimPO, ORPO, RPO), reward-model
//! losses (Bradley–Terry with centring, K-wise all-pairs and Plackett–Luce) and Diffusion-DPO.
//!
//! Each loss is a forward and a backward in one call: it returns the loss (f32), the gradient with respect to the
//! trained model's inputs (in their dtype) and TRL's metrics. The CPU path (`*_cpu.rs`) computes per item in f64;
//! the CUDA kernels (`kernels/preference.cu`, launched from `cuda.rs`) compute per item in f64 too, so the two
//! agree to rounding, and reduce deterministically.

use crate::runtime::cuda::KernelModule;

pub const KERNELS: KernelModule = crate::kernel_module!("preference");

mod cuda;
mod dpo;
mod dpo_cpu;
mod host;
mod math;

pub use dpo::{dpo_loss, DpoConfig, DpoLossType, DpoMetrics, DpoOutput, PreferenceLogps};
