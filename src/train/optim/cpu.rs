//! The fused optimizer loops on the CPU: every trainable parameter cut into chunks of [`CHUNK`] elements, the
//! chunks run in parallel with rayon, each reading its parameter, gradient and fp32 state once.

use half::{bf16, f16};
use rayon::prelude::*;

use super::layout::{Bound, GradSource, Slot, CHUNK};
use super::{State, StepScalars};
use crate::runtime::{DType, FloatElement, Tensor};
use crate::Result;

/// A float tensor's elements, by storage type.
enum Values<'a> {
    F32(&'a [f32]),
    BF16(&'a [bf16]),
    F16(&'a [f16]),
}

enum ValuesMut<'a> {
    F32(&'a mut [f32]),
    BF16(&'a mut [bf16]),
    F16(&'a mut [f16]),
}

impl<'a> Values<'a> {
    fn of(t: &'a Tensor) -> Result<Values<'a>> {
        Ok(match t.dtype() {
            DType::BF16 => Values::BF16(t.as_slice()?),
            DType::F16 => Values::F16(t.as_slice()?),
            _ => Values::F32(t.as_slice()?),
        })
    }

    fn chunks(self) -> Vec<Values<'a>> {
        match self {
            Values::F32(x) => x.chunks(CHUNK).map(Values::F32).collect(),
            Values::BF16(x) => x.chunks(CHUNK).map(Values::BF16).collect(),
            Values::F16(x) => x.chunks(CHUNK).map(Values::F16).collect(),
        }
    }

    /// Σ (weight·x)² in f64, each `weight·x` rounded to f32 first (eight lanes, so that the loop vectorises).
    fn sum_of_squares(&self, weight: f32) -> f64 {
        fn sum<T: FloatElement>(x: &[T], weight: f32) -> f64 {
            let mut lanes = [0f64; 8];
            let mut blocks = x.chunks_exact(8);
            for block in &mut blocks {
                for (lane, v) in lanes.iter_mut().zip(block) {
                    let v = f64::from(weight * v.to_f32());
                    *lane += v * v;
                }
            }
            let tail: f64 = blocks.remainder().iter().map(|v| f64::from(weight * v.to_f32()).powi(2)).sum();
            lanes.iter().sum::<f64>() + tail
        }
        match self {
            Values::F32(x) => sum(x, weight),
            Values::BF16(x) => sum(x, weight),
            Values::F16(x) => sum(x, weight),
        }
    }
}

impl<'a> ValuesMut<'a> {
    fn of(t: &'a mut Tensor) -> Result<ValuesMut<'a>> {
        Ok(match t.dtype() {
            DType::BF16 => ValuesMut::BF16(t.as_mut_slice()?),
            DType::F16 => ValuesMut::F16(t.as_mut_slice()?),
            _ => ValuesMut::F32(t.as_mut_slice()?),
        })
    }

    fn chunks(self) -> Vec<ValuesMut<'a>> {
        match self {
            ValuesMut::F32(x) => x.chunks_mut(CHUNK).map(ValuesMut::F32).collect(),
            ValuesMut::BF16(x) => x.chunks_mut(CHUNK).map(ValuesMut::BF16).collect(),
            ValuesMut::F16(x) => x.chunks_mut(CHUNK).map(ValuesMut::F16).collect(),
        }
    }
}

/// A slice of `len` elements taken off the front of `rest`.
fn take<'a>(rest: &mut &'a mut [f32], len: usize) -> &'a mut [f32] {
    let (head, tail) = std::mem::take(rest).split_at_mut(len);
    *rest = tail;
    head
}

/// One chunk's work.
struct Job<'a> {
    param: ValuesMut<'a>,
    grad: Values<'a>,
    exp_avg: &'a mut [f32],
    exp_avg_sq: &'a mut [f32],
    master: Option<&'a mut [f32]>,
    lr: f32,
    weight_decay: f32,
}

/// One AdamW step over every bound parameter (`hyper[k]`: the learning rate and weight decay of `bound[k]`).
pub(super) fn step(bound: Vec<Bound<'_>>, hyper: &[(f32, f32)], state: &mut State, s: &StepScalars) -> Result<()> {
    let State { exp_avg, exp_avg_sq, master, accum, .. } = state;
    let accum = accum.as_ref().map(|a| a.as_slice::<f32>()).transpose()?;
    let (mut m, mut v, mut w) =
        (exp_avg.as_mut_slice::<f32>()?, exp_avg_sq.as_mut_slice::<f32>()?, master.as_mut_slice::<f32>()?);
    let mut jobs = Vec::new();
    for (b, &(lr, weight_decay)) in bound.into_iter().zip(hyper) {
        let n = b.slot.numel();
        let grad = gradient(&b, accum)?;
        let masters: Vec<Option<&mut [f32]>> = match b.slot.master_offset {
            Some(_) => take(&mut w, n).chunks_mut(CHUNK).map(Some).collect(),
            None => (0..n.div_ceil(CHUNK)).map(|_| None).collect(),
        };
        let (ms, vs) = (take(&mut m, n).chunks_mut(CHUNK), take(&mut v, n).chunks_mut(CHUNK));
        let parts = ValuesMut::of(b.param)?.chunks().into_iter().zip(grad.chunks()).zip(ms.zip(vs)).zip(masters);
        for (((param, grad), (exp_avg, exp_avg_sq)), master) in parts {
            jobs.push(Job { param, grad, exp_avg, exp_avg_sq, master, lr, weight_decay });
        }
    }
    jobs.into_par_iter().for_each(|job| job.run(s));
    Ok(())
}

impl Job<'_> {
    fn run(self, s: &StepScalars) {
        fn with_param<G: FloatElement>(job: Job<'_>, g: &[G], s: &StepScalars) {
            let Job { exp_avg: m, exp_avg_sq: v, master, lr, weight_decay, .. } = job;
            let h = (lr, weight_decay);
            match job.param {
                ValuesMut::F32(p) => update(p, g, m, v, master, h, s),
                ValuesMut::BF16(p) => update(p, g, m, v, master, h, s),
                ValuesMut::F16(p) => update(p, g, m, v, master, h, s),
            }
        }
        match self.grad {
            Values::F32(g) => with_param(self, g, s),
            Values::BF16(g) => with_param(self, g, s),
            Values::F16(g) => with_param(self, g, s),
        }
    }
}

/// `torch.optim.AdamW`'s update of one chunk, in f32, on the master when there is one (else on the parameter).
fn update<P: FloatElement, G: FloatElement>(
    p: &mut [P],
    g: &[G],
    m: &mut [f32],
    v: &mut [f32],
    master: Option<&mut [f32]>,
    (lr, weight_decay): (f32, f32),
    s: &StepScalars,
) {
    let step_size = lr / s.bias_correction1;
    let decay = 1.0 - lr * weight_decay;
    let adam = |x: f32, g: &G, m: &mut f32, v: &mut f32| {
        let g = (s.grad_weight * g.to_f32()) * s.grad_scale;
        *m += s.one_minus_beta1 * (g - *m);
        *v = s.beta2 * *v + s.one_minus_beta2 * g * g;
        x * decay - step_size * *m / (v.sqrt() / s.bias_correction2_sqrt + s.eps)
    };
    match master {
        Some(w) => {
            for ((((p, w), g), m), v) in p.iter_mut().zip(w).zip(g).zip(m).zip(v) {
                *w = adam(*w, g, m, v);
                *p = P::from_f32(*w);
            }
        }
        None => {
            for (((p, g), m), v) in p.iter_mut().zip(g).zip(m).zip(v) {
                *p = P::from_f32(adam(p.to_f32(), g, m, v));
            }
        }
    }
}

/// A bound parameter's gradient: the caller's tensor, or its range of the accumulator.
fn gradient<'a>(b: &Bound<'a>, accum: Option<&'a [f32]>) -> Result<Values<'a>> {
    Ok(match b.grad {
        GradSource::Tensor(g) => Values::of(g)?,
        GradSource::Accumulator => {
            let offset = b.slot.offset.expect("bound parameters are trainable");
            Values::F32(&accum.expect("checked by the caller")[offset..offset + b.slot.numel()])
        }
    })
}

/// Σ (weight·g)² over the bound parameters' gradients, per chunk of each in f64.
pub(super) fn sum_of_squares(bound: &[Bound<'_>], accum: Option<&Tensor>, weight: f32) -> Result<f64> {
    let accum = accum.map(|a| a.as_slice::<f32>()).transpose()?;
    let per_tensor = bound.iter().map(|b| gradient(b, accum).map(Values::chunks)).collect::<Result<Vec<_>>>()?;
    let chunks: Vec<Values<'_>> = per_tensor.into_iter().flatten().collect();
    let partial: Vec<f64> = chunks.par_iter().map(|c| c.sum_of_squares(weight)).collect();
    Ok(partial.iter().sum())
}

/// `acc[range] += weight · source` for every `(slot, source)`, the ranges following each other from 0 in the
/// order given (the trainable parameters' moment ranges, or the bf16/f16 ones' master ranges).
pub(super) fn accumulate(acc: &mut Tensor, grads: &[(&Slot, &Tensor)], weight: f32) -> Result<()> {
    let mut rest = acc.as_mut_slice::<f32>()?;
    let mut jobs = Vec::new();
    for (slot, g) in grads {
        let acc_chunks = take(&mut rest, slot.numel()).chunks_mut(CHUNK);
        jobs.extend(acc_chunks.zip(Values::of(g)?.chunks()));
    }
    jobs.into_par_iter().for_each(|(a, g)| {
        fn add<G: FloatElement>(a: &mut [f32], g: &[G], weight: f32) {
            a.iter_mut().zip(g).for_each(|(a, g)| *a += weight * g.to_f32());
        }
        match g {
            Values::F32(g) => add(a, g, weight),
            Values::BF16(g) => add(a, g, weight),
            Values::F16(g) => add(a, g, weight),
        }
    });
    Ok(())
}
