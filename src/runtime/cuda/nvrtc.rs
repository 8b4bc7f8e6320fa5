//! Compiling embedded kernel sources with NVRTC, straight to a CUBIN for one architecture.

use std::ffi::{CStr, CString};

use cudarc::nvrtc::{result, sys};

use super::KernelModule;
use crate::{Error, Result};

/// A compiled kernel file: the CUBIN to load and the compiler's log (ptxas statistics when `verbose`).
pub struct Compiled {
    pub cubin: Vec<u8>,
    pub log: String,
}

/// Frees the NVRTC program on every path out of [`compile`].
struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the program was created by `create_program` and is destroyed once, here.
        let _ = unsafe { result::destroy_program(self.0) };
    }
}

fn log_of(program: &Program) -> String {
    // SAFETY: `program` is a live program; the log is a NUL-terminated string NVRTC wrote into our buffer.
    unsafe { result::get_program_log(program.0) }
        .map(|raw| {
            let bytes: Vec<u8> = raw.iter().map(|&c| c as u8).collect();
            CStr::from_bytes_until_nul(&bytes).map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
        })
        .unwrap_or_default()
}

/// Compiles `module` for `arch` (such as `sm_90`). With `verbose`, ptxas reports registers and spills in the log.
pub fn compile(module: &KernelModule, arch: &str, verbose: bool) -> Result<Compiled> {
    if !super::nvrtc_present() {
        return Err(Error::CudaUnavailable(
            "the NVRTC library (libnvrtc.so.13) was not found; put its folder on LD_LIBRARY_PATH".into(),
        ));
    }
    let fail = |log: String| Error::KernelCompile { module: module.name.to_string(), log };
    let source = CString::new(module.full_source()).map_err(|_| fail("source contains a NUL byte".into()))?;
    let name = CString::new(format!("{}.cu", module.name)).map_err(|_| fail("bad module name".into()))?;
    let program = Program(result::create_program(&source, Some(&name)).map_err(|e| fail(e.to_string()))?);

    let mut options = vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
        "--use_fast_math".to_string(),
        // Kernels are compiled once per process; favour the generated code over compile time.
        "--dopt=on".to_string(),
    ];
    if verbose {
        options.push("--ptxas-options=-v".to_string());
    }
    // SAFETY: `program` is live; the options are plain strings.
    if let Err(e) = unsafe { result::compile_program(program.0, &options) } {
        return Err(fail(format!("{e}\n{}", log_of(&program))));
    }
    let log = log_of(&program);

    let mut size = 0usize;
    // SAFETY: `program` compiled successfully for a real architecture, so it holds a CUBIN of `size` bytes, and
    // the buffer is exactly that large.
    let cubin = unsafe {
        sys::nvrtcGetCUBINSize(program.0, &mut size).result().map_err(|e| fail(e.to_string()))?;
        let mut cubin = vec![0u8; size];
        sys::nvrtcGetCUBIN(program.0, cubin.as_mut_ptr().cast()).result().map_err(|e| fail(e.to_string()))?;
        cubin
    };
    Ok(Compiled { cubin, log })
}
