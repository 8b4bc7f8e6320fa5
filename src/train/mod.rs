//! Training: the optimizer (AdamW fused over a model's parameters, clipping, schedules, accumulation), the data
//! pipeline (conversation, preference-pair and ranked-list files, tokenization with loss masks, batching, shuffling
//! and task mixing that a resume can restore), checkpoints written in the Hugging Face layout, the trainers (SFT of
//! the judge, a scalar reward model with Bradley–Terry or K-wise losses, DPO of a policy) with the run loop they
//! share, and PNG plots of their metrics.

pub mod checkpoint;
pub mod data;
pub mod dpo;
pub mod fingerprint;
pub mod model;
pub mod optim;
pub mod plots;
pub mod reward;
pub mod run;
pub mod sft;

use crate::runtime::cuda::KernelModule;

/// The kernel files of this layer (see [`crate::kernel_modules`]).
pub const KERNEL_MODULES: &[KernelModule] = &[optim::KERNELS];
