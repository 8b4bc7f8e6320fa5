//! The activations of a tower pass in an [`Arena`](crate::runtime::arena::Arena) (as Qwen2's): laid out for the
//! batch and reused by the next pass, which gets the arena back when the pass's [`Lease`] ends. The arena is the
//! tower's own, or a multimodal model's that lays these slots out beside its language model's.
//!
//! A training pass's slots come in two lists: what lives from the forward to the end of the backward (the residual
//! stream, each layer's activations, the patches), and scratch used only while the tower itself runs (the recomputed
//! layer, the backward's buffers), which a multimodal model overlays on its language model's activations.

use std::sync::Arc;

use super::layer::{Dims, GradScratch, LayerActivations};
use crate::model::views::next_view;
use crate::runtime::arena::{Lease, Slot};
use crate::runtime::{DType, Tensor};
use crate::Result;

/// Views of the arena. Field order matters: the views are dropped before the lease that keeps the arena.
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
    /// Bytes these slots span laid out back to back.
    bytes: usize,
    _lease: Arc<Lease>,
}

/// The shapes of a training pass's activations.
#[derive(Clone, Copy, Debug)]
pub(super) struct Shapes {
    pub dims: Dims,
    pub patches: [usize; 3],
    pub dtype: DType,
    pub layers: usize,
    pub recompute: bool,
}

impl Shapes {
    /// How many layers keep their own activations, and how many sets the recomputation shares.
    fn layer_sets(&self) -> (usize, usize) {
        if self.recompute {
            (0, self.layers.min(1))
        } else {
            (self.layers, 0)
        }
    }

    /// The slots the backward reads (the residual stream, each kept layer's activations, the patches), then the
    /// tower's scratch (the spare and the shared layer of a recomputation, the patches' gradient, the backward's
    /// buffers): the order [`Activations::from_views`] takes them in.
    pub fn slots(&self) -> (Vec<Slot>, Vec<Slot>) {
        let (d, dtype) = (&self.dims, self.dtype);
        let (kept_layers, shared_layers) = self.layer_sets();
        let mut kept = vec![Slot::new(&d.stream(), dtype); self.layers + 1];
        kept.extend((0..kept_layers).flat_map(|_| LayerActivations::slots(d, dtype)));
        kept.push(Slot::new(&self.patches, dtype));
        let mut scratch = vec![Slot::new(&d.stream(), dtype); usize::from(self.recompute)];
        scratch.extend((0..shared_layers).flat_map(|_| LayerActivations::slots(d, dtype)));
        scratch.push(Slot::new(&self.patches, dtype));
        scratch.extend(GradScratch::slots(d, dtype));
        (kept, scratch)
    }
}

impl Activations {
    /// The activations of `shapes` from the next views of an arena that `lease` keeps, in the order of
    /// [`Shapes::slots`] (the kept slots, then the scratch).
    pub fn from_views(
        views: &mut impl Iterator<Item = Tensor>,
        lease: Arc<Lease>,
        shapes: Shapes,
    ) -> Result<Activations> {
        let (kept, scratch) = shapes.slots();
        let bytes = crate::runtime::arena::Layout::from([kept, scratch].concat()).size_in_bytes()?;
        let (kept_layers, shared_layers) = shapes.layer_sets();
        let xs = (0..shapes.layers + 1).map(|_| next_view(views)).collect::<Result<Vec<_>>>()?;
        let mut layers = (0..kept_layers).map(|_| LayerActivations::from_views(views)).collect::<Result<Vec<_>>>()?;
        let patches = next_view(views)?;
        let spare = if shapes.recompute { Some(next_view(views)?) } else { None };
        for _ in 0..shared_layers {
            layers.push(LayerActivations::from_views(views)?);
        }
        let grad_patches = next_view(views)?;
        let grads = GradScratch::from_views(views)?;
        Ok(Activations { xs, layers, spare, patches, grad_patches, grads, bytes, _lease: lease })
    }

    /// Bytes the activations span.
    pub fn size_in_bytes(&self) -> usize {
        self.bytes
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
    _lease: Arc<Lease>,
}

impl InferenceActivations {
    /// The slots, in the order [`InferenceActivations::from_views`] takes them.
    pub fn slots(d: &Dims, patches: &[usize; 3], dtype: DType) -> Vec<Slot> {
        let mut slots = vec![Slot::new(&d.stream(), dtype); 3];
        slots.extend(LayerActivations::slots(d, dtype));
        slots.push(Slot::new(patches, dtype));
        slots
    }

    /// The activations of [`InferenceActivations::slots`] from the next views of an arena that `lease` keeps.
    pub fn from_views(views: &mut impl Iterator<Item = Tensor>, lease: Arc<Lease>) -> Result<Self> {
        let xs = [next_view(views)?, next_view(views)?];
        let broadcast = next_view(views)?;
        let layer = LayerActivations::from_views(views)?;
        let patches = next_view(views)?;
        Ok(InferenceActivations { xs, layer, patches, broadcast, _lease: lease })
    }
}
