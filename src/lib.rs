//! unireward: the numerical engine of a unified multimodal reward model and of preference alignment.
//!
//! Layers, each depending only on those above it (see `DESIGN.md` in the shared folder):
//! - [`runtime`]: devices, tensors, the CPU backend and the CUDA backend (cudarc, NVRTC, dynamic loading);
//! - [`ops`]: op families with a forward and a backward, on CPU and CUDA behind one signature.
//!
//! Every fallible call returns [`Result`]; user input never panics.

#[cfg(feature = "cxx")]
mod cxx_bridge;
pub mod error;
pub mod ffi;
pub mod judge;
pub mod model;
pub mod ops;
pub mod runtime;

pub use error::{Error, Result};
pub use runtime::{DType, Device, Tensor};
