//! Training: the optimizer (and, beside it, the data and checkpoint layers and the trainers built on them).

pub mod optim;

use crate::runtime::cuda::KernelModule;

/// The kernel files of this layer (see [`crate::kernel_modules`]).
pub const KERNEL_MODULES: &[KernelModule] = &[optim::KERNELS];
