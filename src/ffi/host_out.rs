//! Host outputs of a call (a loss, an accuracy, a metrics struct): checked with the call's other arguments before
//! any work, written after it.

use bytemuck::NoUninit;

use super::context::{caller_size, Versioned};
use super::dlpack::Desc;
use super::status::{Failure, FfiResult};
use crate::Device;

/// A caller's host output: where it is and how many of its bytes this library writes.
pub(crate) struct HostOut<T> {
    name: &'static str,
    ptr: *mut T,
    /// The bytes written, from `skip` to `end`: a whole scalar; a metrics struct's fields that both the caller's
    /// header and this library know, never its `struct_size`.
    skip: usize,
    end: usize,
}

impl HostOut<f32> {
    /// A required host float.
    pub fn scalar(name: &'static str, ptr: *mut f32) -> FfiResult<Self> {
        if ptr.is_null() {
            return Err(Failure::null(name));
        }
        Ok(HostOut::optional_scalar(name, ptr).expect("checked non-NULL"))
    }

    /// An optional host float (NULL: not wanted).
    pub fn optional_scalar(name: &'static str, ptr: *mut f32) -> Option<Self> {
        (!ptr.is_null()).then_some(HostOut { name, ptr, skip: 0, end: std::mem::size_of::<f32>() })
    }
}

impl<T: Versioned + NoUninit> HostOut<T> {
    /// A struct with a leading `struct_size` that the caller sets (NULL: `None`), read and checked now: an older
    /// caller's struct gets the fields it has, a newer caller's fields past ours are left as they are.
    ///
    /// # Safety
    /// `ptr` is NULL or points to a readable `uint32_t`.
    pub unsafe fn versioned(name: &'static str, ptr: *mut T) -> FfiResult<Option<Self>> {
        if ptr.is_null() {
            return Ok(None);
        }
        // SAFETY: this function's contract; every `Versioned` struct is `#[repr(C)]` and starts with its `u32` size.
        let size = unsafe { *(ptr as *const u32) };
        let size = caller_size::<T>(size, &format!("set it to sizeof({}) before the call", T::NAME))?;
        let end = size.min(std::mem::size_of::<T>());
        Ok(Some(HostOut { name, ptr, skip: std::mem::size_of::<u32>(), end }))
    }
}

impl<T: NoUninit> HostOut<T> {
    /// Writes this library's part of `value`.
    ///
    /// # Safety
    /// The export's contract: the pointer given to the constructor is writable for the caller's `struct_size`
    /// bytes (a scalar's size for a scalar).
    pub unsafe fn write(&self, value: T) {
        let bytes = &bytemuck::bytes_of(&value)[self.skip..self.end];
        // SAFETY: `skip..end` lies inside the caller's memory (`end` ≤ its size, by this function's contract) and
        // falls on field boundaries of a padding-free struct; `value` is a local, so the two cannot overlap.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), (self.ptr as *mut u8).add(self.skip), bytes.len()) };
    }
}

/// Where a host output writes, for the overlap check: `[start, start + len)` of host memory.
#[derive(Clone, Copy)]
pub(crate) struct HostSpan {
    name: &'static str,
    start: u64,
    len: u64,
}

impl HostSpan {
    /// `len` bytes at `start` that a call writes (a caller's array, not a `HostOut`).
    pub fn new(name: &'static str, start: *const u8, len: usize) -> Self {
        HostSpan { name, start: start as u64, len: len as u64 }
    }
}

impl<T> HostOut<T> {
    pub fn span(&self) -> HostSpan {
        HostSpan { name: self.name, start: self.ptr as u64 + self.skip as u64, len: (self.end - self.skip) as u64 }
    }
}

/// A host output must not overlap a CPU tensor of the call (an input it would corrupt, or an output written over
/// it) nor another host output: the same rule as for output tensors.
pub(crate) fn check_host_outputs(host: &[Option<HostSpan>], descs: &[Option<&Desc>]) -> FfiResult {
    let host: Vec<HostSpan> = host.iter().flatten().copied().collect();
    let tensors = descs.iter().flatten().filter(|d| d.device == Device::Cpu);
    let others: Vec<HostSpan> =
        host.iter().copied().chain(tensors.map(|d| HostSpan { name: d.name, start: d.ptr, len: d.bytes() })).collect();
    for (i, out) in host.iter().enumerate() {
        let clash = others.iter().enumerate().find(|&(j, o)| {
            j != i && out.len > 0 && o.len > 0 && out.start < o.start + o.len && o.start < out.start + out.len
        });
        if let Some((_, other)) = clash {
            return Err(Failure::invalid(format!(
                "`{}` overlaps `{}`: an output must be separate memory",
                out.name, other.name
            )));
        }
    }
    Ok(())
}
