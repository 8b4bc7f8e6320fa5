//! The one error type of the library. Every fallible call returns `Result<_, Error>`; user input never panics.

use crate::runtime::DType;

/// Everything that can go wrong, grouped so that the C ABI can map each variant to a stable status code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor argument has the wrong shape, or two arguments disagree.
    #[error("shape error: {0}")]
    Shape(String),
    /// A tensor argument has a dtype the op does not accept.
    #[error("dtype error: `{arg}` has dtype {got}, expected {expected}")]
    DType { arg: &'static str, got: DType, expected: String },
    /// Tensor arguments live on different devices, or on one the op cannot use.
    #[error("device error: {0}")]
    Device(String),
    /// A value is out of its allowed range (a label outside the vocabulary, a negative β, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// CUDA is missing (no driver, no NVRTC) or a device ordinal does not exist.
    #[error("CUDA unavailable: {0}")]
    CudaUnavailable(String),
    /// A CUDA driver call or kernel launch failed.
    #[error("CUDA error: {0}")]
    Cuda(String),
    /// NVRTC refused a kernel source: a bug in the library, reported with the compiler log.
    #[error("kernel compilation failed for `{module}`: {log}")]
    KernelCompile { module: String, log: String },
    /// A model file (config.json, safetensors weights, tokenizer.json) is missing, corrupt, or describes a model
    /// the library does not implement; the message names the file, the key or tensor, and what was expected.
    #[error("checkpoint error: {0}")]
    Checkpoint(String),
}

/// Shorthand used across the crate.
pub type Result<T> = std::result::Result<T, Error>;

impl From<cudarc::driver::DriverError> for Error {
    fn from(e: cudarc::driver::DriverError) -> Self {
        Error::Cuda(e.to_string())
    }
}
