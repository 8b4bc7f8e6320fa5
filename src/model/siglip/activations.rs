//! The activations of a tower pass in one [`Arena`] (as Qwen2's): laid out for the batch and reused by the next
//! pass, which gets the arena back when a pass drops.

use super::layer::{Dims, GradScratch, LayerActivations};
use crate::model::views::next_view;
use crate::runtime::arena::{Arena, Slot};
use crate::runtime::{DType, Device, Tensor};
use crate::Result;

/// Views of the arena. Field order matters: the views are dropped before the arena they borrow.
#[derive(Debug)]
pub(super) struct Activations {
    /// The residual stream [N,P,H]: the embeddings, then each layer's output (L + 1 tensors); the last is the
    /// features.
    pub xs: Vec<Tensor>,
    /// Each layer's activations; with recomputation, one set that every layer reuses.
    pub layers: Vec<LayerActivations>,
    /// With recomputation: where a recomputed layer writes its (unused) output.
    pub spare: Option<Tensor>,
    /// The pixels cut into patches [N,P,C·p·p], and their gradient.
    pub patches: Tensor,
    pub grad_patches: Tensor,
    pub grads: GradScratch,
    arena: Arena,
}

fn slots(d: &Dims, patches: &[usize; 3], dtype: DType, layers: usize, recompute: bool) -> Vec<Slot> {
    let stream = Slot::new(&d.stream(), dtype);
    let mut slots = vec![stream; layers + 1 + usize::from(recompute)];
    for _ in 0..if recompute { layers.min(1) } else { layers } {
        slots.extend(LayerActivations::slots(d, dtype));
    }
    slots.extend(vec![Slot::new(patches, dtype); 2]);
    slots.extend(GradScratch::slots(d, dtype));
    slots
}

impl Activations {
    /// Activations for `d` and `patches`, in `reuse` when it is on `device` and large enough, else in a new arena.
    pub fn new(
        reuse: Option<Arena>,
        d: Dims,
        patches: [usize; 3],
        dtype: DType,
        layers: usize,
        recompute: bool,
        device: Device,
    ) -> Result<Activations> {
        let mut arena = Arena::reuse_or_new(reuse, slots(&d, &patches, dtype, layers, recompute), device)?;
        // SAFETY: the views are stored beside the arena, in fields dropped before it, handed out only by
        // reference, and dropped by `into_arena` before the arena leaves; the arena is not laid out again while
        // they live.
        let mut views = unsafe { arena.views()? }.into_iter();
        let xs = (0..layers + 1).map(|_| next_view(&mut views)).collect::<Result<Vec<_>>>()?;
        let spare = if recompute { Some(next_view(&mut views)?) } else { None };
        let layers = (0..if recompute { layers.min(1) } else { layers })
            .map(|_| LayerActivations::from_views(&mut views))
            .collect::<Result<Vec<_>>>()?;
        let (patches, grad_patches) = (next_view(&mut views)?, next_view(&mut views)?);
        let grads = GradScratch::from_views(&mut views)?;
        Ok(Activations { xs, layers, spare, patches, grad_patches, grads, arena })
    }

    /// Bytes the activations span in the arena.
    pub fn size_in_bytes(&self) -> usize {
        self.arena.used_bytes()
    }

    /// The arena, once every view of it is gone.
    pub fn into_arena(self) -> Arena {
        let Activations { xs, layers, spare, patches, grad_patches, grads, arena } = self;
        drop((xs, layers, spare, patches, grad_patches, grads));
        arena
    }
}

/// What a forward that no backward follows needs (a frozen tower's): two residual-stream buffers the layers write in
/// turn, one layer's scratch and the patches, in one arena. About `N·P·(3·H + layer scratch)` values instead of a
/// training pass's `N·P·(L·H + …)`.
#[derive(Debug)]
pub(super) struct InferenceActivations {
    /// The layer input and output, swapped after each layer.
    pub xs: [Tensor; 2],
    pub layer: LayerActivations,
    pub patches: Tensor,
    /// The position embeddings broadcast over the batch [N,P,H].
    pub broadcast: Tensor,
    arena: Arena,
}

impl InferenceActivations {
    /// Activations for `d` and `patches`, in `reuse` when it is on `device` and large enough, else in a new arena.
    pub fn new(reuse: Option<Arena>, d: Dims, patches: [usize; 3], dtype: DType, device: Device) -> Result<Self> {
        let mut slots = vec![Slot::new(&d.stream(), dtype); 3];
        slots.extend(LayerActivations::slots(&d, dtype));
        slots.push(Slot::new(&patches, dtype));
        let mut arena = Arena::reuse_or_new(reuse, slots, device)?;
        // SAFETY: as in `Activations::new`: the views live beside the arena in fields dropped before it, are handed
        // out only by reference, and are dropped by `into_arena` before the arena leaves.
        let mut views = unsafe { arena.views()? }.into_iter();
        let xs = [next_view(&mut views)?, next_view(&mut views)?];
        let broadcast = next_view(&mut views)?;
        let layer = LayerActivations::from_views(&mut views)?;
        let patches = next_view(&mut views)?;
        Ok(InferenceActivations { xs, layer, patches, broadcast, arena })
    }

    /// The arena, once every view of it is gone.
    pub fn into_arena(self) -> Arena {
        let InferenceActivations { xs, layer, patches, broadcast, arena } = self;
        drop((xs, layer, patches, broadcast));
        arena
    }
}
