//! The command line's global allocator: mimalloc, which, while a [`PeakMeter`] runs, also counts the heap bytes
//! allocated since it started and their peak, so the CLI can report what each path really allocates. Outside a
//! measurement it only forwards: a shared counter updated on every allocation costs the training commands a tenth
//! of their time once two threads allocate (the counter's cache line moves between the cores on every call).

use std::alloc::{GlobalAlloc, Layout};

use mimalloc::MiMalloc as Heap;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};

pub struct PeakAlloc;

static METERING: AtomicBool = AtomicBool::new(false);
/// Bytes allocated minus bytes freed since the meter started (negative when more was freed than allocated).
static NET: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

/// Counts `grown` bytes allocated and `shrunk` bytes freed, while metering.
fn count(grown: usize, shrunk: usize) {
    if !METERING.load(Ordering::Acquire) {
        return;
    }
    // Layout sizes never exceed isize::MAX.
    let delta = grown as isize - shrunk as isize;
    let net = NET.fetch_add(delta, Ordering::Relaxed) + delta;
    PEAK.fetch_max(net, Ordering::Relaxed);
}

// SAFETY: every call forwards to mimalloc with the same arguments; the counters only observe.
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        let p = unsafe { Heap.alloc(layout) };
        if !p.is_null() {
            count(layout.size(), 0);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        let p = unsafe { Heap.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size(), 0);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged; `ptr` came from this allocator with `layout`.
        unsafe { Heap.dealloc(ptr, layout) };
        count(0, layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        let p = unsafe { Heap.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(new_size, layout.size());
        }
        p
    }
}

/// A measurement of the heap's growth: one runs at a time, from [`PeakMeter::start`] until it is dropped.
pub struct PeakMeter(());

impl PeakMeter {
    /// Starts a measurement from what is live now.
    pub fn start() -> Self {
        NET.store(0, Ordering::Relaxed);
        PEAK.store(0, Ordering::Relaxed);
        METERING.store(true, Ordering::Release);
        PeakMeter(())
    }

    /// The most bytes allocated at once beyond what was live when the measurement started.
    pub fn peak_extra(&self) -> usize {
        PEAK.load(Ordering::Relaxed).max(0) as usize
    }
}

impl Drop for PeakMeter {
    fn drop(&mut self) {
        METERING.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::hint::black_box;

    use super::*;

    /// A meter sees what is allocated while it runs, counts frees of older memory against it, and stops counting
    /// when dropped.
    #[test]
    fn a_meter_counts_the_growth_while_it_runs() {
        let older = black_box(vec![1u8; 4 << 20]);
        let meter = PeakMeter::start();
        drop(older);
        let block = black_box(vec![1u8; 3 << 20]);
        assert!(meter.peak_extra() < 1 << 20, "freeing older memory first: {}", meter.peak_extra());
        let more = black_box(vec![1u8; 5 << 20]);
        assert!(meter.peak_extra() >= 4 << 20, "{}", meter.peak_extra());
        drop((block, more));
        drop(meter);
        let meter = PeakMeter::start();
        let block = black_box(vec![1u8; 2 << 20]);
        assert!((2 << 20..3 << 20).contains(&meter.peak_extra()), "{}", meter.peak_extra());
        drop(meter);
        let unmetered = black_box(vec![1u8; 6 << 20]);
        assert!(!METERING.load(Ordering::Relaxed) && PEAK.load(Ordering::Relaxed) < 3 << 20);
        drop((block, unmetered));
    }
}
