//! The context handle, and the checked reading of versioned config structs.

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

/// A config struct that starts with `uint32_t struct_size`.
pub(crate) trait Versioned: Copy {
    /// The C name, for messages.
    const NAME: &'static str;
    fn default_value() -> Self;
}

/// Reads a config: NULL means the defaults; otherwise `struct_size` must be the size this library knows (ABI 1).
///
/// # Safety
/// `cfg` is NULL or points to a readable `T`.
pub(crate) unsafe fn read_config<T: Versioned>(cfg: *const T) -> FfiResult<T> {
    if cfg.is_null() {
        return Ok(T::default_value());
    }
    // SAFETY: this function's contract; every `Versioned` struct is `#[repr(C)]` and starts with its `u32` size.
    let size = unsafe { *(cfg as *const u32) } as usize;
    if size != std::mem::size_of::<T>() {
        return Err(Failure::invalid(format!(
            "`{}.struct_size` is {size}, expected {}: initialise the struct with {}_default()",
            T::NAME,
            std::mem::size_of::<T>(),
            T::NAME
        )));
    }
    // SAFETY: this function's contract, and the caller's struct is as large as `T`.
    Ok(unsafe { *cfg })
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
