//! Reuse of large freed host buffers. A training step allocates the same large tensors every time (fresh gradients,
//! activations); fresh pages from the system cost a page fault each on first touch — measured on 2 AMD EPYC cores,
//! a Qwen2-0.5B step with fresh f32 gradients spent more than half its time in the kernel's page clearing. Freed
//! buffers of at least [`MIN_CACHED_BYTES`] are kept here by size, up to a cap, and handed out again zeroed (a
//! memset of warm pages, many times cheaper than faulting new ones), as PyTorch's CUDA caching allocator does for
//! device memory.
//!
//! The cap is `UNIREWARD_HOST_CACHE_BYTES` (bytes; 0 turns the cache off), read once, or else a quarter of the
//! machine's memory. [`release_cached_memory`] hands everything back to the system.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use rayon::prelude::*;

/// Smaller buffers come from the allocator's own free lists without faults; caching them would only hold memory.
pub const MIN_CACHED_BYTES: usize = 1 << 20;

/// Buffers kept for reuse, by length in words.
#[derive(Default)]
struct Cache {
    buffers: HashMap<usize, Vec<Vec<u64>>>,
    bytes: usize,
}

static CACHE: Mutex<Option<Cache>> = Mutex::new(None);

fn capacity_bytes() -> usize {
    static CAP: OnceLock<usize> = OnceLock::new();
    *CAP.get_or_init(|| match std::env::var("UNIREWARD_HOST_CACHE_BYTES") {
        Ok(value) => value.trim().parse().unwrap_or(0),
        Err(_) => physical_memory_bytes().map_or(0, |total| total / 4),
    })
}

/// `MemTotal` of /proc/meminfo; `None` where there is no such file (the cache is then off unless asked for).
fn physical_memory_bytes() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: usize =
        text.lines().find_map(|line| line.strip_prefix("MemTotal:"))?.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

fn lock() -> std::sync::MutexGuard<'static, Option<Cache>> {
    // A panic while holding the lock leaves the map consistent (every update is one push, pop or subtraction).
    CACHE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// At least `words` zeroed words: the smallest cached buffer of that length up to twice it (its first `words`
/// cleared; a step's smaller buffers can so reuse a larger one it freed earlier instead of adding to the footprint),
/// or fresh zeroed memory from the allocator.
pub(super) fn zeroed_words(words: usize) -> Vec<u64> {
    if words * 8 >= MIN_CACHED_BYTES {
        let reused = lock().as_mut().and_then(|cache| {
            let fit = cache
                .buffers
                .iter()
                .filter(|(&len, buffers)| len >= words && len / 2 <= words && !buffers.is_empty())
                .map(|(&len, _)| len)
                .min()?;
            let buffer = cache.buffers.get_mut(&fit)?.pop()?;
            cache.bytes -= fit * 8;
            Some(buffer)
        });
        if let Some(mut buffer) = reused {
            buffer[..words].par_chunks_mut(1 << 15).for_each(|chunk| chunk.fill(0));
            return buffer;
        }
    }
    vec![0u64; words]
}

/// Keeps a freed buffer for reuse when it is large and fits under the cap; drops it otherwise.
pub(super) fn recycle(buffer: Vec<u64>) {
    let bytes = buffer.len() * 8;
    if bytes < MIN_CACHED_BYTES || buffer.capacity() != buffer.len() {
        return;
    }
    let mut guard = lock();
    let cache = guard.get_or_insert_with(Cache::default);
    if cache.bytes + bytes <= capacity_bytes() {
        cache.bytes += bytes;
        cache.buffers.entry(buffer.len()).or_default().push(buffer);
    }
}

/// Bytes of freed host buffers held for reuse.
pub fn cached_bytes() -> usize {
    lock().as_ref().map_or(0, |cache| cache.bytes)
}

/// Hands every cached buffer back to the system; returns the bytes released.
pub fn release_cached_memory() -> usize {
    lock().take().map_or(0, |cache| cache.bytes)
}

/// A zeroed f32 scratch buffer from the cache, given back to it when dropped: for an op's large temporaries (a
/// chunk's logits, an f32 accumulator of a bf16 gradient) that are not tensors.
pub struct F32Scratch {
    words: Vec<u64>,
    len: usize,
}

impl F32Scratch {
    pub fn zeroed(len: usize) -> F32Scratch {
        F32Scratch { words: zeroed_words(len.div_ceil(2)), len }
    }
}

impl std::ops::Deref for F32Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &bytemuck::cast_slice(&self.words)[..self.len]
    }
}

impl std::ops::DerefMut for F32Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut bytemuck::cast_slice_mut(&mut self.words)[..self.len]
    }
}

impl Drop for F32Scratch {
    fn drop(&mut self) {
        recycle(std::mem::take(&mut self.words));
    }
}
