//! (in progress)

use crate::runtime::cuda::KernelModule;

pub const KERNELS: KernelModule = crate::kernel_module!("logprobs");

pub mod row;
