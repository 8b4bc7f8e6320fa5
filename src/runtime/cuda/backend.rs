//! One CUDA device seen through one stream: the device's context, compiled kernel modules and cuBLAS handle are
//! shared by every stream's backend; the stream orders the work.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream};
use cudarc::nvrtc::Ptx;

use super::{nvrtc, KernelModule};
use crate::{Error, Result};

/// What one device holds once, whatever the stream.
struct DeviceState {
    ordinal: usize,
    arch: String,
    context: Arc<CudaContext>,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    /// Created on first use; bound to the calling backend's stream for each call.
    blas: Mutex<Option<CudaBlas>>,
}

pub struct CudaBackend {
    device: Arc<DeviceState>,
    stream: Arc<CudaStream>,
}

impl CudaBackend {
    /// The backend of device `ordinal` on the context's default stream.
    pub(super) fn new(ordinal: usize) -> Result<Self> {
        let context = CudaContext::new(ordinal)?;
        // The library orders its work on one stream per call; cudarc's per-buffer events are not needed.
        // SAFETY: no buffer of this context exists yet, so none relies on event tracking.
        unsafe { context.disable_event_tracking() };
        let (major, minor) = context.compute_capability()?;
        let stream = context.default_stream();
        let device = DeviceState {
            ordinal,
            arch: format!("sm_{major}{minor}"),
            context,
            modules: Mutex::new(HashMap::new()),
            blas: Mutex::new(None),
        };
        Ok(CudaBackend { device: Arc::new(device), stream })
    }

    /// The same device seen through `stream` (sharing compiled kernels and the cuBLAS handle).
    pub(super) fn on_stream(&self, stream: Arc<CudaStream>) -> Self {
        CudaBackend { device: self.device.clone(), stream }
    }

    pub fn ordinal(&self) -> usize {
        self.device.ordinal
    }

    /// The device's architecture as NVRTC names it (`sm_90`).
    pub fn arch(&self) -> &str {
        &self.device.arch
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.device.context
    }

    /// The stream this backend's work runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Runs `f` with the device's cuBLAS handle bound to this backend's stream (one user at a time).
    pub fn with_blas<R>(&self, f: impl FnOnce(&CudaBlas) -> Result<R>) -> Result<R> {
        let mut blas = self.device.blas.lock().unwrap_or_else(|e| e.into_inner());
        let blas = match &mut *blas {
            Some(b) => b,
            None => blas.insert(CudaBlas::new(self.stream.clone()).map_err(|e| Error::Cuda(e.to_string()))?),
        };
        // SAFETY: the handle is used under the lock only, so rebinding its stream cannot race another call; work
        // queued on it before is ordered by the streams' owners, as for every launch of this backend.
        unsafe { blas.set_stream(self.stream.clone()) }.map_err(|e| Error::Cuda(e.to_string()))?;
        f(blas)
    }

    /// A kernel of `module`, compiling and loading the module on first use (once per device).
    pub fn function(&self, module: &KernelModule, name: &str) -> Result<CudaFunction> {
        let loaded = {
            let mut modules = self.device.modules.lock().unwrap_or_else(|e| e.into_inner());
            match modules.get(module.name) {
                Some(m) => m.clone(),
                None => {
                    let compiled = nvrtc::compile(module, &self.device.arch, false)?;
                    let m = self.device.context.load_module(Ptx::from_binary(compiled.cubin))?;
                    modules.insert(module.name, m.clone());
                    m
                }
            }
        };
        loaded
            .load_function(name)
            .map_err(|e| Error::Cuda(format!("kernel `{name}` not found in `{}`: {e}", module.name)))
    }

    /// Waits for all work queued on the stream, surfacing any asynchronous kernel error.
    pub fn synchronize(&self) -> Result<()> {
        Ok(self.stream.synchronize()?)
    }
}
