//! LLaVA-OneVision's packing of projected vision features into the language model's input, forward and backward,
//! as transformers 4.57.1's `LlavaOnevisionModel` does it (and LLaVA-NeXT's `llava_arch.py`, which differs only in
//! `unpad_image`'s rounding: see [`UnpadRounding`]):
//!
//! - **anyres image** (more than one tile): the base tile's features, then the grid tiles arranged as the image
//!   (`[rows·side, cols·side]` patches), cut back to the original aspect ratio (`unpad_image`), bilinearly
//!   down-sampled to `[int(h // r), int(w // r)]` when `r = √(h·w / (N·side²)) > 1.1` under `anyres_max_N`, and
//!   `image_newline` after every grid row;
//! - **single-tile image** (each of several images in one sample): its features and one newline;
//! - **video**: each frame's `side × side` grid bilinearly pooled to `⌈side/2⌉ × ⌈side/2⌉` (`apply_pooling`), all
//!   frames in order, then one newline;
//! - **scatter** ([`ScatterMap`]): the images' packed rows at the image placeholder tokens and the videos' at the
//!   video placeholder tokens, in token order over the batch (`masked_scatter`).
//!
//! Everything is row copies ([`crate::ops::rows`]) and the bilinear op, on the tensors' device. The backward runs
//! the same copies in reverse (each feature row lands in at most one packed row, so copies suffice), the bilinear
//! backward for resized grids, and sums the newline rows for `image_newline`'s gradient. Rows a packing drops (cut
//! by unpadding, the first row under the `default` selection) get a zero gradient.

mod config;
mod geometry;
mod plan;
mod scatter;

pub use config::{FeatureSelect, PackingConfig, UnpadRounding, MAX_GRID_SIDE};
pub use plan::{Media, PackingPlan};
pub use scatter::{PlaceholderTokens, ScatterMap};

use crate::ops::check;
use crate::ops::interpolate::{bilinear, bilinear_backward};
use crate::ops::rows::{copy_rows, sum_rows_into};
use crate::runtime::Tensor;
use crate::{Error, Result};

/// Checks `features` `[tiles, rows_per_tile, C]` against the plan and returns `C`.
fn feature_channels(plan: &PackingPlan, features: &Tensor) -> Result<usize> {
    check::float("features", features)?;
    let &[tiles, rows, c] = features.shape() else {
        return Err(Error::Shape(format!("`features` must be [tiles, rows, C], got shape {:?}", features.shape())));
    };
    if [tiles, rows] != plan.features_shape() {
        return Err(Error::Shape(format!(
            "`features` is {:?} but the packing plan was made for {:?} tiles x rows",
            features.shape(),
            plan.features_shape()
        )));
    }
    check::non_empty("features (C)", c)?;
    Ok(c)
}

/// `[0, 1, …, n)`.
fn iota(n: usize) -> Vec<usize> {
    (0..n).collect()
}

/// The packed features `[plan.rows(), C]` (images' rows, then videos') of projected `features`
/// `[tiles, rows_per_tile, C]` and `image_newline` `[C]`, in the features' dtype and on their device.
pub fn pack(plan: &PackingPlan, features: &Tensor, newline: &Tensor) -> Result<Tensor> {
    let c = feature_channels(plan, features)?;
    let mut packed = Tensor::zeros(&[plan.rows(), c], features.dtype(), features.device())?;
    pack_into(plan, features, newline, &mut packed)?;
    Ok(packed)
}

/// [`pack`] into `packed` (`[plan.rows(), C]`, the features' dtype and device, e.g. a view of a pass's arena), every
/// row of which is written: the plan gives each packed row exactly one source.
pub fn pack_into(plan: &PackingPlan, features: &Tensor, newline: &Tensor, packed: &mut Tensor) -> Result<()> {
    let c = feature_channels(plan, features)?;
    check::shape("image_newline", newline, &[c])?;
    let device = check::same_device(&[("features", features), ("image_newline", newline)])?;
    check::output("packed", packed, &[plan.rows(), c], features.dtype(), device)?;
    copy_rows(features, &plan.direct_src, packed, &plan.direct_dst)?;
    copy_rows(newline, &vec![0; plan.newline_dst.len()], packed, &plan.newline_dst)?;
    for r in &plan.resamples {
        let mut grid = Tensor::zeros(&[r.n, r.input[0], r.input[1], c], features.dtype(), device)?;
        copy_rows(features, &r.src, &mut grid, &iota(r.src.len()))?;
        let resized = bilinear(&grid, r.output)?;
        copy_rows(&resized, &iota(r.dst.len()), packed, &r.dst)?;
    }
    Ok(())
}

/// Gradients of a packing.
#[derive(Debug)]
pub struct PackingGrads {
    /// `[tiles, rows_per_tile, C]`: the gradient of the projected features (zero for rows the packing drops).
    pub features: Tensor,
    /// `[C]`.
    pub newline: Tensor,
}

/// `grad_packed`'s `[rows, C]` checked against the plan; returns `C`.
fn packed_channels(plan: &PackingPlan, grad_packed: &Tensor) -> Result<usize> {
    check::float("grad_packed", grad_packed)?;
    let &[rows, c] = grad_packed.shape() else {
        return Err(Error::Shape(format!("`grad_packed` must be [rows, C], got shape {:?}", grad_packed.shape())));
    };
    if rows != plan.rows() {
        return Err(Error::Shape(format!("`grad_packed` has {rows} rows but the packing plan makes {}", plan.rows())));
    }
    check::non_empty("grad_packed (C)", c)?;
    Ok(c)
}

/// The gradients of `Σ grad_packed · pack(plan, features, newline)` from `grad_packed` `[plan.rows(), C]`, in its
/// dtype and on its device.
pub fn pack_backward(plan: &PackingPlan, grad_packed: &Tensor) -> Result<PackingGrads> {
    let c = packed_channels(plan, grad_packed)?;
    let (dtype, device) = (grad_packed.dtype(), grad_packed.device());
    let [tiles, rows_per_tile] = plan.features_shape();
    let mut grads = PackingGrads {
        features: Tensor::zeros(&[tiles, rows_per_tile, c], dtype, device)?,
        newline: Tensor::zeros(&[c], dtype, device)?,
    };
    pack_backward_into(plan, grad_packed, &mut grads.features, &mut grads.newline)?;
    Ok(grads)
}

/// [`pack_backward`] into `grad_features` (`[tiles, rows_per_tile, C]`) and `grad_newline` (`[C]`), in
/// `grad_packed`'s dtype and device, overwritten whole (they may hold garbage).
pub fn pack_backward_into(
    plan: &PackingPlan,
    grad_packed: &Tensor,
    grad_features: &mut Tensor,
    grad_newline: &mut Tensor,
) -> Result<()> {
    let c = packed_channels(plan, grad_packed)?;
    let (dtype, device) = (grad_packed.dtype(), grad_packed.device());
    let [tiles, rows_per_tile] = plan.features_shape();
    check::output("grad_features", grad_features, &[tiles, rows_per_tile, c], dtype, device)?;
    check::output("grad_newline", grad_newline, &[c], dtype, device)?;
    // Rows no packed row reads keep a zero gradient.
    grad_features.fill_zeros()?;
    copy_rows(grad_packed, &plan.direct_dst, grad_features, &plan.direct_src)?;
    for r in &plan.resamples {
        let mut grad_resized = Tensor::zeros(&[r.n, r.output[0], r.output[1], c], dtype, device)?;
        copy_rows(grad_packed, &r.dst, &mut grad_resized, &iota(r.dst.len()))?;
        let grad_grid = bilinear_backward(&grad_resized, r.input)?;
        copy_rows(&grad_grid, &iota(r.src.len()), grad_features, &r.src)?;
    }
    sum_rows_into(grad_packed, &plan.newline_dst, grad_newline)
}
