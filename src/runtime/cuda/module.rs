/// One `kernels/*.cu` file, embedded in the library and compiled by NVRTC on first use.
#[derive(Clone, Copy, Debug)]
pub struct KernelModule {
    /// The file's stem, used as the cache key and in error messages.
    pub name: &'static str,
    /// The file's text; its `#include "common.cuh"` line is replaced by `kernels/common.cuh`.
    pub source: &'static str,
}

/// The shared helpers every kernel file includes.
pub const COMMON_HEADER: &str = include_str!("../../../kernels/common.cuh");

impl KernelModule {
    /// The source NVRTC compiles: the file with `common.cuh` inlined, so that no include path is needed.
    pub fn full_source(&self) -> String {
        self.source.replace("#include \"common.cuh\"", COMMON_HEADER)
    }
}

/// Declares a `KernelModule` for `kernels/<name>.cu`.
#[macro_export]
macro_rules! kernel_module {
    ($name:literal) => {
        $crate::runtime::cuda::KernelModule {
            name: $name,
            source: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/kernels/", $name, ".cu")),
        }
    };
}
