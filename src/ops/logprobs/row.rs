//! Per-row math of log-softmax over a vocabulary row, shared by the log-prob ops and the fused linear path.
//!
//! A row is processed in blocks of [`BLOCK`] elements widened to f32 (L1-resident): the block's max is taken
//! first (a branch-free vector max), the running sums are rescaled only when that max rises (rare after the first
//! blocks), then `exp(x − max)` is accumulated over [`LANES`] independent f32 lanes with a polynomial exp, so the
//! loop vectorises; block totals go into f64 so that a 151,936-wide row loses nothing to summation order. On
//! x86-64 the same code is also compiled for AVX2 and chosen at run time.

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::runtime::{DType, FloatElement};

/// Elements widened to f32 at a time: 4 KiB, which stays in L1 between the max pass and the sum pass.
const BLOCK: usize = 1024;
/// Independent accumulators: enough for two AVX2 registers per sum, hiding the add latency.
const LANES: usize = 16;

/// What one pass over a row of logits yields.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowStats {
    /// log Σ exp(x).
    pub lse: f32,
    /// x[target] − lse: the target token's log-probability (0 when there is no target).
    pub target_logp: f32,
    /// Σ x, for the mean logit.
    pub sum_logits: f32,
    /// −Σ p·log p, the token entropy.
    pub entropy: f32,
}

/// One pass over `row`: logsumexp, target log-prob, logit sum and entropy.
///
/// The entropy is `ln s − Σ e·d / s` with `d = x − max`, `e = exp(d)`, `s = Σ e`: no difference of two large
/// numbers, so it stays exact for logits of magnitude 1e4.
#[inline]
pub fn row_stats<T: FloatElement>(row: &[T], target: Option<usize>) -> RowStats {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { avx2::row_stats(row, target) };
    }
    row_stats_impl(row, target)
}

/// Writes `scale · (softmax(row) − onehot(target))` into `out` (as long as `row`) given the row's logsumexp.
#[inline]
pub fn row_grad<T: FloatElement>(row: &[T], lse: f32, target: usize, scale: f32, out: &mut [T]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { avx2::row_grad(row, lse, target, scale, out) };
    }
    row_grad_impl(row, lse, target, scale, out)
}

/// [`row_grad`] over the row itself, replacing the logits by their gradient.
#[inline]
pub fn row_grad_in_place<T: FloatElement>(row: &mut [T], lse: f32, target: usize, scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { avx2::row_grad_in_place(row, lse, target, scale) };
    }
    row_grad_in_place_impl(row, lse, target, scale)
}

/// The same bodies compiled with AVX2 enabled (the default x86-64 target has SSE2 only).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn row_stats<T: FloatElement>(row: &[T], target: Option<usize>) -> RowStats {
        row_stats_impl(row, target)
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn row_grad<T: FloatElement>(row: &[T], lse: f32, target: usize, scale: f32, out: &mut [T]) {
        row_grad_impl(row, lse, target, scale, out)
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn row_grad_in_place<T: FloatElement>(row: &mut [T], lse: f32, target: usize, scale: f32) {
        row_grad_in_place_impl(row, lse, target, scale)
    }
}

#[inline(always)]
fn row_stats_impl<T: FloatElement>(row: &[T], target: Option<usize>) -> RowStats {
    let mut buf = [0.0f32; BLOCK];
    let mut max = f32::NEG_INFINITY;
    // Σ e, Σ e·d and Σ x over the blocks seen so far, relative to `max`.
    let (mut s, mut sd, mut sx) = (0.0f64, 0.0f64, 0.0f64);
    for block in row.chunks(BLOCK) {
        let xs = widen(block, &mut buf);
        let block_max = lane_max(xs);
        if block_max > max {
            if s > 0.0 {
                // d shifts by `shift` and e scales by exp(shift): Σ e'·d' = exp(shift)·(Σ e·d + shift·Σ e).
                let shift = (max - block_max) as f64;
                let scale = shift.exp();
                sd = (sd + shift * s) * scale;
                s *= scale;
            }
            max = block_max;
        }
        // While every logit so far is −∞ there is nothing to add but their sum (and x − max would be NaN).
        let (bs, bsd, bsx) = if max == f32::NEG_INFINITY { (0.0, 0.0, xs.iter().sum()) } else { block_sums(xs, max) };
        s += bs as f64;
        sd += bsd as f64;
        sx += bsx as f64;
    }
    let ln_s = s.ln();
    RowStats {
        lse: max + ln_s as f32,
        // (x − max) is exact for nearby values: no rounding of a large lse, even for logits of magnitude 1e4.
        target_logp: target.map_or(0.0, |t| ((row[t].to_f32() - max) as f64 - ln_s) as f32),
        sum_logits: sx as f32,
        entropy: (ln_s - sd / s) as f32,
    }
}

#[inline(always)]
fn row_grad_impl<T: FloatElement>(row: &[T], lse: f32, target: usize, scale: f32, out: &mut [T]) {
    let mut buf = [0.0f32; BLOCK];
    let target_value = row[target].to_f32();
    for (src, dst) in row.chunks(BLOCK).zip(out.chunks_mut(BLOCK)) {
        let xs = &mut buf[..src.len()];
        widen_into(src, xs);
        softmax_block(xs, lse, scale);
        narrow(xs, dst);
    }
    out[target] = T::from_f32(scale * (exp_approx(target_value - lse) - 1.0));
}

#[inline(always)]
fn row_grad_in_place_impl<T: FloatElement>(row: &mut [T], lse: f32, target: usize, scale: f32) {
    let mut buf = [0.0f32; BLOCK];
    let target_value = row[target].to_f32();
    for block in row.chunks_mut(BLOCK) {
        let xs = &mut buf[..block.len()];
        widen_into(block, xs);
        softmax_block(xs, lse, scale);
        narrow(xs, block);
    }
    row[target] = T::from_f32(scale * (exp_approx(target_value - lse) - 1.0));
}

/// `xs[i] = scale · exp(xs[i] − lse)`.
#[inline(always)]
fn softmax_block(xs: &mut [f32], lse: f32, scale: f32) {
    for x in xs {
        *x = scale * exp_approx(*x - lse);
    }
}

/// The max of `xs` (−∞ when empty) over independent lanes; a select rather than `f32::max` so it vectorises.
#[inline(always)]
fn lane_max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = if x > *a { x } else { *a };
        }
    }
    for (a, &x) in acc.iter_mut().zip(chunks.remainder()) {
        *a = if x > *a { x } else { *a };
    }
    acc.into_iter().fold(f32::NEG_INFINITY, |m, a| if a > m { a } else { m })
}

/// (Σ e, Σ e·d, Σ x) over a block with `d = x − max`, `e = exp(d)`.
#[inline(always)]
fn block_sums(xs: &[f32], max: f32) -> (f32, f32, f32) {
    let mut s = [0.0f32; LANES];
    let mut sd = [0.0f32; LANES];
    let mut sx = [0.0f32; LANES];
    let mut push = |lane: usize, x: f32| {
        let d = x - max;
        let e = exp_approx(d);
        s[lane] += e;
        // A logit of −∞ has e = 0 and contributes nothing (not 0·∞ = NaN).
        sd[lane] += if e > 0.0 { e * d } else { 0.0 };
        sx[lane] += x;
    };
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for (lane, &x) in c.iter().enumerate() {
            push(lane, x);
        }
    }
    for (lane, &x) in chunks.remainder().iter().enumerate() {
        push(lane, x);
    }
    (s.iter().sum(), sd.iter().sum(), sx.iter().sum())
}

/// `exp(d)` for `d ≤ 88` to about 1 ulp (Cephes' expf polynomial), branch-free so that loops over it vectorise;
/// 0 below −87, where the true value is under f32's normal range and negligible against a sum ≥ 1.
#[inline(always)]
pub(crate) fn exp_approx(d: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n·LN2_HI is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5·2²³: adding it rounds to an integer, which lands in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = if d < -87.0 { -87.0 } else { d };
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let poly = p * r * r + r + 1.0;
    // 2ⁿ from the integer in `shifted`'s mantissa: bits(shifted) = bits(ROUND) + n.
    let pow2 = f32::from_bits(shifted.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23);
    if d < -87.0 {
        0.0
    } else {
        poly * pow2
    }
}

/// The block as f32: borrowed for f32, converted into `buf` otherwise.
#[inline(always)]
fn widen<'a, T: FloatElement>(src: &'a [T], buf: &'a mut [f32; BLOCK]) -> &'a [f32] {
    if T::DTYPE == DType::F32 {
        return bytemuck::cast_slice(src);
    }
    let dst = &mut buf[..src.len()];
    widen_into(src, dst);
    dst
}

/// Converts `src` into `dst` (same length). f16 goes through `half`'s SIMD conversion (F16C when present).
#[inline(always)]
fn widen_into<T: FloatElement>(src: &[T], dst: &mut [f32]) {
    match T::DTYPE {
        DType::F32 => dst.copy_from_slice(bytemuck::cast_slice(src)),
        DType::F16 => bytemuck::cast_slice::<T, f16>(src).convert_to_f32_slice(dst),
        _ => {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = s.to_f32();
            }
        }
    }
}

/// Rounds `src` into `dst` (same length).
#[inline(always)]
fn narrow<T: FloatElement>(src: &[f32], dst: &mut [T]) {
    match T::DTYPE {
        DType::F32 => bytemuck::cast_slice_mut::<T, f32>(dst).copy_from_slice(src),
        DType::F16 => bytemuck::cast_slice_mut::<T, f16>(dst).convert_from_f32_slice(src),
        _ => {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = T::from_f32(s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_approx_matches_std_exp() {
        let mut d = -90.0f32;
        while d <= 1.0 {
            let want = d.exp();
            let got = exp_approx(d);
            let tol = if d < -87.0 { 1e-37 } else { 3e-7 * want };
            assert!((got - want).abs() <= tol, "exp({d}) = {got}, want {want}");
            d += 0.0137;
        }
        assert_eq!(exp_approx(f32::NEG_INFINITY), 0.0);
    }

    #[test]
    fn row_stats_of_a_uniform_row() {
        let row = vec![2.0f32; 3000];
        let s = row_stats(&row, Some(7));
        let ln_v = (3000f32).ln();
        assert!((s.lse - (2.0 + ln_v)).abs() < 1e-5);
        assert!((s.target_logp + ln_v).abs() < 1e-5);
        assert!((s.entropy - ln_v).abs() < 1e-5);
        assert!((s.sum_logits - 6000.0).abs() < 1e-3);
    }
}
