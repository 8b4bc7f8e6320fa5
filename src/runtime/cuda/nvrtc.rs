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

/// What ptxas reports for one kernel (`--ptxas-options=-v`): register use, spills and stack.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    /// The kernel's (unmangled, `extern "C"`) name.
    pub name: String,
    /// The architecture it was compiled for (`sm_90`).
    pub arch: String,
    /// Registers per thread.
    pub registers: u32,
    /// Bytes of spill stores per thread (0 in a healthy kernel).
    pub spill_stores: u32,
    /// Bytes of spill loads per thread.
    pub spill_loads: u32,
    /// Bytes of stack frame per thread.
    pub stack_frame: u32,
    /// Bytes of static shared memory per block (dynamic shared memory is not counted by ptxas).
    pub shared: u32,
}

/// The number right before `unit` in `text` (`"17 registers"` → 17).
fn number_before(text: &str, unit: &str) -> Option<u32> {
    let head = &text[..text.find(unit)?];
    head.split(|c: char| !c.is_ascii_digit()).rev().find(|s| !s.is_empty())?.parse().ok()
}

/// The text between the first pair of single quotes.
fn quoted(text: &str) -> Option<&str> {
    let start = text.find('\'')? + 1;
    let len = text[start..].find('\'')?;
    Some(&text[start..start + len])
}

/// Parses the log of a verbose [`compile`] into one [`KernelStats`] per entry function, in log order.
///
/// Lines about non-inlined device functions (properties without an entry) are ignored.
pub fn ptxas_stats(log: &str) -> Vec<KernelStats> {
    let mut kernels: Vec<KernelStats> = Vec::new();
    // The kernel the next "bytes stack frame" line belongs to: named by the "Function properties" line before it.
    let mut properties_of: Option<usize> = None;
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function").nth(1) {
            let mut quotes = rest.split('\'').skip(1).step_by(2);
            let name = quotes.next().unwrap_or_default().to_string();
            let arch = quotes.next().unwrap_or_default().to_string();
            kernels.push(KernelStats { name, arch, ..Default::default() });
            properties_of = None;
        } else if let Some(rest) = line.split("Function properties for").nth(1) {
            let name = quoted(rest).unwrap_or(rest).trim();
            properties_of = kernels.iter().rposition(|k| k.name == name);
        } else if line.contains("bytes stack frame") {
            if let Some(k) = properties_of.take().and_then(|i| kernels.get_mut(i)) {
                k.stack_frame = number_before(line, "bytes stack frame").unwrap_or(0);
                k.spill_stores = number_before(line, "bytes spill stores").unwrap_or(0);
                k.spill_loads = number_before(line, "bytes spill loads").unwrap_or(0);
            }
        } else if line.contains("Used") && line.contains("registers") {
            if let Some(k) = kernels.last_mut() {
                k.registers = number_before(line, "registers").unwrap_or(0);
                k.shared = number_before(line, "bytes smem").unwrap_or(0);
            }
        }
    }
    kernels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptxas_stats_reads_every_entry() {
        let log = "\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'k' for 'sm_80'
ptxas info    : Function properties for k
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 17 registers, used 1 barriers, 380 bytes cmem[0]
ptxas info    : Function properties for helper
ptxas         .     16 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Compiling entry function 'big_bf16' for 'sm_90'
ptxas info    : Function properties for big_bf16
ptxas         .     40 bytes stack frame, 24 bytes spill stores, 32 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 128 bytes smem, 400 bytes cmem[0]
";
        let stats = ptxas_stats(log);
        assert_eq!(
            stats,
            vec![
                KernelStats { name: "k".into(), arch: "sm_80".into(), registers: 17, ..Default::default() },
                KernelStats {
                    name: "big_bf16".into(),
                    arch: "sm_90".into(),
                    registers: 255,
                    spill_stores: 24,
                    spill_loads: 32,
                    stack_frame: 40,
                    shared: 128,
                },
            ]
        );
        assert!(ptxas_stats("").is_empty());
    }
}
