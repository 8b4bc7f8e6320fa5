//! The comparison: the fused path and the naive path (materialised log-softmax, gather, sum) on the same
//! synthetic inputs, forward + backward, with their times, the memory each allocates beyond the inputs, and the
//! ratios. `unireward bench logprobs` prints it.

use std::fmt;
use std::time::Instant;

use rayon::prelude::*;

use super::{
    naive, naive_sequence_logprobs, naive_sequence_logprobs_backward, sequence_logprobs, sequence_logprobs_backward,
    sequence_logprobs_backward_in_place, with_float_type, Dims, LogProbsConfig, SequenceLogProbs,
};
use crate::runtime::{DType, Device, FloatElement, Tensor};
use crate::{Error, Result};

/// Time and memory of one path.
#[derive(Clone, Debug)]
pub struct PathReport {
    /// `fused`, `fused, in place` or `naive`.
    pub name: &'static str,
    /// Wall-clock seconds of the forward.
    pub forward_s: f64,
    /// Wall-clock seconds of the backward (allocating its gradient, or writing over the logits).
    pub backward_s: f64,
    /// Bytes the path allocates beyond its inputs at its peak (tensors and buffers it creates).
    pub extra_bytes: usize,
}

impl PathReport {
    /// Forward + backward seconds.
    pub fn total_s(&self) -> f64 {
        self.forward_s + self.backward_s
    }
}

/// The result of [`compare_fused_vs_naive`].
#[derive(Clone, Debug)]
pub struct ComparisonReport {
    /// Sequences, tokens per sequence, vocabulary size and dtype of the logits.
    pub n: usize,
    pub t: usize,
    pub v: usize,
    pub dtype: DType,
    /// Size of the logits.
    pub logits_bytes: usize,
    pub fused: PathReport,
    /// The fused path with the gradient written over the logits.
    pub fused_in_place: PathReport,
    pub naive: PathReport,
    /// Largest |fused − naive| over the sequence log-probs and over the gradient: both paths compute the same thing.
    pub max_logp_diff: f64,
    pub max_grad_diff: f64,
}

impl ComparisonReport {
    /// How many times faster the fused path is (naive time / fused time, forward + backward).
    pub fn speedup(&self) -> f64 {
        self.naive.total_s() / self.fused.total_s()
    }

    /// How many times less memory the fused path allocates (naive extra bytes / fused extra bytes).
    pub fn memory_saving(&self) -> f64 {
        self.naive.extra_bytes as f64 / self.fused.extra_bytes.max(1) as f64
    }
}

impl fmt::Display for ComparisonReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mb = |b: usize| b as f64 / 1e6;
        writeln!(
            f,
            "sequence log-probs, N = {}, T = {}, V = {}, {} logits ({:.0} MB), {} rayon threads",
            self.n,
            self.t,
            self.v,
            self.dtype,
            mb(self.logits_bytes),
            rayon::current_num_threads()
        )?;
        writeln!(
            f,
            "{:<16} {:>11} {:>12} {:>10} {:>15}",
            "path", "forward s", "backward s", "total s", "extra memory MB"
        )?;
        for p in [&self.fused, &self.fused_in_place, &self.naive] {
            writeln!(
                f,
                "{:<16} {:>11.3} {:>12.3} {:>10.3} {:>15.1}",
                p.name,
                p.forward_s,
                p.backward_s,
                p.total_s(),
                mb(p.extra_bytes)
            )?;
        }
        writeln!(
            f,
            "naive / fused: {:.2}x the time, {:.1}x the memory; in place: {:.2}x the time, {:.0}x the memory",
            self.speedup(),
            self.memory_saving(),
            self.naive.total_s() / self.fused_in_place.total_s(),
            self.naive.extra_bytes as f64 / self.fused_in_place.extra_bytes.max(1) as f64
        )?;
        write!(f, "max |fused − naive|: log-probs {:.2e}, gradient {:.2e}", self.max_logp_diff, self.max_grad_diff)
    }
}

/// Runs the fused path (out of place and in place) and the naive path, forward + backward, on the same synthetic
/// CPU inputs: logits uniform in [−8, 8), the first tenth of each sequence a prompt (ignore index), Sum
/// reduction, `grad_logps = 1`. Times are wall-clock ([`Instant`]); memory is the bytes each path allocates
/// beyond its inputs (the tensors it returns, its `[N,T,V]` buffers and its per-token bookkeeping).
pub fn compare_fused_vs_naive(n: usize, t: usize, v: usize, dtype: DType) -> Result<ComparisonReport> {
    let dims = Dims { n, t, v };
    let logits = synthetic_logits(dims, dtype)?;
    let labels: Vec<i64> =
        (0..n * t).map(|p| if p % t < t / 10 { -100 } else { (hash(p as u64 ^ 0x5eed) % v as u64) as i64 }).collect();
    let labels = Tensor::from_slice(&labels, &[n, t], Device::Cpu)?;
    let grad_logps = Tensor::from_slice(&vec![1.0f32; n], &[n], Device::Cpu)?;
    let cfg = LogProbsConfig::default();
    let outputs_bytes = |o: &SequenceLogProbs| {
        [&o.logps, &o.token_counts, &o.mean_logits, &o.entropy, &o.lse].iter().map(|t| t.size_in_bytes()).sum::<usize>()
    };
    let bookkeeping = super::cpu::bookkeeping_bytes(dims);

    let (naive_out, naive_grad, naive_report) = {
        let start = Instant::now();
        let out = naive_sequence_logprobs(&logits, &labels, None, &cfg)?;
        let forward_s = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let grad = naive_sequence_logprobs_backward(&logits, &labels, None, &out, &grad_logps, &cfg)?;
        let backward_s = start.elapsed().as_secs_f64();
        let extra_bytes = naive::peak_bytes(dims, dtype) + outputs_bytes(&out) + bookkeeping;
        (out, grad, PathReport { name: "naive", forward_s, backward_s, extra_bytes })
    };

    let start = Instant::now();
    let out = sequence_logprobs(&logits, &labels, None, &cfg)?;
    let forward_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let grad = sequence_logprobs_backward(&logits, &labels, None, &out, &grad_logps, &cfg)?;
    let backward_s = start.elapsed().as_secs_f64();
    let fused = PathReport {
        name: "fused",
        forward_s,
        backward_s,
        extra_bytes: outputs_bytes(&out) + grad.size_in_bytes() + bookkeeping,
    };
    let max_logp_diff = max_abs_diff(&out.logps, &naive_out.logps)?;
    let max_grad_diff = max_abs_diff(&grad, &naive_grad)?;
    drop((grad, naive_grad));

    let mut in_place = logits;
    let start = Instant::now();
    let out = sequence_logprobs(&in_place, &labels, None, &cfg)?;
    let forward_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    sequence_logprobs_backward_in_place(&mut in_place, &labels, None, &out, &grad_logps, &cfg)?;
    let backward_s = start.elapsed().as_secs_f64();
    let fused_in_place =
        PathReport { name: "fused, in place", forward_s, backward_s, extra_bytes: outputs_bytes(&out) + bookkeeping };

    Ok(ComparisonReport {
        n,
        t,
        v,
        dtype,
        logits_bytes: n * t * v * dtype.size_in_bytes(),
        fused,
        fused_in_place,
        naive: naive_report,
        max_logp_diff,
        max_grad_diff,
    })
}

/// A 64-bit mix (splitmix64's finaliser): cheap, parallel-friendly pseudo-random numbers.
fn hash(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn synthetic_logits(dims: Dims, dtype: DType) -> Result<Tensor> {
    let mut logits = Tensor::zeros(&[dims.n, dims.t, dims.v], dtype, Device::Cpu)?;
    with_float_type!(dtype, T => fill_uniform(logits.as_mut_slice::<T>()?));
    Ok(logits)
}

fn fill_uniform<T: FloatElement>(data: &mut [T]) {
    const CHUNK: usize = 1 << 16;
    data.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
        for (i, x) in chunk.iter_mut().enumerate() {
            let bits = hash((c * CHUNK + i) as u64) >> 40; // 24 random bits
            *x = T::from_f32(bits as f32 / (1u64 << 24) as f32 * 16.0 - 8.0);
        }
    });
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    if a.dtype() != b.dtype() {
        return Err(Error::DType { arg: "comparison", got: b.dtype(), expected: a.dtype().to_string() });
    }
    with_float_type!(a.dtype(), T => {
        let (a, b) = (a.as_slice::<T>()?, b.as_slice::<T>()?);
        Ok(a.par_iter().zip(b).map(|(x, y)| (x.to_f32() as f64 - y.to_f32() as f64).abs()).reduce(|| 0.0, f64::max))
    })
}
