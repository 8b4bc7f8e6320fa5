//! The one activation arena of a LLaVA pass: the vision tower's activations, the projector's, the packed features,
//! the input embeddings and the language model's activations and backward scratch, laid out once for the batch and
//! reused by the next pass (the pass's [`Lease`] hands the arena back to the model when the pass ends).
//!
//! ```text
//! kept      tower (what its backward reads; a frozen tower's features) │ projector pre-activation, activation │ embeds
//! overlay   vision scratch: tower scratch │ projected │ packed │ grad packed │ grad projected │ the projector's
//!           saved activations' grads │ grad features
//!           ── or ──  language model: activations │ backward scratch
//! ```
//!
//! The kept slots live from the forward to the end of the backward. The two alternatives of the overlay share one
//! region because their lifetimes never meet: the vision scratch is used while the tower, projector and packing run
//! (in the forward, before the language model's pass, and in the backward, after the language model's backward has
//! consumed its pass), the language model's slots only in between. The peak is the kept slots plus the larger
//! alternative, instead of the sum of all three.

use std::sync::Arc;

use crate::model::siglip::SiglipVisionTower;
use crate::model::{ForwardOptions, Qwen2Model};
use crate::runtime::arena::{ArenaHome, Layout, Lease, Slot};
use crate::runtime::{DType, Device, Tensor};
use crate::Result;

use super::projector::ProjectorActivations;

/// The sizes a pass's arena is laid out for.
pub(super) struct PassShape {
    /// `[N, T]` tokens.
    pub tokens: (usize, usize),
    /// Tiles and frames through the tower (0: no media).
    pub tiles: usize,
    /// Packed feature rows.
    pub packed_rows: usize,
    pub opts: ForwardOptions,
    /// Whether the tower keeps its activations for a backward (else it is encoded, frozen).
    pub tower_backward: bool,
    /// Whether the language model runs in the arena (else only the embeddings are made: a prompt's prefill).
    pub language_model: bool,
}

/// The parts a LLaVA pass's arena is made of.
pub(super) struct Parts<'a> {
    pub tower: &'a SiglipVisionTower,
    pub language_model: &'a Qwen2Model,
    pub dtype: DType,
    pub device: Device,
}

/// The vision half's views.
pub(super) struct VisionViews {
    /// The tower's views (kept, then scratch) for [`SiglipVisionTower::forward_in`] or, when frozen,
    /// [`SiglipVisionTower::encode_in`]'s scratch.
    pub tower: Vec<Tensor>,
    /// A frozen tower's features `[K,P,C]`.
    pub features: Option<Tensor>,
    pub projector: ProjectorActivations,
    /// `[K,P,H]`: the projector's output.
    pub projected: Tensor,
    /// `[R,H]`: the packed features, and their gradient.
    pub packed: Tensor,
    pub grad_packed: Tensor,
    /// `[K,P,H]`: the gradients of the projector's output and of its two saved activations.
    pub grad_projected: Tensor,
    pub projector_grads: ProjectorActivations,
    /// `[K,P,C]`: the gradient of the tower's features.
    pub grad_features: Tensor,
}

/// One pass's views, by part, and the lease that keeps the arena (dropped last: every holder of a view keeps a clone).
pub(super) struct PassViews {
    pub vision: Option<VisionViews>,
    /// `[N,T,H]`: the language model's input embeddings.
    pub embeds: Tensor,
    /// The language model's views, for [`Qwen2Model::forward_embeds_in`].
    pub language_model: Vec<Tensor>,
    pub lease: Arc<Lease>,
}

/// The vision slots: kept (the tower's, the projector's two) and scratch (the tower's, then the projected output,
/// the packed features and their gradient, the gradients of the projected output and of the projector's two saved
/// activations, the gradient of the features).
fn vision_slots(parts: &Parts<'_>, shape: &PassShape) -> (Vec<Slot>, Vec<Slot>) {
    let (tower, dtype, k) = (parts.tower, parts.dtype, shape.tiles);
    let (p, c, h) = (tower.config.num_patches(), tower.config.hidden_size, parts.language_model.config.hidden_size);
    let (features, projected) = (Slot::new(&[k, p, c], dtype), Slot::new(&[k, p, h], dtype));
    let (mut kept, mut scratch) = if shape.tower_backward {
        tower.activation_slots(k, shape.opts)
    } else {
        (vec![features.clone()], tower.inference_slots(k))
    };
    kept.extend([projected.clone(), projected.clone()]);
    let packed = Slot::new(&[shape.packed_rows, h], dtype);
    scratch.extend([projected.clone(), packed.clone(), packed]);
    scratch.extend([projected.clone(), projected.clone(), projected, features]);
    (kept, scratch)
}

/// Lays out (in the arena `home` holds, or a new one) and views the arena of a pass of `shape`.
///
/// # Safety
/// The views of the vision scratch and those of the language model share memory: the caller uses them in turn, as
/// the module's lifetimes say, and drops every view before the last clone of the lease.
pub(super) unsafe fn take(home: &ArenaHome, parts: &Parts<'_>, shape: &PassShape) -> Result<PassViews> {
    let (n, t) = shape.tokens;
    let (kept, scratch) = if shape.tiles > 0 { vision_slots(parts, shape) } else { (Vec::new(), Vec::new()) };
    let language_model =
        if shape.language_model { parts.language_model.activation_slots((n, t), shape.opts) } else { Vec::new() };
    let hidden = parts.language_model.config.hidden_size;
    let (kept_count, scratch_count) = (kept.len(), scratch.len());
    let mut layout = Layout::from(kept);
    layout.extend([Slot::new(&[n, t, hidden], parts.dtype)]);
    layout.overlay(vec![scratch, language_model]);
    // SAFETY: the caller's promise, passed on.
    let (views, lease) = unsafe { Lease::take(home, layout, parts.device)? };
    let mut views = views.into_iter();
    let mut next = |count: usize| views.by_ref().take(count).collect::<Vec<_>>();
    let kept_views = next(kept_count);
    let embeds = next(1).pop().expect("the layout holds the embeddings");
    let scratch_views = next(scratch_count);
    let language_model = next(usize::MAX);
    let vision = (shape.tiles > 0).then(|| split_vision(kept_views, scratch_views, shape));
    Ok(PassViews { vision, embeds, language_model, lease })
}

/// The vision views by part, from the kept and scratch views in the order of [`vision_slots`].
fn split_vision(mut kept: Vec<Tensor>, mut scratch: Vec<Tensor>, shape: &PassShape) -> VisionViews {
    let pop = |views: &mut Vec<Tensor>| views.pop().expect("the layout holds every vision slot");
    let grad_features = pop(&mut scratch);
    let projector_grads = ProjectorActivations { activation: pop(&mut scratch), pre_activation: pop(&mut scratch) };
    let grad_projected = pop(&mut scratch);
    let grad_packed = pop(&mut scratch);
    let packed = pop(&mut scratch);
    let projected = pop(&mut scratch);
    let activation = pop(&mut kept);
    let pre_activation = pop(&mut kept);
    let features = if shape.tower_backward { None } else { Some(pop(&mut kept)) };
    kept.extend(scratch);
    VisionViews {
        tower: kept,
        features,
        projector: ProjectorActivations { pre_activation, activation },
        projected,
        packed,
        grad_packed,
        grad_projected,
        projector_grads,
        grad_features,
    }
}
