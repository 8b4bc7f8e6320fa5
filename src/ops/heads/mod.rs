//! Reward-model heads: what turns a model's outputs into rewards.
//!
//! - [`scalar_reward`]: the hidden state at explicit per-sequence end positions through a linear layer H → C
//!   (C = 1 for a Bradley–Terry reward, C > 1 for several attributes).
//! - [`verdict_head`]: a generative judge's verdict read from its logits at the answer position: per class a
//!   logsumexp over its token ids, renormalised over the classes; with class values, the expected score.
//!
//! Each has a backward, a CPU path (`*_cpu.rs`, rayon) and CUDA kernels (`kernels/heads.cu`, launched from
//! `*_cuda.rs`: one block per row, reductions in a fixed order, so results are deterministic). Inputs are f32,
//! bf16 or f16; arithmetic is f32.

mod classes;
mod cuda;
mod host;
mod scalar;
mod scalar_cpu;
mod scalar_cuda;
mod verdict;
mod verdict_cpu;
mod verdict_cuda;

use crate::runtime::cuda::KernelModule;

pub use classes::VerdictClasses;
pub use scalar::{scalar_reward, scalar_reward_backward, ScalarHead, ScalarHeadGrads};
pub use verdict::{verdict_head, verdict_head_backward, verdict_head_backward_into, Verdict, VerdictGrads};

pub const KERNELS: KernelModule = crate::kernel_module!("heads");
