//! `Arena`: one allocation carved into tensors, llm.c style. A model lays out its activations once for a batch
//! shape (each tensor 256-byte aligned, back to back) and reuses the memory on every step: no allocator traffic, no
//! fresh pages to fault in, and the footprint is known before the first op runs.
//!
//! On CUDA the views' work is queued on the stream current when they were made; an arena taken up on another stream
//! first waits for that one, so a pass on one stream never overwrites what a pass on another is still reading.

use std::sync::{Arc, Mutex};

use crate::runtime::cuda::{self, CudaBackend};
use crate::runtime::{DType, Device, Tensor};
use crate::{Error, Result};

/// Alignment of every tensor in the arena: enough for any vector load of any kernel.
const ALIGN: usize = 256;

/// The shape and dtype of one tensor of an arena.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    pub shape: Vec<usize>,
    pub dtype: DType,
}

impl Slot {
    pub fn new(shape: &[usize], dtype: DType) -> Slot {
        Slot { shape: shape.to_vec(), dtype }
    }

    fn size_in_bytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size_in_bytes()
    }
}

/// Each slot's byte offset, 256-byte aligned and back to back, and the bytes they span.
fn layout(slots: &[Slot]) -> Result<(Vec<usize>, usize)> {
    let mut offsets = Vec::with_capacity(slots.len());
    let mut end = 0usize;
    for slot in slots {
        offsets.push(end);
        end = end
            .checked_add(slot.size_in_bytes())
            .and_then(|e| e.checked_next_multiple_of(ALIGN))
            .ok_or_else(|| Error::Shape("the arena's layout overflows".into()))?;
    }
    Ok((offsets, end))
}

/// Where a model keeps its activation arena between passes (a pass takes it and hands it back when it drops).
pub type ArenaHome = Arc<Mutex<Option<Arena>>>;

/// One buffer holding a list of tensors.
pub struct Arena {
    /// 8-byte words, so that the CPU buffer is aligned for every dtype; CUDA allocations are 256-byte aligned.
    buffer: Tensor,
    slots: Vec<Slot>,
    offsets: Vec<usize>,
    /// Bytes the current layout spans (the buffer may be larger: laid out for a larger batch before).
    used: usize,
    /// On CUDA, the backend (stream) the last views were made on.
    last_stream: Option<Arc<CudaBackend>>,
}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena")
            .field("device", &self.buffer.device())
            .field("bytes", &self.buffer.size_in_bytes())
            .field("used", &self.used)
            .field("slots", &self.slots.len())
            .finish()
    }
}

impl Arena {
    /// A zeroed buffer laid out for `slots` on `device`.
    pub fn new(slots: Vec<Slot>, device: Device) -> Result<Arena> {
        let (offsets, used) = layout(&slots)?;
        let buffer = Tensor::zeros(&[used.div_ceil(8).max(1)], DType::I64, device)?;
        Ok(Arena { buffer, slots, offsets, used, last_stream: None })
    }

    /// `old` laid out for `slots` when it is on `device` and large enough (freed otherwise, before the new one is
    /// allocated), else a new arena.
    pub fn reuse_or_new(old: Option<Arena>, slots: Vec<Slot>, device: Device) -> Result<Arena> {
        if let Some(mut arena) = old.filter(|a| a.device() == device) {
            if arena.relayout(slots.clone())? {
                return Ok(arena);
            }
        }
        Arena::new(slots, device)
    }

    /// Lays `slots` out over the same buffer if they fit in it (a batch no larger than the one the arena was made
    /// for); returns whether they did. The memory keeps whatever the previous layout left in it.
    pub fn relayout(&mut self, slots: Vec<Slot>) -> Result<bool> {
        let (offsets, used) = layout(&slots)?;
        if used > self.buffer.size_in_bytes() {
            return Ok(false);
        }
        (self.slots, self.offsets, self.used) = (slots, offsets, used);
        Ok(true)
    }

    /// The layout the arena was made for.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// Bytes of the buffer.
    pub fn size_in_bytes(&self) -> usize {
        self.buffer.size_in_bytes()
    }

    /// Bytes the current layout spans (at most [`Arena::size_in_bytes`]).
    pub fn used_bytes(&self) -> usize {
        self.used
    }

    pub fn device(&self) -> Device {
        self.buffer.device()
    }

    /// One tensor per slot, in layout order, over the arena's memory (the previous step's values, or zeros). On
    /// CUDA, when the current stream is not the one the last views were made on, waits for that stream first.
    ///
    /// # Safety
    /// The tensors borrow the arena's buffer: they must be dropped before the arena is dropped or `views` is called
    /// again. Distinct slots never overlap; two tensors made (by the caller) over the same slot must not be written
    /// while the other is used.
    pub unsafe fn views(&mut self) -> Result<Vec<Tensor>> {
        let device = self.buffer.device();
        let base = match device {
            Device::Cpu => self.buffer.as_mut_slice::<i64>()?.as_mut_ptr() as u64,
            Device::Cuda(ordinal) => {
                let current = cuda::backend(ordinal)?;
                if let Some(last) = self.last_stream.replace(current.clone()) {
                    if last.stream().cu_stream() != current.stream().cu_stream() {
                        last.synchronize()?;
                    }
                }
                self.buffer.cuda_ptr_mut()?.0
            }
        };
        self.slots
            .iter()
            .zip(&self.offsets)
            .map(|(slot, &offset)| {
                // SAFETY: [offset, offset + slot bytes) lies inside the buffer (the layout of `new`), is aligned
                // to 256 bytes, and is disjoint from every other slot; the caller keeps the arena alive.
                unsafe { Tensor::from_raw_parts(base + offset as u64, &slot.shape, slot.dtype, device) }
            })
            .collect()
    }
}
