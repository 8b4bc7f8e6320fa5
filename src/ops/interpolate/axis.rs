//! The taps of one axis, by the formula of PyTorch's CUDA bilinear kernel (`area_pixel_compute_source_index`, then
//! `guard_index_and_lambda`) in f32. `kernels/interpolate.cu` has the same formulas, without fused multiply-adds, so
//! both devices pick the same taps.

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
        if self.input == self.output {
            // PyTorch's CPU kernel leaves an axis of unchanged size alone: no zero-weight read of the next point (a
            // NaN there stays put).
            return Tap { i0: o, i1: o, l0: 1.0, l1: 0.0 };
        }
        let s = (self.scale * (o as f32 + 0.5) - 0.5).max(0.0);
        // s ≥ 0: truncation is the floor.
        let i0 = (s as usize).min(self.input - 1);
        let l1 = (s - i0 as f32).clamp(0.0, 1.0);
        Tap { i0, i1: if i0 + 1 < self.input { i0 + 1 } else { i0 }, l0: 1.0 - l1, l1 }
    }

    /// The first output whose tap satisfies `reached` (`output` if none), which must hold from some output on: a
    /// binary search, `i0` and `i1` growing with `o`.
    fn first_output(&self, reached: impl Fn(Tap) -> bool) -> usize {
        let (mut lo, mut hi) = (0, self.output);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if reached(self.tap(mid)) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        lo
    }

    /// The outputs whose taps read input `i` (`i0 ≤ i ≤ i1`): a contiguous range.
    pub(super) fn outputs_reaching(&self, i: usize) -> Range<usize> {
        self.first_output(|t| t.i1 >= i)..self.first_output(|t| t.i0 > i)
    }

    /// The weight of input `i` in output tap `t` (both weights when both taps are `i`, at the last input).
    pub(super) fn weight(t: Tap, i: usize) -> f32 {
        (if t.i0 == i { t.l0 } else { 0.0 }) + (if t.i1 == i { t.l1 } else { 0.0 })
    }
}

impl Tap {
    /// `l0·a + l1·b` for the values `a`, `b` at `i0`, `i1`; just `a` when both taps are one point at full weight
    /// (an unchanged axis), which PyTorch copies: an infinite `a` stays infinite instead of `∞·0 = NaN`.
    #[inline(always)]
    pub(super) fn mix(&self, a: f32, b: f32) -> f32 {
        if self.i0 == self.i1 && self.l1 == 0.0 {
            a
        } else {
            self.l0 * a + self.l1 * b
        }
    }
}
