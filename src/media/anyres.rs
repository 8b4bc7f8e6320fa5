//! The geometry of LLaVA's "anyres" input (transformers' `select_best_resolution`, `get_patch_output_size` and
//! `_get_padding_size`, which the model's packing step repeats to know the tile grid): the grid resolution that keeps
//! most of the image's pixels and wastes least, the image's size scaled to fit it, and the padding that centres it.

use crate::{Error, Result};

/// `(height, width)` in pixels.
pub type Size = (usize, usize);

/// The candidate resolution that keeps the most of an image of `original` size once scaled (down or up) to fit,
/// ties broken by the least padding, the first candidate winning exact ties (so an image too elongated to keep a
/// whole row anywhere gets the first candidate, as in transformers).
pub fn select_best_resolution(original: Size, candidates: &[Size]) -> Result<Size> {
    let (original_height, original_width) = original;
    let mut best = None;
    let (mut max_effective, mut min_wasted) = (0, usize::MAX);
    for &(height, width) in candidates {
        let scale = (width as f64 / original_width as f64).min(height as f64 / original_height as f64);
        // Python's int(): truncation.
        let scaled = (original_width as f64 * scale) as usize * (original_height as f64 * scale) as usize;
        let effective = scaled.min(original_width * original_height);
        let wasted = width * height - effective;
        if effective > max_effective || (effective == max_effective && wasted < min_wasted) {
            (max_effective, min_wasted, best) = (effective, wasted, Some((height, width)));
        }
    }
    best.ok_or_else(|| Error::InvalidArgument("there are no grid pinpoints to choose from".into()))
}

/// The size of an `original` image scaled to fit `target` with its aspect ratio kept (the constrained side exactly,
/// the other rounded up and capped).
pub fn fitted_size(original: Size, target: Size) -> Size {
    let (original_height, original_width) = original;
    let (target_height, target_width) = target;
    let scale_w = target_width as f64 / original_width as f64;
    let scale_h = target_height as f64 / original_height as f64;
    if scale_w < scale_h {
        (((original_height as f64 * scale_w).ceil() as usize).min(target_height), target_width)
    } else {
        (target_height, ((original_width as f64 * scale_h).ceil() as usize).min(target_width))
    }
}

/// Top and left padding that centres `inner` in `outer` (the odd pixel goes to the bottom and right).
pub fn centring_offset(inner: Size, outer: Size) -> (usize, usize) {
    ((outer.0 - inner.0) / 2, (outer.1 - inner.1) / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_resolution_prefers_kept_pixels_then_least_waste() {
        let candidates = [(384, 384), (384, 768), (768, 384), (768, 768)];
        // 500 wide, 300 high: 768x384 (h x w) keeps less than 384x768.
        assert_eq!(select_best_resolution((300, 500), &candidates).unwrap(), (384, 768));
        assert_eq!(select_best_resolution((500, 300), &candidates).unwrap(), (768, 384));
        // Every candidate keeps the one pixel: the smallest wastes least.
        assert_eq!(select_best_resolution((1, 1), &candidates).unwrap(), (384, 384));
        assert_eq!(select_best_resolution((1, 30000), &[(16, 16), (32, 32)]).unwrap(), (16, 16));
        assert_eq!(fitted_size((1, 30000), (16, 16)), (1, 16));
        assert!(select_best_resolution((5, 5), &[]).unwrap_err().to_string().contains("no grid pinpoints"));
    }

    #[test]
    fn fitted_size_keeps_aspect_and_rounds_up() {
        assert_eq!(fitted_size((300, 500), (384, 768)), (384, 640));
        assert_eq!(fitted_size((33, 7), (48, 16)), (48, 11));
        assert_eq!(fitted_size((7, 33), (16, 48)), (11, 48));
        assert_eq!(centring_offset((11, 48), (16, 48)), (2, 0));
    }
}
