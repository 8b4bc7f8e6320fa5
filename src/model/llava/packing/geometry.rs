//! The grid arithmetic of transformers' `pack_image_features`, `unpad_image` and `apply_pooling`, in Python's own
//! float semantics where they matter.

use std::ops::Range;

use super::config::UnpadRounding;
use crate::media::Size;

/// The rows and columns of a `grid` (`[height, width]` in patches, padded to the tile grid) that `unpad_image` keeps
/// for an image of `original` `(height, width)` pixels: padding was added along the side whose aspect ratio is
/// short, and the same count is cut from both ends (so an odd leftover keeps one extra row or column).
pub(super) fn unpadded(grid: [usize; 2], original: Size, rounding: UnpadRounding) -> (Range<usize>, Range<usize>) {
    let [current_h, current_w] = grid;
    let (original_h, original_w) = (original.0 as f64, original.1 as f64);
    if original_w / original_h > current_w as f64 / current_h as f64 {
        let new_h = rounding.apply(original_h * (current_w as f64 / original_w)).min(current_h);
        let padding = (current_h - new_h) / 2;
        (padding..current_h - padding, 0..current_w)
    } else {
        let new_w = rounding.apply(original_w * (current_h as f64 / original_h)).min(current_w);
        let padding = (current_w - new_w) / 2;
        (0..current_h, padding..current_w - padding)
    }
}

/// Python's `a // b` for floats a ≥ 0, b > 0 (CPython's `float_floor_div`: from `fmod`, not `floor(a / b)`).
fn python_floor_div(a: f64, b: f64) -> f64 {
    let modulo = a % b;
    let div = (a - modulo) / b;
    if div == 0.0 {
        return 0.0;
    }
    let floor = div.floor();
    if div - floor > 0.5 {
        floor + 1.0
    } else {
        floor
    }
}

/// The size an unpadded `[h, w]` grid is down-sampled to under `anyres_max_N` with `side` patches a tile:
/// `ratio = √(h·w / (N·side²))`, and when `ratio > 1.1`, `[int(h // ratio), int(w // ratio)]`; `None` otherwise.
pub(super) fn downsampled(h: usize, w: usize, max_tiles: usize, side: usize) -> Option<[usize; 2]> {
    // In f64 as Python's ints then true division: N comes from a config and may be large.
    let ratio = ((h * w) as f64 / (max_tiles as f64 * (side * side) as f64)).sqrt();
    (ratio > 1.1).then(|| [python_floor_div(h as f64, ratio) as usize, python_floor_div(w as f64, ratio) as usize])
}

/// `apply_pooling`'s output side for a frame of `side` patches: `⌈side / 2⌉`.
pub(super) fn pooled(side: usize) -> usize {
    side.div_ceil(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpads_like_transformers() {
        // A 2×1 tile grid of 27-patch tiles for a 1000 wide × 400 high image: width fits, height padded.
        let (rows, cols) = unpadded([27, 54], (400, 1000), UnpadRounding::Transformers);
        // new_h = int(400 · 54/1000) = 21; padding 3.
        assert_eq!((rows, cols), (3..24, 0..54));
        // Tall: 400 wide × 1000 high in a 54×27 grid.
        let (rows, cols) = unpadded([54, 27], (1000, 400), UnpadRounding::Transformers);
        assert_eq!((rows, cols), (0..54, 3..24));
        // An odd leftover keeps the extra row: 27 − 20 = 7 → padding 3, rows 3..24 (21 rows).
        let (rows, _) = unpadded([27, 27], (200, 270), UnpadRounding::Transformers);
        assert_eq!(rows, 3..24);
    }

    #[test]
    fn downsamples_with_python_floor_division() {
        // 54×81 unpadded grid, anyres_max_2 with 27-patch tiles: ratio = √(4374/1458) = √3.
        let r = 3f64.sqrt();
        assert_eq!(downsampled(54, 81, 2, 27), Some([(54.0 / r).floor() as usize, (81.0 / r).floor() as usize]));
        assert_eq!(downsampled(27, 27, 1, 27), None);
        // ratio just over 1.1 triggers.
        assert!(downsampled(30, 30, 1, 27).is_some());
        assert_eq!(python_floor_div(7.0, 3.5), 2.0);
        assert_eq!(python_floor_div(1.0, 0.1), 9.0); // Python: 1 // 0.1 == 9.0
        assert_eq!(pooled(27), 14);
        assert_eq!(pooled(4), 2);
    }
}
