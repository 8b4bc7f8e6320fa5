//! The CPU attention's per-row work between its products: scores into probabilities (forward, or recomputed from
//! the logsumexp in the backward) and the scores' gradient from the probabilities'. Each row is worked only up to
//! the keys its query sees (causal: its own position), the rest set to zero; and it is compiled for AVX-512 and AVX2
//! besides the portable build, picked by the active ISA level. No level fuses a multiply-add, so every level gives
//! the same bits.

use super::Plan;
use crate::ops::logprobs::row::{exp_approx, lane_max};
use crate::runtime::cpu::isa::by_isa;

/// A block of rows of one sequence: queries `first..` of sequence `n`, each row `keys` wide.
#[derive(Clone, Copy)]
pub(super) struct Block<'a> {
    pub plan: &'a Plan,
    pub n: usize,
    pub first: usize,
    pub keys: usize,
}

impl Block<'_> {
    /// Whether each key of the sequence is a real token.
    fn valid(&self) -> &[bool] {
        &self.plan.valid[self.n * self.plan.t..(self.n + 1) * self.plan.t]
    }

    /// How many keys of row `r` its query sees; 0 for a padding query.
    fn visible(&self, r: usize) -> usize {
        let i = self.first + r;
        if self.valid()[i] {
            self.plan.key_end(i).min(self.keys)
        } else {
            0
        }
    }
}

/// Raw scores (`scores` is [rows, keys]) turned into probabilities in place, from the logsumexp in `lse` when
/// `lse_known` (backward), else computing it there (forward). Rows of padding queries become zero (with a
/// logsumexp of 0).
pub(super) fn probabilities(scores: &mut [f32], block: Block<'_>, lse: &mut [f32], lse_known: bool) {
    by_isa!(simd::avx512::probabilities_impl, simd::avx2::probabilities_impl, probabilities_impl; (
        scores, block, lse, lse_known
    ))
}

/// The scores' gradient from the probabilities' (`dprobs`, replaced in place):
/// `P ∘ (dP − rowsum(P ∘ dP)) · scale`, zero past the keys a row sees.
pub(super) fn score_grads(probs: &[f32], dprobs: &mut [f32], block: Block<'_>) {
    by_isa!(simd::avx512::score_grads_impl, simd::avx2::score_grads_impl, score_grads_impl; (probs, dprobs, block))
}

#[cfg(target_arch = "x86_64")]
mod simd {
    /// The row functions compiled with `$features` enabled.
    macro_rules! variant {
        ($module:ident, $features:literal) => {
            pub(super) mod $module {
                use super::super::Block;

                #[target_feature(enable = $features)]
                pub(in super::super) unsafe fn probabilities_impl(
                    scores: &mut [f32],
                    block: Block<'_>,
                    lse: &mut [f32],
                    lse_known: bool,
                ) {
                    super::super::probabilities_impl(scores, block, lse, lse_known)
                }

                #[target_feature(enable = $features)]
                pub(in super::super) unsafe fn score_grads_impl(probs: &[f32], dprobs: &mut [f32], block: Block<'_>) {
                    super::super::score_grads_impl(probs, dprobs, block)
                }
            }
        };
    }
    variant!(avx2, "avx2");
    variant!(avx512, "avx512f");
}

#[inline(always)]
fn probabilities_impl(scores: &mut [f32], block: Block<'_>, lse: &mut [f32], lse_known: bool) {
    let scale = block.plan.scale();
    let valid = block.valid();
    for (r, row) in scores.chunks_exact_mut(block.keys).enumerate() {
        let (seen, hidden) = row.split_at_mut(block.visible(r));
        hidden.fill(0.0);
        if seen.is_empty() {
            lse[r] = 0.0;
            continue;
        }
        // Scaled scores, −inf at padding keys (exp gives 0 there).
        for (s, &real) in seen.iter_mut().zip(valid) {
            *s = if real { *s * scale } else { f32::NEG_INFINITY };
        }
        if lse_known {
            seen.iter_mut().for_each(|s| *s = exp_approx::<false>(*s - lse[r]));
            continue;
        }
        let max = lane_max(seen);
        seen.iter_mut().for_each(|s| *s = exp_approx::<false>(*s - max));
        // Eight partial sums, so that the loop vectorises without reordering a single float sum.
        let mut sums = [0.0f32; 8];
        let mut chunks = seen.chunks_exact(8);
        for chunk in &mut chunks {
            sums.iter_mut().zip(chunk).for_each(|(acc, &e)| *acc += e);
        }
        sums.iter_mut().zip(chunks.remainder()).for_each(|(acc, &e)| *acc += e);
        let sum: f32 = sums.iter().sum();
        lse[r] = max + sum.ln();
        let inv = 1.0 / sum;
        seen.iter_mut().for_each(|s| *s *= inv);
    }
}

#[inline(always)]
fn score_grads_impl(probs: &[f32], dprobs: &mut [f32], block: Block<'_>) {
    let scale = block.plan.scale();
    let rows = probs.chunks_exact(block.keys).zip(dprobs.chunks_exact_mut(block.keys));
    for (r, (prow, dprow)) in rows.enumerate() {
        let seen = block.visible(r);
        let (prow, (dprow, hidden)) = (&prow[..seen], dprow.split_at_mut(seen));
        hidden.fill(0.0);
        let dot: f32 = prow.iter().zip(dprow.iter()).map(|(a, b)| a * b).sum();
        dprow.iter_mut().zip(prow).for_each(|(ds, &pr)| *ds = pr * (*ds - dot) * scale);
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::runtime::cpu::{with_isa, Isa};
    use crate::runtime::Device;

    /// A float64 softmax over the keys row `r` of `block` sees, and its gradient for `dprobs`: (probabilities,
    /// logsumexp, scores' gradient), zeros for a padding query.
    fn reference(scores: &[f32], dprobs: &[f32], block: Block<'_>, r: usize) -> (Vec<f64>, f64, Vec<f64>) {
        let (plan, keys) = (block.plan, block.keys);
        let i = block.first + r;
        let seen = |j: usize| plan.valid[i] && plan.valid[j] && j < plan.key_end(i);
        let scale = f64::from(plan.scale());
        let z: Vec<f64> = (0..keys).map(|j| f64::from(scores[r * keys + j]) * scale).collect();
        let max = (0..keys).filter(|&j| seen(j)).map(|j| z[j]).fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = (0..keys).filter(|&j| seen(j)).map(|j| (z[j] - max).exp()).sum();
        let lse = if plan.valid[i] { max + sum.ln() } else { 0.0 };
        let p: Vec<f64> = (0..keys).map(|j| if seen(j) { (z[j] - lse).exp() } else { 0.0 }).collect();
        let dp = |j: usize| f64::from(dprobs[r * keys + j]);
        let dot: f64 = (0..keys).map(|j| p[j] * dp(j)).sum();
        let ds = (0..keys).map(|j| p[j] * (dp(j) - dot) * scale).collect();
        (p, lse, ds)
    }

    /// Forward probabilities and logsumexps, the backward's recomputed probabilities and the scores' gradient, at
    /// level `isa`.
    fn run(isa: Isa, scores: &[f32], dprobs: &[f32], block: Block<'_>) -> [Vec<f32>; 4] {
        with_isa(isa, || {
            let rows = scores.len() / block.keys;
            let (mut forward, mut lse) = (scores.to_vec(), vec![f32::NAN; rows]);
            probabilities(&mut forward, block, &mut lse, false);
            let mut recomputed = scores.to_vec();
            probabilities(&mut recomputed, block, &mut lse.clone(), true);
            let mut grads = dprobs.to_vec();
            score_grads(&recomputed, &mut grads, block);
            [forward, lse, recomputed, grads]
        })
        .unwrap()
    }

    /// Every level this CPU has gives the portable build's bits, and those match float64, on rows of awkward width
    /// with padding keys, a padding query and (causal) rows that see fewer keys than the block holds.
    #[test]
    fn every_isa_level_matches_float64_bitwise_alike() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let t = 45;
        let valid: Vec<bool> = (0..t).map(|j| j != 9 && j != 20 && j < 41).collect();
        for causal in [true, false] {
            let plan = Plan { n: 1, t, hq: 1, hkv: 1, d: 7, valid: valid.clone(), causal, device: Device::Cpu };
            let (first, rows, keys) = (6, 30, if causal { 36 } else { t });
            let block = Block { plan: &plan, n: 0, first, keys };
            let scores: Vec<f32> = (0..rows * keys).map(|_| rng.gen_range(-6.0..6.0)).collect();
            let dprobs: Vec<f32> = (0..rows * keys).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let portable = run(Isa::Portable, &scores, &dprobs, block);
            for isa in Isa::ALL.into_iter().filter(|isa| isa.available()) {
                let got = run(isa, &scores, &dprobs, block);
                let names = ["forward", "lse", "recomputed", "grads"];
                for (name, (got, want)) in names.iter().zip(got.iter().zip(&portable)) {
                    let same = got.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{name} at {isa:?} differs from the portable build (causal {causal})");
                }
            }
            let [forward, lse, recomputed, grads] = portable;
            for (r, &got_lse) in lse.iter().enumerate() {
                let (p, want_lse, ds) = reference(&scores, &dprobs, block, r);
                assert!((f64::from(got_lse) - want_lse).abs() < 1e-5, "lse of row {r}: {got_lse} vs {want_lse}");
                for j in 0..keys {
                    let at = r * keys + j;
                    for (name, got, want) in [("forward", forward[at], p[j]), ("recomputed", recomputed[at], p[j])] {
                        assert!((f64::from(got) - want).abs() < 1e-6, "{name} [{r}, {j}]: {got} vs {want}");
                    }
                    let (got, want) = (grads[at], ds[j]);
                    assert!((f64::from(got) - want).abs() < 1e-6, "grads [{r}, {j}]: {got} vs {want}");
                }
            }
        }
    }

    /// A NaN score makes its row's probabilities and logsumexp NaN; the other rows keep theirs.
    #[test]
    fn a_nan_score_shows_in_its_row() {
        let plan = Plan { n: 1, t: 4, hq: 1, hkv: 1, d: 4, valid: vec![true; 4], causal: false, device: Device::Cpu };
        let block = Block { plan: &plan, n: 0, first: 0, keys: 4 };
        let mut scores = vec![0.5f32; 16];
        scores[5] = f32::NAN;
        let mut lse = vec![0.0; 4];
        probabilities(&mut scores, block, &mut lse, false);
        assert!(lse[1].is_nan() && scores[4..8].iter().all(|p| p.is_nan()), "{lse:?} {scores:?}");
        assert!(lse[0].is_finite() && scores[..4].iter().all(|&p| (p - 0.25).abs() < 1e-6), "{scores:?}");
    }
}
