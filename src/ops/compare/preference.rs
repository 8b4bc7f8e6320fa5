//! One group's preference matrix, win counts, Copeland scores and ranks, best and worst candidate, and
//! position consistency on the CPU (the same rules as `cmp_group` in `kernels/compare.cu`).

use super::group::Group;

/// `P[i,j]` as f32 from the fit's f64 probabilities.
pub(crate) fn fill_preference(prob: &[f64], out: &mut [f32]) {
    for (o, &p) in out.iter_mut().zip(prob) {
        *o = p as f32;
    }
}

/// Wins (ties ½) and Copeland scores (wins − losses) from the signs of the margins; void pairs count nothing.
pub(crate) fn wins_and_copeland(group: Group<'_>, wins: &mut [f32], copeland: &mut [i32]) {
    let k = wins.len();
    for i in 0..k {
        let (mut w, mut c) = (0.0f32, 0i32);
        for j in (0..k).filter(|&j| j != i) {
            let m = group.margin(i, j);
            if m > 0.0 {
                w += 1.0;
                c += 1;
            } else if m < 0.0 {
                c -= 1;
            } else if m == 0.0 {
                w += 0.5;
            }
        }
        wins[i] = w;
        copeland[i] = c;
    }
}

/// Competition ranks: one plus the number of strictly higher Copeland scores.
pub(crate) fn ranks(copeland: &[i32], ranks: &mut [i32]) {
    for (r, &c) in ranks.iter_mut().zip(copeland) {
        *r = 1 + copeland.iter().filter(|&&o| o > c).count() as i32;
    }
}

/// Strengths closer than this count as equal when they break a Copeland tie: candidates with the same record have
/// the same strength analytically, but not to the last bit.
pub(crate) const STRENGTH_TIE: f32 = 1e-5;

/// (best, worst): scanning up from index 0, a candidate replaces the best if its Copeland score is higher, or equal
/// with a strength higher by more than [`STRENGTH_TIE`]; the worst likewise scanning down from K − 1.
pub(crate) fn best_and_worst(copeland: &[i32], strengths: &[f32]) -> (i32, i32) {
    let k = copeland.len();
    let better = |a: usize, b: usize| {
        copeland[a] > copeland[b] || (copeland[a] == copeland[b] && strengths[a] > strengths[b] + STRENGTH_TIE)
    };
    let best = (0..k).fold(0, |b, i| if better(i, b) { i } else { b });
    let worst = (0..k).rev().fold(k - 1, |w, i| if better(w, i) { i } else { w });
    (best as i32, worst as i32)
}

/// The share of unordered pairs with `sign(L[i,j]) == −sign(L[j,i])`, over pairs without a NaN; NaN if none.
pub(crate) fn consistency(log_odds: &[f32], k: usize) -> f32 {
    let (mut pairs, mut consistent) = (0u32, 0u32);
    for i in 0..k {
        for j in i + 1..k {
            let (a, b) = (log_odds[i * k + j], log_odds[j * k + i]);
            if a.is_nan() || b.is_nan() {
                continue;
            }
            pairs += 1;
            consistent += u32::from(sign(a) == -sign(b));
        }
    }
    if pairs == 0 {
        f32::NAN
    } else {
        (f64::from(consistent) / f64::from(pairs)) as f32
    }
}

fn sign(x: f32) -> i32 {
    i32::from(x > 0.0) - i32::from(x < 0.0)
}
