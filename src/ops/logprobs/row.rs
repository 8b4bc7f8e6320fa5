//! Per-row math of log-softmax over a vocabulary row, shared by the log-prob ops and the fused linear path.
//!
//! A row is processed in blocks of `BLOCK` elements widened to f32 (L1-resident): the block's max is taken
//! first (a branch-free vector max), the running sums are rescaled only when that max rises (rare after the first
//! blocks), then `exp(x − max)` is accumulated over `LANES` independent f32 lanes with a polynomial exp, so the
//! loop vectorises; block totals go into f64 so that a 151,936-wide row loses nothing to summation order. On
//! x86-64 the same code is also compiled for AVX2 and AVX-512 (with fused multiply-adds) and picked by the active
//! ISA level.

use crate::runtime::cpu::isa::by_isa;
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
    /// `x[target]` − lse: the target token's log-probability (0 when there is no target).
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
    by_isa!(avx512::row_stats_impl::<T>, avx2::row_stats_impl::<T>, row_stats_impl::<T, false>; (row, target))
}

/// Writes `scale · (softmax(row) − onehot(target))` into `out` (as long as `row`) given the row's logsumexp.
#[inline]
pub fn row_grad<T: FloatElement>(row: &[T], lse: f32, target: usize, scale: f32, out: &mut [T]) {
    by_isa!(
        avx512::row_grad_impl::<T>,
        avx2::row_grad_impl::<T>,
        row_grad_impl::<T, false>;
        (row, lse, target, scale, out)
    )
}

/// [`row_grad`] over the row itself, replacing the logits by their gradient.
#[inline]
pub fn row_grad_in_place<T: FloatElement>(row: &mut [T], lse: f32, target: usize, scale: f32) {
    by_isa!(
        avx512::row_grad_in_place_impl::<T>,
        avx2::row_grad_in_place_impl::<T>,
        row_grad_in_place_impl::<T, false>;
        (row, lse, target, scale)
    )
}

/// The row functions compiled with `$features` enabled, with fused multiply-adds.
macro_rules! simd_variant {
    ($module:ident, $features:literal) => {
        #[cfg(target_arch = "x86_64")]
        mod $module {
            use super::*;

            #[target_feature(enable = $features)]
            pub(super) unsafe fn row_stats_impl<T: FloatElement>(row: &[T], target: Option<usize>) -> RowStats {
                super::row_stats_impl::<T, true>(row, target)
            }

            #[target_feature(enable = $features)]
            pub(super) unsafe fn row_grad_impl<T: FloatElement>(
                row: &[T],
                lse: f32,
                target: usize,
                scale: f32,
                out: &mut [T],
            ) {
                super::row_grad_impl::<T, true>(row, lse, target, scale, out)
            }

            #[target_feature(enable = $features)]
            pub(super) unsafe fn row_grad_in_place_impl<T: FloatElement>(
                row: &mut [T],
                lse: f32,
                target: usize,
                scale: f32,
            ) {
                super::row_grad_in_place_impl::<T, true>(row, lse, target, scale)
            }
        }
    };
}
simd_variant!(avx2, "avx2,fma");
simd_variant!(avx512, "avx512f");

#[inline(always)]
fn row_stats_impl<T: FloatElement, const FMA: bool>(row: &[T], target: Option<usize>) -> RowStats {
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
        let (bs, bsd, bsx) =
            if max == f32::NEG_INFINITY { (0.0, 0.0, xs.iter().sum()) } else { block_sums::<FMA>(xs, max) };
        s += bs as f64;
        sd += bsd as f64;
        sx += bsx as f64;
    }
    let ln_s = s.ln();
    // A NaN or +∞ logit makes the whole row NaN, as in PyTorch's log_softmax: Σx is NaN exactly when the row holds a
    // NaN (or both infinities), and the max is +∞ with a +∞. (The sums above clamp x − max, which would drop a NaN.)
    if sx.is_nan() || max == f32::INFINITY {
        return RowStats { lse: f32::NAN, target_logp: f32::NAN, sum_logits: sx as f32, entropy: f32::NAN };
    }
    RowStats {
        lse: max + ln_s as f32,
        // (x − max) is exact for nearby values: no rounding of a large lse, even for logits of magnitude 1e4.
        target_logp: target.map_or(0.0, |t| ((row[t].to_f32() - max) as f64 - ln_s) as f32),
        sum_logits: sx as f32,
        entropy: (ln_s - sd / s) as f32,
    }
}

#[inline(always)]
fn row_grad_impl<T: FloatElement, const FMA: bool>(row: &[T], lse: f32, target: usize, scale: f32, out: &mut [T]) {
    if lse.is_nan() {
        // A row with a NaN or +∞ logit (see `row_stats_impl`): PyTorch's gradient is NaN throughout.
        out.fill(T::from_f32(f32::NAN));
        return;
    }
    let target_value = row[target].to_f32();
    if T::DTYPE == DType::F32 {
        softmax_into::<FMA>(bytemuck::cast_slice(row), lse, scale, bytemuck::cast_slice_mut(out));
    } else {
        let mut buf = [0.0f32; BLOCK];
        for (src, dst) in row.chunks(BLOCK).zip(out.chunks_mut(BLOCK)) {
            let xs = &mut buf[..src.len()];
            widen_into(src, xs);
            softmax_in_place::<FMA>(xs, lse, scale);
            narrow(xs, dst);
        }
    }
    out[target] = T::from_f32(scale * (exp_approx::<FMA>(target_value - lse) - 1.0));
}

#[inline(always)]
fn row_grad_in_place_impl<T: FloatElement, const FMA: bool>(row: &mut [T], lse: f32, target: usize, scale: f32) {
    if lse.is_nan() {
        row.fill(T::from_f32(f32::NAN));
        return;
    }
    let target_value = row[target].to_f32();
    if T::DTYPE == DType::F32 {
        softmax_in_place::<FMA>(bytemuck::cast_slice_mut(row), lse, scale);
    } else {
        let mut buf = [0.0f32; BLOCK];
        for block in row.chunks_mut(BLOCK) {
            let xs = &mut buf[..block.len()];
            widen_into(block, xs);
            softmax_in_place::<FMA>(xs, lse, scale);
            narrow(xs, block);
        }
    }
    row[target] = T::from_f32(scale * (exp_approx::<FMA>(target_value - lse) - 1.0));
}

/// `out[i] = scale · exp(xs[i] − lse)`.
#[inline(always)]
fn softmax_into<const FMA: bool>(xs: &[f32], lse: f32, scale: f32, out: &mut [f32]) {
    for (o, &x) in out.iter_mut().zip(xs) {
        *o = scale * exp_approx::<FMA>(x - lse);
    }
}

/// `xs[i] = scale · exp(xs[i] − lse)`.
#[inline(always)]
fn softmax_in_place<const FMA: bool>(xs: &mut [f32], lse: f32, scale: f32) {
    for x in xs {
        *x = scale * exp_approx::<FMA>(*x - lse);
    }
}

/// The max of `xs` (−∞ when empty) over independent lanes; a select rather than `f32::max` so it vectorises.
#[inline(always)]
pub(crate) fn lane_max(xs: &[f32]) -> f32 {
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
fn block_sums<const FMA: bool>(xs: &[f32], max: f32) -> (f32, f32, f32) {
    let mut s = [0.0f32; LANES];
    let mut sd = [0.0f32; LANES];
    let mut sx = [0.0f32; LANES];
    let mut push = |lane: usize, x: f32| {
        // Clamped so that a logit of −∞ (e = 0) adds 0·(−87) to Σ e·d, not 0·∞ = NaN.
        let d = (x - max).max(-87.0);
        let e = exp_approx::<FMA>(d);
        s[lane] += e;
        sd[lane] = madd::<FMA>(e, d, sd[lane]);
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

/// `a·b + c`, fused in the variants compiled with FMA (elsewhere `mul_add` would be a slow libm call).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `exp(d)` for `d ≤ 88` to about 1 ulp (Cephes' expf polynomial), branch-free so that loops over it vectorise;
/// 0 below −87, where the true value is under f32's normal range and negligible against a sum ≥ 1.
#[inline(always)]
pub(crate) fn exp_approx<const FMA: bool>(d: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n·LN2_HI is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5·2²³: adding it rounds to an integer, which lands in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    // A select, not `max`, which would turn a NaN into −87: a NaN in gives a NaN out.
    let x = if d < -87.0 { -87.0 } else { d };
    let shifted = madd::<FMA>(x, LOG2E, ROUND);
    let n = shifted - ROUND;
    let r = madd::<FMA>(n, -LN2_LO, madd::<FMA>(n, -LN2_HI, x));
    let mut p = 1.987_569_1e-4f32;
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
        p = madd::<FMA>(p, r, c);
    }
    let poly = madd::<FMA>(p, r * r, r + 1.0);
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

/// Converts `src` into `dst` (same length), branch-free so that the loops vectorise.
#[inline(always)]
fn widen_into<T: FloatElement>(src: &[T], dst: &mut [f32]) {
    match T::DTYPE {
        DType::F32 => dst.copy_from_slice(bytemuck::cast_slice(src)),
        DType::F16 => {
            for (d, &bits) in dst.iter_mut().zip(bytemuck::cast_slice::<T, u16>(src)) {
                *d = f16_to_f32(bits);
            }
        }
        DType::BF16 => {
            for (d, &bits) in dst.iter_mut().zip(bytemuck::cast_slice::<T, u16>(src)) {
                *d = f32::from_bits((bits as u32) << 16);
            }
        }
        _ => {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = s.to_f32();
            }
        }
    }
}

/// Rounds `src` into `dst` (same length), to nearest even; bf16 branch-free so that it vectorises.
#[inline(always)]
fn narrow<T: FloatElement>(src: &[f32], dst: &mut [T]) {
    match T::DTYPE {
        DType::F32 => bytemuck::cast_slice_mut::<T, f32>(dst).copy_from_slice(src),
        DType::F16 => {
            for (d, &x) in bytemuck::cast_slice_mut::<T, u16>(dst).iter_mut().zip(src) {
                *d = f32_to_f16(x);
            }
        }
        DType::BF16 => {
            for (d, &x) in bytemuck::cast_slice_mut::<T, u16>(dst).iter_mut().zip(src) {
                let bits = x.to_bits();
                let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
                // NaN stays a (quiet) NaN instead of rounding into infinity.
                *d = if x.is_nan() { ((bits >> 16) | 0x40) as u16 } else { rounded as u16 };
            }
        }
        _ => {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = T::from_f32(s);
            }
        }
    }
}

/// The f32 value of f16 bits, exact (normals, subnormals, infinities, NaN), with selects instead of branches.
#[inline(always)]
fn f16_to_f32(h: u16) -> f32 {
    let h = h as u32;
    let magnitude = h & 0x7fff;
    let normal = f32::from_bits((magnitude << 13) + ((127 - 15) << 23));
    let subnormal = magnitude as f32 * f32::from_bits((127 - 24) << 23); // mantissa · 2⁻²⁴
    let special = f32::from_bits((magnitude << 13) | 0x7f80_0000); // infinity or NaN, payload kept
    let v = if magnitude < 0x0400 {
        subnormal
    } else if magnitude >= 0x7c00 {
        special
    } else {
        normal
    };
    f32::from_bits(v.to_bits() | ((h & 0x8000) << 16))
}

/// f16 bits of `x`, rounded to nearest even, with selects instead of branches (after Fabian Giesen's
/// `float_to_half_fast3_rtne`).
#[inline(always)]
fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let magnitude = bits & 0x7fff_ffff;
    // Rebias the exponent and round the mantissa from 23 to 10 bits; a carry rounds up into the exponent.
    let normal = magnitude.wrapping_sub(112 << 23).wrapping_add(0xfff + ((magnitude >> 13) & 1)) >> 13;
    // Adding 0.5 lines the subnormal mantissa up at the bottom and lets the FPU round it.
    let subnormal = (f32::from_bits(magnitude) + 0.5).to_bits().wrapping_sub(126 << 23);
    let overflow = if magnitude > 0x7f80_0000 { 0x7e00 } else { 0x7c00 };
    let h = if magnitude >= 143 << 23 {
        overflow
    } else if magnitude < 113 << 23 {
        subnormal
    } else {
        normal
    };
    (h | ((bits >> 16) & 0x8000)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::cpu::{with_isa, Isa};
    use half::f16;

    #[test]
    fn exp_approx_matches_std_exp() {
        let mut d = -90.0f32;
        while d <= 1.0 {
            let want = d.exp();
            let got = exp_approx::<false>(d);
            let tol = if d < -87.0 { 1e-37 } else { 3e-7 * want };
            assert!((got - want).abs() <= tol, "exp({d}) = {got}, want {want}");
            d += 0.0137;
        }
        assert_eq!(exp_approx::<false>(f32::NEG_INFINITY), 0.0);
        assert!(exp_approx::<false>(f32::NAN).is_nan() && exp_approx::<true>(f32::NAN).is_nan());
    }

    /// Every ISA level this CPU has (portable, AVX2 + FMA, AVX-512), picked through `with_isa`, against an f64 loop.
    #[test]
    fn every_isa_level_matches_f64() {
        let row: Vec<f32> = (0..5000).map(|i| ((i * 7919) % 1013) as f32 / 64.0 - 8.0).collect();
        let max = row.iter().fold(f64::MIN, |m, &x| m.max(x as f64));
        let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
        let entropy = -row.iter().map(|&x| (x as f64 - lse).exp() * (x as f64 - lse)).sum::<f64>();
        for isa in Isa::ALL.into_iter().filter(|isa| isa.available()) {
            let name = isa.name();
            let (s, out) = with_isa(isa, || {
                let s = row_stats(&row, Some(123));
                let mut out = vec![0.0f32; row.len()];
                row_grad(&row, s.lse, 123, 2.0, &mut out);
                (s, out)
            })
            .unwrap();
            assert!((s.lse as f64 - lse).abs() < 1e-5 * lse.abs(), "{name}: lse {} vs {lse}", s.lse);
            assert!((s.entropy as f64 - entropy).abs() < 1e-5 * entropy, "{name}: entropy {} vs {entropy}", s.entropy);
            for (j, (&g, &x)) in out.iter().zip(&row).enumerate() {
                let want = 2.0 * ((x as f64 - lse).exp() - if j == 123 { 1.0 } else { 0.0 });
                assert!((g as f64 - want).abs() < 1e-5 * want.abs().max(1e-3), "{name}: grad[{j}] {g} vs {want}");
            }
        }
    }

    #[test]
    fn bf16_conversions_match_half() {
        // Includes the two rounding ties 1 + 2⁻⁸ and 1 + 3·2⁻⁸ (to even: down, then up).
        let values = [
            0.0f32,
            -0.0,
            1.0,
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 256.0,
            -3.3e38,
            3.4e38,
            1e-40,
            f32::INFINITY,
            0.1,
            -7.77,
        ];
        let mut narrowed = [half::bf16::ZERO; 11];
        narrow(&values, &mut narrowed);
        for (&x, &b) in values.iter().zip(&narrowed) {
            assert_eq!(b.to_bits(), half::bf16::from_f32(x).to_bits(), "{x}");
        }
        let mut nan = [half::bf16::ZERO];
        narrow(&[f32::NAN], &mut nan);
        assert!(nan[0].is_nan());
        let mut widened = [0.0f32; 11];
        widen_into(&narrowed, &mut widened);
        for (&w, &b) in widened.iter().zip(&narrowed) {
            assert_eq!(w, b.to_f32());
        }
    }

    #[test]
    fn f16_conversions_match_half() {
        for h in 0..=u16::MAX {
            let want = f16::from_bits(h).to_f32();
            let got = f16_to_f32(h);
            assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "{h:#x}: {got} vs {want}");
            // The value itself, and the midpoints and near-midpoints to its neighbour, round like `half`.
            let next = f16::from_bits(h.wrapping_add(1)).to_f32();
            let mid = ((want as f64 + next as f64) / 2.0) as f32;
            for x in [want, mid, f32::from_bits(mid.to_bits() + 1), f32::from_bits(mid.to_bits().wrapping_sub(1))] {
                let (got, want) = (f32_to_f16(x), f16::from_f32(x).to_bits());
                let nan = f16::from_bits(got).is_nan() && f16::from_bits(want).is_nan();
                assert!(got == want || nan, "{x:e}: {got:#x} vs {want:#x}");
            }
        }
        assert_eq!(f32_to_f16(1e6), 0x7c00);
        assert_eq!(f32_to_f16(-1e-10), 0x8000);
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
