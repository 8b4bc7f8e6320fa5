//! Status codes, the thread-local last-error message, and the panic boundary every export goes through.

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::Error;

/// What a call did. The numbers are the ABI: they never change and are never reused; new codes are appended.
/// `ur_last_error_message()` explains the last failure on the calling thread.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ur_status {
    /// Success.
    UR_OK = 0,
    /// A required pointer argument (a tensor, its shape, its data, an output, the context) is NULL.
    UR_ERROR_NULL_POINTER = 1,
    /// A value is out of range (a label outside the vocabulary, a negative beta, a bad `struct_size`, an enum
    /// code that does not exist, overlapping buffers).
    UR_ERROR_INVALID_ARGUMENT = 2,
    /// A tensor has the wrong shape or rank, or two tensors disagree.
    UR_ERROR_SHAPE = 3,
    /// A tensor has a dtype the op does not take.
    UR_ERROR_DTYPE = 4,
    /// Tensors are on different devices, or on one the op cannot use.
    UR_ERROR_DEVICE = 5,
    /// CUDA tensors were given but CUDA is missing (no driver, no NVRTC, no such device).
    UR_ERROR_CUDA_UNAVAILABLE = 6,
    /// A CUDA call or kernel launch failed.
    UR_ERROR_CUDA = 7,
    /// NVRTC refused a kernel (a library bug; the message holds the compiler log).
    UR_ERROR_KERNEL_COMPILE = 8,
    /// The library panicked (a library bug); the call was abandoned and the message holds the panic.
    UR_ERROR_PANIC = 9,
    /// Valid DLPack that the library does not take: strides other than row-major, a dtype code, bit width or
    /// lane count it has no kernels for, a device type other than CPU and CUDA.
    UR_ERROR_UNSUPPORTED = 10,
    /// A model file (`config.json`, safetensors weights) is missing, unreadable, corrupt, or describes a model the
    /// library does not implement; the message names the file and what was wrong.
    UR_ERROR_CHECKPOINT = 11,
}

/// A failure on its way to the caller: a status and a message.
#[derive(Debug)]
pub(crate) struct Failure {
    pub status: ur_status,
    pub message: String,
}

impl Failure {
    pub fn new(status: ur_status, message: impl Into<String>) -> Self {
        Failure { status, message: message.into() }
    }

    pub fn null(arg: &str) -> Self {
        Failure::new(ur_status::UR_ERROR_NULL_POINTER, format!("`{arg}` is NULL"))
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Failure::new(ur_status::UR_ERROR_INVALID_ARGUMENT, message)
    }

    pub fn unsupported(message: impl Into<String>) -> Self {
        Failure::new(ur_status::UR_ERROR_UNSUPPORTED, message)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let status = match e {
            Error::Shape(_) => ur_status::UR_ERROR_SHAPE,
            Error::DType { .. } => ur_status::UR_ERROR_DTYPE,
            Error::Device(_) => ur_status::UR_ERROR_DEVICE,
            Error::InvalidArgument(_) => ur_status::UR_ERROR_INVALID_ARGUMENT,
            Error::CudaUnavailable(_) => ur_status::UR_ERROR_CUDA_UNAVAILABLE,
            Error::Cuda(_) => ur_status::UR_ERROR_CUDA,
            Error::KernelCompile { .. } => ur_status::UR_ERROR_KERNEL_COMPILE,
            Error::Checkpoint(_) => ur_status::UR_ERROR_CHECKPOINT,
            // Variants added later, until they get a code of their own.
            #[allow(unreachable_patterns)]
            _ => ur_status::UR_ERROR_INVALID_ARGUMENT,
        };
        Failure::new(status, e.to_string())
    }
}

pub(crate) type FfiResult<T = ()> = std::result::Result<T, Failure>;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    // A message never holds NUL in practice; if it did, cut it there rather than lose it all.
    let text = message.split('\0').next().unwrap_or_default();
    let c = CString::new(text).unwrap_or_default();
    LAST_ERROR.with(|m| *m.borrow_mut() = c);
}

/// Runs an export's body: a failure or a panic becomes a status and the thread's last-error message.
pub(crate) fn call(body: impl FnOnce() -> FfiResult) -> ur_status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => ur_status::UR_OK,
        Ok(Err(f)) => {
            set_last_error(&f.message);
            f.status
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!("panic inside unireward (a bug, please report it): {what}"));
            ur_status::UR_ERROR_PANIC
        }
    }
}

/// The message of the last failing `ur_` call on this thread, "" if none failed yet. The pointer stays valid until
/// the next failing `ur_` call on this thread; copy the text to keep it. Never NULL.
#[no_mangle]
pub extern "C" fn ur_last_error_message() -> *const c_char {
    catch_unwind(|| LAST_ERROR.with(|m| m.borrow().as_ptr())).unwrap_or(c"".as_ptr())
}

/// The name of a status code ("UR_OK", "UR_ERROR_SHAPE", ...), or "UR_UNKNOWN_STATUS" for a number that is not
/// one. A static string; never NULL. Takes an `int32_t` so that any number is safe to pass.
#[no_mangle]
pub extern "C" fn ur_status_name(status: i32) -> *const c_char {
    let name: &CStr = match status {
        0 => c"UR_OK",
        1 => c"UR_ERROR_NULL_POINTER",
        2 => c"UR_ERROR_INVALID_ARGUMENT",
        3 => c"UR_ERROR_SHAPE",
        4 => c"UR_ERROR_DTYPE",
        5 => c"UR_ERROR_DEVICE",
        6 => c"UR_ERROR_CUDA_UNAVAILABLE",
        7 => c"UR_ERROR_CUDA",
        8 => c"UR_ERROR_KERNEL_COMPILE",
        9 => c"UR_ERROR_PANIC",
        10 => c"UR_ERROR_UNSUPPORTED",
        11 => c"UR_ERROR_CHECKPOINT",
        _ => c"UR_UNKNOWN_STATUS",
    };
    name.as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_error() -> String {
        // SAFETY: a NUL-terminated string owned by this thread.
        unsafe { CStr::from_ptr(ur_last_error_message()) }.to_string_lossy().into_owned()
    }

    #[test]
    fn a_panic_becomes_a_status_and_a_message() {
        let status = call(|| panic!("boom at the boundary"));
        assert_eq!(status, ur_status::UR_ERROR_PANIC);
        assert!(last_error().contains("boom at the boundary"), "{}", last_error());
    }

    #[test]
    fn the_last_error_is_per_thread_and_survives_successes() {
        assert_eq!(call(|| Err(Failure::invalid("mine"))), ur_status::UR_ERROR_INVALID_ARGUMENT);
        assert_eq!(call(|| Ok(())), ur_status::UR_OK);
        assert_eq!(last_error(), "mine");
        assert_eq!(std::thread::spawn(last_error).join().unwrap(), "");
    }
}
