//! The C ABI of `libunireward.so` / `libunireward.a`, declared in `include/unireward.h` (generated from this
//! module by cbindgen; `tests/c_header.rs` fails when the committed header is stale).
//!
//! Conventions (the header repeats them for C users):
//! - every function is `ur_*`, returns a [`ur_status`] (except the version, name and free functions), catches
//!   panics, and explains failures in the thread's `ur_last_error_message()`;
//! - tensors cross as DLPack `DLTensor`s in CPU or CUDA memory, row-major (strides NULL or compact), wrapped
//!   without copies; outputs are caller-allocated and must have exactly the shape and dtype the op produces;
//! - every op takes a [`ur_context`] first and a CUDA stream (`cudaStream_t`, NULL = legacy default stream) last;
//!   CUDA work runs on that stream and the call returns without synchronising, except where a result goes to host
//!   memory (losses, metrics: those calls wait for their own work);
//! - config structs start with `struct_size` and come from `ur_*_config_default()`; NULL means the defaults; any
//!   `struct_size` from a struct's first released size on is accepted (fields are only appended);
//! - metrics structs start with `struct_size` too, set by the caller to `sizeof` its struct: the call writes only
//!   the fields both the caller's header and the library know.

mod abi_version;
mod compare;
mod context;
mod dlpack;
mod dpo_trainer;
mod fused_linear;
mod generation;
mod heads;
mod host_out;
mod judge;
mod judge_reasoned;
mod judge_template;
mod logprobs;
mod media;
mod model;
mod model_media;
mod network;
mod optim;
mod preference;
mod reward_trainer;
mod sft;
mod status;
mod trainer;

pub use abi_version::UR_ABI_VERSION;
pub use compare::*;
pub use context::{ur_context, ur_context_create, ur_context_free};
pub use dlpack::{DLDataType, DLDevice, DLTensor};
pub use dpo_trainer::*;
pub use fused_linear::*;
pub use generation::*;
pub use heads::*;
pub use judge::*;
pub use judge_reasoned::*;
pub use judge_template::*;
pub use logprobs::*;
pub use media::*;
pub use model::*;
pub use model_media::*;
pub use optim::*;
pub use preference::*;
pub use reward_trainer::*;
pub use sft::*;
pub use status::{ur_last_error_message, ur_status, ur_status_name};
pub use trainer::*;

use std::ffi::c_char;

/// The library's major version (semantic versioning of the Rust crate).
pub const UR_VERSION_MAJOR: u32 = 0;
/// The library's minor version.
pub const UR_VERSION_MINOR: u32 = 1;
/// The library's patch version.
pub const UR_VERSION_PATCH: u32 = 0;

/// The ABI version of the loaded library (`UR_ABI_VERSION` of the header it was built with).
#[no_mangle]
pub extern "C" fn ur_abi_version() -> u32 {
    UR_ABI_VERSION
}

/// Bytes of freed host (CPU) buffers the library keeps for reuse. Tensors of at least 1 MiB that the library frees
/// are kept by size, up to `UNIREWARD_HOST_CACHE_BYTES` (read once; 0 turns the cache off; default a quarter of the
/// machine's memory), and handed out again zeroed: a training step's fresh buffers then reuse warm pages instead of
/// faulting in new ones.
#[no_mangle]
pub extern "C" fn ur_host_cache_bytes() -> u64 {
    crate::runtime::host_cache::cached_bytes() as u64
}

/// Hands every buffer of the host cache back to the system; returns the bytes released.
#[no_mangle]
pub extern "C" fn ur_host_cache_release() -> u64 {
    crate::runtime::host_cache::release_cached_memory() as u64
}

/// The loaded library's version, "MAJOR.MINOR.PATCH". A static string.
#[no_mangle]
pub extern "C" fn ur_version_string() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
