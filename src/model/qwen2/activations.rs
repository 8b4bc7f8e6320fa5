//! The activations of a forward pass in one [`Arena`], llm.c style: laid out for the batch shape and reused by the
//! next pass (a pass hands its arena back to the model when it ends).

use super::layer::{Dims, GradScratch, LayerActivations};
use crate::model::views::next_view;
use crate::ops::rmsnorm::RmsNormOutput;
use crate::runtime::arena::{Arena, Slot};
use crate::runtime::{DType, Device, Tensor};
use crate::Result;

/// Views of the arena. Field order matters: the views are dropped before the arena they borrow.
#[derive(Debug)]
pub(super) struct Activations {
    /// The residual stream [N,T,H] entering each layer, then the final norm's input (L + 1 tensors).
    pub xs: Vec<Tensor>,
    /// Each layer's activations; with recomputation, one set that every layer reuses.
    pub layers: Vec<LayerActivations>,
    /// With recomputation: where a recomputed layer writes its (unused) output.
    pub spare: Option<Tensor>,
    /// The final norm: `norm.y` is the hidden states the LM head reads.
    pub norm: RmsNormOutput,
    pub grads: GradScratch,
    arena: Arena,
}

fn slots(d: &Dims, dtype: DType, layers: usize, recompute: bool) -> Vec<Slot> {
    let stream = Slot::new(&d.stream(), dtype);
    let mut slots = vec![stream.clone(); layers + 1 + usize::from(recompute)];
    for _ in 0..if recompute { 1 } else { layers } {
        slots.extend(LayerActivations::slots(d, dtype));
    }
    slots.push(stream);
    slots.push(Slot::new(&[d.n * d.t], DType::F32));
    slots.extend(GradScratch::slots(d, dtype));
    slots
}

impl Activations {
    /// Activations for `dims`, in `reuse` when it is on `device` and large enough, else in a new arena.
    pub fn new(
        reuse: Option<Arena>,
        d: Dims,
        dtype: DType,
        layers: usize,
        recompute: bool,
        device: Device,
    ) -> Result<Activations> {
        let slots = slots(&d, dtype, layers, recompute);
        let mut arena = Arena::reuse_or_new(reuse, slots, device)?;
        // SAFETY: the views are stored beside the arena, in fields dropped before it, handed out only by
        // reference, and dropped by `into_arena` before the arena leaves; the arena is not laid out again while
        // they live.
        let mut views = unsafe { arena.views()? }.into_iter();
        let xs = (0..layers + 1).map(|_| next_view(&mut views)).collect::<Result<Vec<_>>>()?;
        let spare = if recompute { Some(next_view(&mut views)?) } else { None };
        let layers = (0..if recompute { 1 } else { layers })
            .map(|_| LayerActivations::from_views(&mut views))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNormOutput { y: next_view(&mut views)?, rstd: next_view(&mut views)? };
        let grads = GradScratch::from_views(&mut views)?;
        Ok(Activations { xs, layers, spare, norm, grads, arena })
    }

    /// Bytes the activations span in the arena.
    pub fn size_in_bytes(&self) -> usize {
        self.arena.used_bytes()
    }

    /// The arena, once every view of it is gone.
    pub fn into_arena(self) -> Arena {
        let Activations { xs, layers, spare, norm, grads, arena } = self;
        drop((xs, layers, spare, norm, grads));
        arena
    }
}
