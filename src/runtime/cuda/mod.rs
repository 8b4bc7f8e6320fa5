//! The CUDA backend: cudarc with dynamic loading, so nothing CUDA is needed to build or to run on the CPU.
//!
//! The driver library is looked for before cudarc touches it (cudarc panics when a library is missing), so a
//! machine without CUDA gets [`Error::CudaUnavailable`], never a panic.

mod backend;
pub mod blas;
mod module;
pub mod nvrtc;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

pub use backend::CudaBackend;
pub use cudarc::driver::{CudaStream, LaunchConfig, PushKernelArg};
pub use module::KernelModule;

use crate::{Error, Result};

/// Whether the CUDA driver library can be loaded on this machine.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the driver library by its candidate names; nothing is called.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Whether NVRTC can be loaded on this machine.
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the NVRTC library by its candidate names; nothing is called.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// The number of CUDA devices; 0 when there is no driver.
pub fn device_count() -> usize {
    if !driver_present() {
        return 0;
    }
    cudarc::driver::CudaContext::device_count().map(|n| n.max(0) as usize).unwrap_or(0)
}

/// Whether at least one CUDA device is usable.
pub fn is_available() -> bool {
    device_count() > 0 && nvrtc_present()
}

thread_local! {
    /// Backends on callers' streams, innermost last (see [`on_stream`]).
    static STREAM_SCOPES: std::cell::RefCell<Vec<Arc<CudaBackend>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with the library's work on device `ordinal` ordered on the caller's stream `cu_stream` (PyTorch's
/// current stream, or a stream handed through the C ABI; null is the legacy default stream): inside `f`, on this
/// thread, [`backend`] returns a backend on that stream, so the tensors `f` creates and the kernels it launches use
/// it. Nothing is synchronised: the caller keeps ordering its own work on its stream.
///
/// # Safety
/// `cu_stream` must be null or a valid stream of device `ordinal`'s primary context, alive while `f` runs and
/// while work `f` queued on it may still run.
pub unsafe fn on_stream<R>(
    ordinal: usize,
    cu_stream: cudarc::driver::sys::CUstream,
    f: impl FnOnce() -> Result<R>,
) -> Result<R> {
    let base = backend(ordinal)?;
    // SAFETY: this function's contract.
    let stream = unsafe { base.context().wrap_borrowed_stream(cu_stream) };
    STREAM_SCOPES.with(|s| s.borrow_mut().push(Arc::new(base.on_stream(stream))));
    /// Pops the scope on every way out of `f`, panics included.
    struct Pop;
    impl Drop for Pop {
        fn drop(&mut self) {
            STREAM_SCOPES.with(|s| s.borrow_mut().pop());
        }
    }
    let _pop = Pop;
    f()
}

/// The backend of device `ordinal`: on the caller's stream inside [`on_stream`], else on the device's default
/// stream (created on first use and shared after).
pub fn backend(ordinal: usize) -> Result<Arc<CudaBackend>> {
    let scoped = STREAM_SCOPES.with(|s| s.borrow().iter().rev().find(|b| b.ordinal() == ordinal).cloned());
    if let Some(b) = scoped {
        return Ok(b);
    }
    static BACKENDS: OnceLock<Mutex<HashMap<usize, Arc<CudaBackend>>>> = OnceLock::new();
    let mut backends = BACKENDS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(b) = backends.get(&ordinal) {
        return Ok(b.clone());
    }
    if !driver_present() {
        return Err(Error::CudaUnavailable("the CUDA driver library (libcuda.so) was not found".into()));
    }
    if !nvrtc_present() {
        return Err(Error::CudaUnavailable(
            "the NVRTC library (libnvrtc.so.13) was not found; put its folder on LD_LIBRARY_PATH".into(),
        ));
    }
    let count = device_count();
    if ordinal >= count {
        return Err(Error::CudaUnavailable(format!("no CUDA device {ordinal}: this machine has {count}")));
    }
    let backend = Arc::new(CudaBackend::new(ordinal)?);
    backends.insert(ordinal, backend.clone());
    Ok(backend)
}

/// A launch configuration of `blocks` blocks of `threads` threads and `shared_bytes` of dynamic shared memory.
pub fn launch_config(blocks: usize, threads: u32, shared_bytes: u32) -> Result<LaunchConfig> {
    let blocks = u32::try_from(blocks)
        .ok()
        .filter(|&b| b > 0 && b < (1 << 31))
        .ok_or_else(|| Error::InvalidArgument(format!("cannot launch {blocks} blocks")))?;
    Ok(LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: shared_bytes })
}
