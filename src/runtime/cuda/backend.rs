//! One CUDA device: its context, its stream, its compiled kernel modules and its cuBLAS handle.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream};
use cudarc::nvrtc::Ptx;

use super::{nvrtc, KernelModule};
use crate::{Error, Result};

pub struct CudaBackend {
    ordinal: usize,
    arch: String,
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    blas: OnceLock<Arc<CudaBlas>>,
}

impl CudaBackend {
    pub(super) fn new(ordinal: usize) -> Result<Self> {
        let context = CudaContext::new(ordinal)?;
        // The library orders its own work on one stream per call; cudarc's per-buffer events are not needed.
        // SAFETY: no buffer of this context exists yet, so none relies on event tracking.
        unsafe { context.disable_event_tracking() };
        let (major, minor) = context.compute_capability()?;
        let stream = context.default_stream();
        Ok(CudaBackend {
            ordinal,
            arch: format!("sm_{major}{minor}"),
            context,
            stream,
            modules: Mutex::new(HashMap::new()),
            blas: OnceLock::new(),
        })
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The device's architecture as NVRTC names it (`sm_90`).
    pub fn arch(&self) -> &str {
        &self.arch
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.context
    }

    /// The stream the library's work on this device runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The cuBLAS handle, created on first use.
    pub fn blas(&self) -> Result<&Arc<CudaBlas>> {
        if let Some(blas) = self.blas.get() {
            return Ok(blas);
        }
        let blas = Arc::new(CudaBlas::new(self.stream.clone()).map_err(|e| Error::Cuda(e.to_string()))?);
        Ok(self.blas.get_or_init(|| blas))
    }

    /// A kernel of `module`, compiling and loading the module on first use (once per device).
    pub fn function(&self, module: &KernelModule, name: &str) -> Result<CudaFunction> {
        let loaded = {
            let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
            match modules.get(module.name) {
                Some(m) => m.clone(),
                None => {
                    let compiled = nvrtc::compile(module, &self.arch, false)?;
                    let m = self.context.load_module(Ptx::from_binary(compiled.cubin))?;
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
