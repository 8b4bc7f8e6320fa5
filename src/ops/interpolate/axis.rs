//! The taps of one axis, as PyTorch's bilinear kernels form them (`area_pixel_compute_source_index`, then
//! `guard_index_and_lambda`). `kernels/interpolate.cu` has the same formulas, without fused multiply-adds, so both
//! devices pick the same taps.

use std::ops::Range;

/// One axis resized from `input` to `output` points.
#[derive(Clone, Copy)]
pub(super) struct Axis {
    input: usize,
    output: usize,
    /// `input / output` in f32.
    scale: f32,
}

/// The two input points an output point interpolates, and their weights.
#[derive(Clone, Copy)]
pub(super) struct Tap {
    pub i0: usize,
    pub i1: usize,
    pub l0: f32,
    pub l1: f32,
}

impl Axis {
    pub(super) fn new(input: usize, output: usize) -> Axis {
        Axis { input, output, scale: input as f32 / output as f32 }
    }

    pub(super) fn tap(&self, o: usize) -> Tap {
        let s = (self.scale * (o as f32 + 0.5) - 0.5).max(0.0);
        // s ≥ 0: truncation is the floor.
        let i0 = (s as usize).min(self.input - 1);
        let l1 = (s - i0 as f32).clamp(0.0, 1.0);
        Tap { i0, i1: if i0 + 1 < self.input { i0 + 1 } else { i0 }, l0: 1.0 - l1, l1 }
    }

    /// The first output whose `i0` is at least `k` (`output` if none): a binary search, `i0` growing with `o`.
    fn first_output_from(&self, k: usize) -> usize {
        let (mut lo, mut hi) = (0, self.output);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.tap(mid).i0 < k {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// The outputs whose taps reach input `i`: those with `i0` = `i − 1` (their `i1` is `i`) or `i`.
    pub(super) fn outputs_reaching(&self, i: usize) -> Range<usize> {
        self.first_output_from(i.saturating_sub(1))..self.first_output_from(i + 1)
    }

    /// The weight of input `i` in output tap `t` (both weights when both taps are `i`, at the last input).
    pub(super) fn weight(t: Tap, i: usize) -> f32 {
        (if t.i0 == i { t.l0 } else { 0.0 }) + (if t.i1 == i { t.l1 } else { 0.0 })
    }
}
