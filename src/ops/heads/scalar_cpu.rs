//! The scalar head on the CPU: the N gathered rows widened to f32, then `gemm` products.

use rayon::prelude::*;

use super::host::{scatter, Floats};
use super::scalar::{Plan, ScalarHead, ScalarHeadGrads};
use crate::runtime::cpu::{matmul, rows_per_task, MatRef};
use crate::runtime::{Device, Tensor};
use crate::Result;

/// The hidden states the head reads, [N,H] f32 (only these N rows of [N·T, H] are touched).
fn gathered(head: &ScalarHead<'_>, plan: &Plan) -> Result<Vec<f32>> {
    let hidden = Floats::of("hidden", head.hidden)?;
    let h = plan.h;
    let mut rows = vec![0.0f32; plan.n * h];
    rows.par_chunks_mut(h)
        .enumerate()
        .with_min_len(rows_per_task(plan.n, h))
        .for_each(|(n, dst)| hidden.read_into(plan.row(n) * h, dst));
    Ok(rows)
}

pub(super) fn forward(head: &ScalarHead<'_>, plan: &Plan) -> Result<Tensor> {
    let (n, h, c) = (plan.n, plan.h, plan.c);
    let rows = gathered(head, plan)?;
    let weight = head.weight.to_f32_cow()?;
    let mut rewards = vec![0.0f32; n * c];
    matmul(&mut rewards, MatRef::row_major(&rows, n, h), MatRef::row_major(&weight, c, h).t(), 0.0);
    if let Some(bias) = head.bias {
        let bias = bias.to_f32_cow()?;
        rewards.chunks_exact_mut(c).for_each(|r| r.iter_mut().zip(bias.iter()).for_each(|(x, b)| *x += b));
    }
    Tensor::from_slice(&rewards, &[n, c], Device::Cpu)
}

pub(super) fn backward(head: &ScalarHead<'_>, plan: &Plan, grad_rewards: &Tensor) -> Result<ScalarHeadGrads> {
    let (n, h, c) = (plan.n, plan.h, plan.c);
    let g = MatRef::row_major(grad_rewards.as_slice::<f32>()?, n, c);
    let rows = gathered(head, plan)?;
    let weight = head.weight.to_f32_cow()?;

    // d hidden rows = G·W, written at the gathered positions of a zeroed [N,T,H].
    let mut grad_rows = vec![0.0f32; n * h];
    matmul(&mut grad_rows, g, MatRef::row_major(&weight, c, h), 0.0);
    let mut grad_hidden = Tensor::zeros(head.hidden.shape(), head.hidden.dtype(), Device::Cpu)?;
    scatter(&mut grad_hidden, &grad_rows, |i| plan.row(i / h) * h + i % h)?;

    // d weight = Gᵀ·rows; d bias = column sums of G, in sequence order.
    let mut grad_weight = vec![0.0f32; c * h];
    matmul(&mut grad_weight, g.t(), MatRef::row_major(&rows, n, h), 0.0);
    let grad_bias = head
        .bias
        .map(|b| {
            let mut sums = vec![0.0f32; c];
            g.data.chunks_exact(c).for_each(|r| sums.iter_mut().zip(r).for_each(|(s, x)| *s += x));
            Tensor::from_f32(&sums, &[c], b.dtype(), Device::Cpu)
        })
        .transpose()?;
    Ok(ScalarHeadGrads {
        grad_hidden,
        grad_weight: Tensor::from_f32(&grad_weight, &[c, h], head.weight.dtype(), Device::Cpu)?,
        grad_bias,
    })
}
