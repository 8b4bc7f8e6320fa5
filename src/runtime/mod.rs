//! Devices, dtypes, tensors and the two backends.

pub mod arena;
pub mod cpu;
pub mod cuda;
mod device;
mod dtype;
pub mod host_cache;
mod storage;
mod tensor;

pub use device::Device;
pub use dtype::{DType, Element, FloatElement};
pub use tensor::{Storage, Tensor};
