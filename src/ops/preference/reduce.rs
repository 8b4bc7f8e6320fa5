//! Deterministic parallel loops over items (pairs, groups, samples) on the CPU: items are handed out in fixed
//! chunks and the chunks' sums are added in chunk order, so results do not depend on the thread count.

use rayon::prelude::*;

/// Items per task.
const CHUNK: usize = 2048;

/// Calls `item(i, out_i)` for every item, where `out_i` is item i's `width` values of `out` (its gradients), and
/// returns the sums of the `S` statistics each call returns.
pub(crate) fn sum_items<const S: usize>(
    out: &mut [f64],
    width: usize,
    item: impl Fn(usize, &mut [f64]) -> [f64; S] + Sync,
) -> [f64; S] {
    let partial: Vec<[f64; S]> = out
        .par_chunks_mut(width * CHUNK)
        .enumerate()
        .map(|(chunk, block)| {
            let mut sums = [0.0f64; S];
            for (j, out_i) in block.chunks_mut(width).enumerate() {
                add(&mut sums, &item(chunk * CHUNK + j, out_i));
            }
            sums
        })
        .collect();
    let mut sums = [0.0f64; S];
    for p in &partial {
        add(&mut sums, p);
    }
    sums
}

fn add<const S: usize>(sums: &mut [f64; S], values: &[f64; S]) {
    for (s, v) in sums.iter_mut().zip(values) {
        *s += v;
    }
}
