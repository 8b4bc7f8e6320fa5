//! Preference losses on per-sequence quantities: the DPO family (TRL's loss types and their weighted mixtures,
//! f-divergences, SimPO, ORPO, RPO, WPO weights, LD-DPO), reward-model losses (Bradley–Terry with centring, K-wise
//! all-pairs and Plackett–Luce) and Diffusion-DPO.
//!
//! Each loss is a forward and a backward in one call: it returns the loss (f32), the gradient with respect to the
//! trained model's outputs (in their dtype, scaled by an upstream `grad_output`) and the metrics TRL or diffusers
//! log. The CPU path (`*_cpu.rs`) and the CUDA kernels (`kernels/preference.cu`, launched from `cuda.rs`) both do
//! the per-item math in f64 (it is a few dozen flops per pair) and reduce in a fixed order, so they agree to
//! rounding, are deterministic, and stay exact at β = 5000 or log-probs of 1e4.

use crate::runtime::cuda::KernelModule;

/// `kernels/preference.cu`.
pub const KERNELS: KernelModule = crate::kernel_module!("preference");

mod args;
mod cuda;
mod diffusion_dpo;
mod diffusion_dpo_cpu;
mod dpo;
mod dpo_config;
mod dpo_cpu;
mod host;
mod math;
mod reduce;
mod reward_model;
mod reward_model_cpu;

pub use diffusion_dpo::{
    diffusion_dpo_loss, DiffusionDpoConfig, DiffusionDpoInputs, DiffusionDpoMetrics, DiffusionDpoOutput,
};
pub use dpo::{dpo_loss, DpoMetrics, DpoOutput, PreferenceLogps};
pub use dpo_config::{BcoDelta, DpoConfig, DpoLossType, FDivergence, LossMixture, TrlDpoOptions};
pub use reward_model::{
    bradley_terry_loss, kwise_loss, BradleyTerryConfig, BradleyTerryMetrics, BradleyTerryOutput, KwiseConfig,
    KwiseMethod, KwiseOutput,
};
