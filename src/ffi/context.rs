//! The context handle, and the checked reading of arguments: versioned config structs, strings and arrays.

use std::ffi::{c_char, CStr};

use super::status::{call, ur_status, Failure, FfiResult};

/// Tells a live context from garbage (a freed or never-created pointer is still undefined behaviour).
const MAGIC: u64 = 0x7572_5f63_7478_0001; // "ur_ctx" v1

/// Library state shared by the calls that take it: defaults and (later) workspaces. Opaque; create it with
/// `ur_context_create`, free it with `ur_context_free`. The ops only read it, so one context may be used from
/// several threads at once.
#[allow(non_camel_case_types)]
pub struct ur_context {
    magic: u64,
}

/// Checks the context argument of an op.
///
/// # Safety
/// `ctx` is NULL or a pointer returned by `ur_context_create` and not yet freed.
pub(crate) unsafe fn check(ctx: *const ur_context) -> FfiResult {
    // SAFETY: this function's contract.
    match unsafe { ctx.as_ref() } {
        None => Err(Failure::null("ctx")),
        Some(c) if c.magic == MAGIC => Ok(()),
        Some(_) => Err(Failure::invalid("`ctx` is not a live ur_context")),
    }
}

/// Creates a context into `*out`. On failure `*out` is left unchanged.
///
/// # Safety
/// `out` is NULL (an error) or writable.
#[no_mangle]
pub unsafe extern "C" fn ur_context_create(out: *mut *mut ur_context) -> ur_status {
    call(|| {
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        // SAFETY: checked non-NULL; writable by this function's contract.
        unsafe { *out = Box::into_raw(Box::new(ur_context { magic: MAGIC })) };
        Ok(())
    })
}

/// Frees a context. NULL is accepted and does nothing. The context must not be used afterwards.
///
/// # Safety
/// `ctx` is NULL or a pointer returned by `ur_context_create`, not yet freed, and no call is using it.
#[no_mangle]
pub unsafe extern "C" fn ur_context_free(ctx: *mut ur_context) {
    if ctx.is_null() {
        return;
    }
    // SAFETY: this function's contract: `ctx` came from `Box::into_raw` in `ur_context_create`.
    let mut ctx = unsafe { Box::from_raw(ctx) };
    ctx.magic = 0;
}

/// A C struct that starts with `uint32_t struct_size` and only ever grows by appended fields: the configs a caller
/// passes in and the metrics a call writes out.
pub(crate) trait Versioned: Copy {
    /// The C name, for messages.
    const NAME: &'static str;
    /// The struct's size in the first ABI that had it: callers built against that header pass it. Fields are
    /// only ever appended, so a caller's struct is a prefix of ours (or ours of theirs).
    const FIRST_SIZE: usize = std::mem::size_of::<Self>();
}

/// A config struct: NULL stands for its defaults.
pub(crate) trait Config: Versioned {
    fn default_value() -> Self;
}

/// Checks a caller's `struct_size` for `T`: any size from the first released one on, at a field boundary (a
/// multiple of the alignment: never half of a pointer field). `remedy` says how a caller sets it.
pub(crate) fn caller_size<T: Versioned>(size: u32, remedy: &str) -> FfiResult<usize> {
    let size = size as usize;
    if size < T::FIRST_SIZE || !size.is_multiple_of(std::mem::align_of::<T>()) {
        return Err(Failure::invalid(format!(
            "`{}.struct_size` is {size}, expected {} (or, from a caller built against an older or newer header, \
             a field boundary from {} on): {remedy}",
            T::NAME,
            std::mem::size_of::<T>(),
            T::FIRST_SIZE,
        )));
    }
    Ok(size)
}

/// Reads a config: NULL means the defaults. A caller's `struct_size` may be any size from the first released one
/// on, at a field boundary: an older caller's missing fields take their defaults; a newer caller's extra fields,
/// which this library does not know, must be zero (a feature it cannot honour is refused, not ignored).
///
/// # Safety
/// `cfg` is NULL or points to `struct_size` readable bytes.
pub(crate) unsafe fn read_config<T: Config>(cfg: *const T) -> FfiResult<T> {
    if cfg.is_null() {
        return Ok(T::default_value());
    }
    // SAFETY: this function's contract; every `Versioned` struct is `#[repr(C)]` and starts with its `u32` size.
    let size = unsafe { *(cfg as *const u32) };
    let size = caller_size::<T>(size, &format!("initialise the struct with {}_default()", T::NAME))?;
    let ours = std::mem::size_of::<T>();
    // SAFETY: this function's contract: `size` readable bytes.
    let caller = unsafe { std::slice::from_raw_parts(cfg as *const u8, size) };
    if let Some(at) = caller.iter().skip(ours).position(|&b| b != 0) {
        return Err(Failure::invalid(format!(
            "`{}` sets a field at byte {} that this library (ABI {}) does not know; upgrade the library",
            T::NAME,
            ours + at,
            super::UR_ABI_VERSION
        )));
    }
    let mut value = T::default_value();
    let known = size.min(ours);
    // SAFETY: `value` is a `#[repr(C)]` `T` of `ours` ≥ `known` bytes and `known` is a field boundary, so the copy
    // replaces whole fields of the default with the caller's (plain numbers and pointers: any bit pattern is valid).
    unsafe { std::ptr::copy_nonoverlapping(caller.as_ptr(), &mut value as *mut T as *mut u8, known) };
    Ok(value)
}

/// Converts a `struct_size` for a config's default.
pub(crate) fn size_of_u32<T>() -> u32 {
    std::mem::size_of::<T>() as u32
}

/// Maps an `int32_t` enum code to its value, or fails naming the field and the codes it takes.
pub(crate) fn code<T: Copy>(field: &str, value: i32, table: &[T]) -> FfiResult<T> {
    usize::try_from(value)
        .ok()
        .and_then(|i| table.get(i).copied())
        .ok_or_else(|| Failure::invalid(format!("`{field}` is {value}, expected a code from 0 to {}", table.len() - 1)))
}

/// A NUL-terminated UTF-8 string argument named `name`.
///
/// # Safety
/// `s` is NULL or NUL-terminated.
pub(crate) unsafe fn text(name: &str, s: *const c_char) -> FfiResult<String> {
    if s.is_null() {
        return Err(Failure::null(name));
    }
    // SAFETY: this function's contract.
    let s = unsafe { CStr::from_ptr(s) };
    Ok(s.to_str().map_err(|_| Failure::invalid(format!("`{name}` is not valid UTF-8")))?.to_string())
}

/// An optional NUL-terminated UTF-8 string argument named `name`: `None` for NULL.
///
/// # Safety
/// `s` is NULL or NUL-terminated.
pub(crate) unsafe fn optional_text(name: &str, s: *const c_char) -> FfiResult<Option<String>> {
    // SAFETY: this function's contract.
    (!s.is_null()).then(|| unsafe { text(name, s) }).transpose()
}

/// `count` items at `ptr` (NULL only when `count` is 0), as a slice.
///
/// # Safety
/// `ptr` is NULL or holds `count` readable values.
pub(crate) unsafe fn array<'a, T>(name: &str, ptr: *const T, count: usize) -> FfiResult<&'a [T]> {
    match (count, ptr.is_null()) {
        (0, _) => Ok(&[]),
        (_, true) => Err(Failure::null(name)),
        // SAFETY: this function's contract.
        (_, false) => Ok(unsafe { std::slice::from_raw_parts(ptr, count) }),
    }
}
