//! `Arena`: one allocation carved into tensors, llm.c style. A model lays out its activations once for a batch
//! shape (each tensor 256-byte aligned, back to back) and reuses the memory on every step: no allocator traffic, no
//! fresh pages to fault in, and the footprint is known before the first op runs.
//!
//! A [`Layout`] may overlay slots whose lifetimes never meet (they share one region, the larger's size), and a
//! [`Lease`] lends one arena to several passes at once (a multimodal model's parts) and hands it back to its
//! [`ArenaHome`] when the last is done.
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

/// What an arena holds, in order: slots laid out back to back, and overlays, whose alternatives (lists of slots)
/// all start where the overlay starts, so that the overlay spans only its largest alternative.
///
/// An overlay is how a pass reuses memory between slots whose lifetimes do not overlap: the slots of one alternative
/// must all be dead whenever a slot of another is live (say, a vision tower's scratch, used before and after the
/// language model's pass, against the language model's activations). The arena cannot check this: whoever takes the
/// views promises it (see [`Arena::views`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Slot(Slot),
    Overlay(Vec<Vec<Slot>>),
}

impl From<Vec<Slot>> for Layout {
    fn from(slots: Vec<Slot>) -> Layout {
        Layout { parts: slots.into_iter().map(Part::Slot).collect() }
    }
}

impl Layout {
    /// Appends `slots` back to back.
    pub fn extend(&mut self, slots: impl IntoIterator<Item = Slot>) {
        self.parts.extend(slots.into_iter().map(Part::Slot));
    }

    /// Appends an overlay of `alternatives`; their views come after the previous parts', alternative by
    /// alternative, in order.
    pub fn overlay(&mut self, alternatives: Vec<Vec<Slot>>) {
        self.parts.push(Part::Overlay(alternatives));
    }

    /// Every slot in view order (overlays' alternatives one after another).
    fn slots(&self) -> Vec<Slot> {
        let mut slots = Vec::new();
        for part in &self.parts {
            match part {
                Part::Slot(slot) => slots.push(slot.clone()),
                Part::Overlay(alternatives) => slots.extend(alternatives.iter().flatten().cloned()),
            }
        }
        slots
    }

    /// Each slot's byte offset in view order (256-byte aligned) and the bytes the layout spans.
    fn offsets(&self) -> Result<(Vec<usize>, usize)> {
        let overflow = || Error::Shape("the arena's layout overflows".into());
        let after = |start: usize, slot: &Slot| {
            start.checked_add(slot.size_in_bytes()).and_then(|e| e.checked_next_multiple_of(ALIGN)).ok_or_else(overflow)
        };
        let mut offsets = Vec::new();
        let mut end = 0usize;
        for part in &self.parts {
            match part {
                Part::Slot(slot) => {
                    offsets.push(end);
                    end = after(end, slot)?;
                }
                Part::Overlay(alternatives) => {
                    let start = end;
                    for alternative in alternatives {
                        let mut alternative_end = start;
                        for slot in alternative {
                            offsets.push(alternative_end);
                            alternative_end = after(alternative_end, slot)?;
                        }
                        end = end.max(alternative_end);
                    }
                }
            }
        }
        Ok((offsets, end))
    }

    /// Bytes the layout spans.
    pub fn size_in_bytes(&self) -> Result<usize> {
        Ok(self.offsets()?.1)
    }
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
    pub fn new(layout: impl Into<Layout>, device: Device) -> Result<Arena> {
        let layout = layout.into();
        let (offsets, used) = layout.offsets()?;
        let buffer = Tensor::zeros(&[used.div_ceil(8).max(1)], DType::I64, device)?;
        Ok(Arena { buffer, slots: layout.slots(), offsets, used, last_stream: None })
    }

    /// `old` laid out for `slots` when it is on `device` and large enough (freed otherwise, before the new one is
    /// allocated), else a new arena.
    pub fn reuse_or_new(old: Option<Arena>, layout: impl Into<Layout>, device: Device) -> Result<Arena> {
        let layout = layout.into();
        if let Some(mut arena) = old.filter(|a| a.device() == device) {
            if arena.relayout(layout.clone())? {
                return Ok(arena);
            }
        }
        Arena::new(layout, device)
    }

    /// Lays `slots` out over the same buffer if they fit in it (a batch no larger than the one the arena was made
    /// for); returns whether they did. The memory keeps whatever the previous layout left in it.
    pub fn relayout(&mut self, layout: impl Into<Layout>) -> Result<bool> {
        let layout = layout.into();
        let (offsets, used) = layout.offsets()?;
        if used > self.buffer.size_in_bytes() {
            return Ok(false);
        }
        (self.slots, self.offsets, self.used) = (layout.slots(), offsets, used);
        Ok(true)
    }

    /// The slots of the layout the arena was made for, in view order.
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
    /// again. Slots never overlap, except those of different alternatives of one overlay ([`Layout::overlay`]): of
    /// those, only one alternative's views may be used between the writes of one and the reads of another (the
    /// caller's lifetimes make them dead in turn). Two tensors made (by the caller) over the same slot must not be
    /// written while the other is used.
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
                // SAFETY: [offset, offset + slot bytes) lies inside the buffer (the layout of `new`) and is aligned
                // to 256 bytes; it overlaps only slots of other alternatives of its overlay, which the caller uses
                // in turn; the caller keeps the arena alive.
                unsafe { Tensor::from_raw_parts(base + offset as u64, &slot.shape, slot.dtype, device) }
            })
            .collect()
    }
}

/// The next views of a lent arena, in the order its layout gives them, and a clone of the lease that keeps it: what a
/// model's forward takes to lay its activations out in an arena someone else laid out.
pub type LentViews<'a> = (&'a mut dyn Iterator<Item = Tensor>, Arc<Lease>);

/// An arena lent to the passes that view it. Each pass keeps its views and a clone of the lease, declared after the
/// views so that they drop first; when the last clone drops, the arena goes back to its home for the next pass. One
/// lease can serve several passes (a multimodal model's vision tower and language model share one arena).
#[derive(Debug)]
pub struct Lease {
    /// Present until the lease drops.
    arena: Option<Arena>,
    home: ArenaHome,
}

impl Lease {
    /// The arena `home` holds (or a new one, when it holds none on `device` large enough) laid out for `layout`, its
    /// views in view order, and the lease that hands it back to `home`.
    ///
    /// # Safety
    /// Every view must be dropped before the last clone of the lease, and the views must be used as [`Arena::views`]
    /// requires (the alternatives of an overlay in turn).
    pub unsafe fn take(
        home: &ArenaHome,
        layout: impl Into<Layout>,
        device: Device,
    ) -> Result<(Vec<Tensor>, Arc<Lease>)> {
        let reuse = home.lock().ok().and_then(|mut home| home.take());
        let mut arena = Arena::reuse_or_new(reuse, layout, device)?;
        // SAFETY: the caller drops the views before the lease that owns the arena, and uses them as `views` requires.
        let views = unsafe { arena.views()? };
        Ok((views, Arc::new(Lease { arena: Some(arena), home: home.clone() })))
    }

    fn arena(&self) -> &Arena {
        self.arena.as_ref().expect("a lease holds its arena until it drops")
    }

    /// Bytes the current layout spans.
    pub fn used_bytes(&self) -> usize {
        self.arena().used_bytes()
    }

    /// Bytes of the arena's buffer (at least [`Lease::used_bytes`]: more after a larger pass).
    pub fn size_in_bytes(&self) -> usize {
        self.arena().size_in_bytes()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let (Some(arena), Ok(mut home)) = (self.arena.take(), self.home.lock()) {
            *home = Some(arena);
        }
    }
}
