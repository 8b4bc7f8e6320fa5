//! The activations of a forward pass in an [`Arena`](crate::runtime::arena::Arena), llm.c style: laid out for the
//! batch shape and reused by the next pass (the pass's [`Lease`] hands the arena back to its home when it ends).
//! The arena is the model's own, or a multimodal model's that lays these slots out beside its vision tower's.

use std::sync::Arc;

use super::layer::{Dims, GradScratch, LayerActivations};
use crate::model::views::next_view;
use crate::ops::rmsnorm::RmsNormOutput;
use crate::runtime::arena::{Layout, Lease, Slot};
use crate::runtime::{DType, Tensor};
use crate::Result;

/// Views of the arena. Field order matters: the views are dropped before the lease that keeps the arena.
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
    /// Bytes these slots span (the arena may hold more: a multimodal model's other parts).
    bytes: usize,
    _lease: Arc<Lease>,
}

/// The slots of a pass's activations and backward scratch, in the order [`Activations::from_views`] takes them.
pub(super) fn slots(d: &Dims, dtype: DType, layers: usize, recompute: bool) -> Vec<Slot> {
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
    /// The activations of [`slots`]`(d, dtype, layers, recompute)` from the next `views` of an arena that `lease`
    /// keeps.
    pub fn from_views(
        views: &mut impl Iterator<Item = Tensor>,
        lease: Arc<Lease>,
        d: Dims,
        dtype: DType,
        layers: usize,
        recompute: bool,
    ) -> Result<Activations> {
        let bytes = Layout::from(slots(&d, dtype, layers, recompute)).size_in_bytes()?;
        let xs = (0..layers + 1).map(|_| next_view(views)).collect::<Result<Vec<_>>>()?;
        let spare = if recompute { Some(next_view(views)?) } else { None };
        let layers = (0..if recompute { 1 } else { layers })
            .map(|_| LayerActivations::from_views(views))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNormOutput { y: next_view(views)?, rstd: next_view(views)? };
        let grads = GradScratch::from_views(views)?;
        Ok(Activations { xs, layers, spare, norm, grads, bytes, _lease: lease })
    }

    /// Bytes the activations span in the arena.
    pub fn size_in_bytes(&self) -> usize {
        self.bytes
    }
}
