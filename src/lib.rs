//! unireward: the numerical engine of a unified multimodal reward model and of preference alignment.
//!
//! Layers, each depending only on those above it (see `DESIGN.md` in the shared folder):
//! - [`runtime`]: devices, tensors (owned or over caller memory), the CPU backend and the CUDA backend (cudarc,
//!   NVRTC, dynamic loading, callers' streams);
//! - [`ops`]: op families with a forward and a backward, on CPU and CUDA behind one signature: per-sequence
//!   log-probs (from logits or fused with the LM head), the DPO family and reward-model losses, Diffusion-DPO,
//!   scoring heads, batched pairwise comparisons, and the transformer ops the Qwen2 decoder is built from;
//! - [`model`]: Hugging Face configs and safetensors checkpoints;
//! - [`media`]: image and video input (decoding, frame sampling, LLaVA-OneVision's preprocessing);
//! - [`judge`]: the tokenizer and Qwen's chat template;
//! - [`train`]: the optimizer (AdamW fused over a model's parameters, clipping, schedules, accumulation), training
//!   data (conversations, preference pairs, batching and mixing) and checkpoints;
//! - [`pipeline`]: the filter stage (a judge's pair ranking and point sifting of K candidates into preference pairs);
//! - [`ffi`]: the stable C ABI (`include/unireward.h`), on which the C++ header and the Python package stand.
//!
//! Every fallible call returns [`Result`]; user input never panics.

#[cfg(feature = "cxx")]
mod cxx_bridge;
pub mod error;
pub mod ffi;
pub mod judge;
pub mod media;
pub mod model;
pub mod ops;
pub mod pipeline;
pub mod runtime;
pub mod train;

pub use error::{Error, Result};

/// The README's Rust examples, compiled and run by `cargo test --doc`.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
pub use runtime::{DType, Device, Tensor};

/// Every kernel file of the library (the ops' and the optimizer's), for ahead-of-time compile checks (CI compiles
/// each for sm_80 and sm_90).
pub fn kernel_modules() -> impl Iterator<Item = &'static runtime::cuda::KernelModule> {
    ops::KERNEL_MODULES.iter().chain(train::KERNEL_MODULES)
}
