//! Op families. Each op is a forward and a backward with a CPU implementation and a CUDA kernel behind one
//! signature, dispatched on the device of its tensors. The transformer ops (embedding, rmsnorm, layernorm, linear,
//! swiglu, gelu, attention, bilinear interpolation) also come as `_into` variants that write every element of
//! outputs the caller provides (views of a model's preallocated buffers, which may hold garbage); the allocating
//! versions wrap them.

pub mod attention;
pub mod check;
pub mod compare;
pub(crate) mod convert;
pub mod embedding;
pub mod fused_linear;
pub mod gelu;
pub mod heads;
pub mod interpolate;
pub(crate) mod launch;
pub mod layernorm;
pub mod linear;
pub mod logprobs;
pub mod preference;
pub mod residual;
pub mod rmsnorm;
pub mod rope;
pub mod rows;
pub mod swiglu;
pub mod tokens;

use crate::runtime::cuda::KernelModule;

/// Every kernel file of the library, for ahead-of-time compile checks (CI compiles each for sm_80 and sm_90).
pub const KERNEL_MODULES: &[KernelModule] = &[
    logprobs::KERNELS,
    fused_linear::KERNELS,
    preference::KERNELS,
    compare::KERNELS,
    heads::KERNELS,
    embedding::KERNELS,
    rmsnorm::KERNELS,
    rope::KERNELS,
    linear::KERNELS,
    swiglu::KERNELS,
    attention::KERNELS,
    residual::KERNELS,
    layernorm::KERNELS,
    gelu::KERNELS,
    interpolate::KERNELS,
    rows::KERNELS,
];
