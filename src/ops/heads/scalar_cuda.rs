//! The scalar head on CUDA (`kernels/heads.cu`): one block per sequence for the forward and for d hidden; the
//! weight gradient as per-chunk partial sums reduced in chunk order (deterministic, no atomics).

use super::cuda::{check_i32, element_blocks, ptr, THREADS};
use super::scalar::{Plan, ScalarHead, ScalarHeadGrads};
use super::KERNELS;
use crate::runtime::cuda::{launch_config, PushKernelArg};
use crate::runtime::{DType, Tensor};
use crate::Result;

/// Sequences whose contributions one block of the weight gradient sums.
const CHUNK_ROWS: usize = 32;

/// The flat hidden row each sequence reads, on the device.
fn device_rows(plan: &Plan) -> Result<Tensor> {
    let rows: Vec<i64> = (0..plan.n).map(|n| plan.row(n) as i64).collect();
    Tensor::from_slice(&rows, &[plan.n], plan.device)
}

fn sizes(plan: &Plan) -> Result<(i32, i32, i32)> {
    Ok((check_i32("N", plan.n)?, check_i32("H", plan.h)?, check_i32("C", plan.c)?))
}

pub(super) fn forward(head: &ScalarHead<'_>, plan: &Plan) -> Result<Tensor> {
    let (_, h, c) = sizes(plan)?;
    let backend = head.hidden.cuda_ptr()?.1;
    let rows = device_rows(plan)?;
    let rewards = Tensor::zeros(&[plan.n, plan.c], DType::F32, plan.device)?;
    let f = backend.function(&KERNELS, &format!("heads_scalar_forward_{}", head.hidden.dtype().name()))?;
    let (hidden, rows, weight, bias, out) =
        (ptr(head.hidden)?, ptr(&rows)?, ptr(head.weight)?, head.bias.map_or(Ok(0), ptr)?, ptr(&rewards)?);
    let mut launch = backend.stream().launch_builder(&f);
    launch.arg(&hidden).arg(&rows).arg(&weight).arg(&bias).arg(&h).arg(&c).arg(&out);
    // SAFETY: heads_scalar_forward_<T>(const T*, const long long*, const T*, const T*, int, int, float*): one block
    // per sequence; `rows` holds N rows < N·T of `hidden` [N·T, H]; `weight` holds C·H elements, `bias` is null or
    // holds C, `rewards` N·C floats; all tensors share T (checked by the plan).
    unsafe { launch.launch(launch_config(plan.n, THREADS, 0)?) }?;
    Ok(rewards)
}

pub(super) fn backward(head: &ScalarHead<'_>, plan: &Plan, grad_rewards: &Tensor) -> Result<ScalarHeadGrads> {
    let (n, h, c) = sizes(plan)?;
    let (dtype, device) = (head.hidden.dtype(), plan.device);
    let backend = head.hidden.cuda_ptr()?.1;
    let stream = backend.stream();
    let function = |name: &str| backend.function(&KERNELS, &format!("heads_scalar_{name}_{}", dtype.name()));
    let rows = device_rows(plan)?;
    let (grad, rows_ptr, weight, hidden) = (ptr(grad_rewards)?, ptr(&rows)?, ptr(head.weight)?, ptr(head.hidden)?);

    let grad_hidden = Tensor::zeros(head.hidden.shape(), dtype, device)?;
    let f = function("grad_hidden")?;
    let out = ptr(&grad_hidden)?;
    let mut launch = stream.launch_builder(&f);
    launch.arg(&grad).arg(&rows_ptr).arg(&weight).arg(&h).arg(&c).arg(&out);
    // SAFETY: heads_scalar_grad_hidden_<T>(const float*, const long long*, const T*, int, int, T*): one block per
    // sequence; `grad` holds N·C floats, `weight` C·H elements, `grad_hidden` N·T·H, and the rows are distinct.
    unsafe { launch.launch(launch_config(plan.n, THREADS, 0)?) }?;

    let chunks = plan.n.div_ceil(CHUNK_ROWS);
    let partial = Tensor::zeros(&[chunks, plan.c, plan.h], DType::F32, device)?;
    let f = function("grad_weight_partial")?;
    let (partial_ptr, chunk_rows) = (ptr(&partial)?, CHUNK_ROWS as i32);
    let mut launch = stream.launch_builder(&f);
    launch.arg(&grad).arg(&rows_ptr).arg(&hidden).arg(&n).arg(&h).arg(&c).arg(&chunk_rows).arg(&partial_ptr);
    // SAFETY: heads_scalar_grad_weight_partial_<T>(const float*, const long long*, const T*, int, int, int, int,
    // float*): blocks = chunks × ⌈H / THREADS⌉, each writing its chunk's C × (tile of H) entries of `partial`
    // [chunks, C, H]; rows index `hidden` [N·T, H].
    unsafe { launch.launch(launch_config(chunks * plan.h.div_ceil(THREADS as usize), THREADS, 0)?) }?;

    let grad_weight = Tensor::zeros(&[plan.c, plan.h], dtype, device)?;
    let f = function("grad_weight_reduce")?;
    let (chunks_i32, size, out) = (check_i32("N / 32", chunks)?, (plan.c * plan.h) as i64, ptr(&grad_weight)?);
    let mut launch = stream.launch_builder(&f);
    launch.arg(&partial_ptr).arg(&chunks_i32).arg(&size).arg(&out);
    // SAFETY: heads_scalar_grad_weight_reduce_<T>(const float*, int, long long, T*): `partial` holds chunks·size
    // floats and `grad_weight` size = C·H elements of T; grid-stride over size.
    unsafe { launch.launch(launch_config(element_blocks(plan.c * plan.h), THREADS, 0)?) }?;

    let grad_bias = match head.bias {
        None => None,
        Some(_) => {
            let grad_bias = Tensor::zeros(&[plan.c], dtype, device)?;
            let f = function("grad_bias")?;
            let out = ptr(&grad_bias)?;
            let mut launch = stream.launch_builder(&f);
            launch.arg(&grad).arg(&n).arg(&c).arg(&out);
            // SAFETY: heads_scalar_grad_bias_<T>(const float*, int, int, T*): one block per output c; `grad` holds
            // N·C floats and `grad_bias` C elements of T.
            unsafe { launch.launch(launch_config(plan.c, THREADS, 0)?) }?;
            Some(grad_bias)
        }
    };
    Ok(ScalarHeadGrads { grad_hidden, grad_weight, grad_bias })
}
