//! The verdict head on CUDA (`kernels/heads.cu`): one block per row; the classes' CSR ids and values are uploaded
//! per call (a few hundred bytes), the per-class logsumexps live in dynamic shared memory.

use super::classes::VerdictClasses;
use super::cuda::{check_i32, ptr, THREADS};
use super::verdict::{Dims, Verdict, VerdictGrads};
use super::KERNELS;
use crate::runtime::cuda::{launch_config, PushKernelArg};
use crate::runtime::{DType, Device, Tensor};
use crate::{Error, Result};

/// Dynamic shared memory a block may use without opting in.
const MAX_SHARED_BYTES: usize = 48 << 10;

/// The classes on the device: offsets [K+1] and ids [M] as i32, values [K] f32 when given.
struct DeviceClasses {
    offsets: Tensor,
    ids: Tensor,
    values: Option<Tensor>,
    k: i32,
    /// One (max, sum) pair of f32 per class.
    shared_bytes: u32,
}

impl DeviceClasses {
    fn upload(classes: &VerdictClasses, device: Device) -> Result<Self> {
        let k = classes.num_classes();
        let shared_bytes = 8 * k;
        if shared_bytes > MAX_SHARED_BYTES {
            return Err(Error::InvalidArgument(format!(
                "{k} verdict classes: the CUDA kernel holds at most {} per-class logsumexps in shared memory",
                MAX_SHARED_BYTES / 8
            )));
        }
        let offsets =
            classes.offsets().iter().map(|&o| check_i32("the number of token ids", o)).collect::<Result<Vec<_>>>()?;
        // Ids were checked against the vocabulary, whose size fits in i32 (checked by the caller).
        let ids: Vec<i32> = classes.token_ids().iter().map(|&id| id as i32).collect();
        Ok(DeviceClasses {
            offsets: Tensor::from_slice(&offsets, &[k + 1], device)?,
            ids: Tensor::from_slice(&ids, &[ids.len()], device)?,
            values: classes.values().map(|v| Tensor::from_slice(v, &[k], device)).transpose()?,
            k: k as i32,
            shared_bytes: shared_bytes as u32,
        })
    }

    fn pointers(&self) -> Result<(u64, u64, u64)> {
        Ok((ptr(&self.offsets)?, ptr(&self.ids)?, self.values.as_ref().map_or(Ok(0), ptr)?))
    }
}

fn prepare(logits: &Tensor, classes: &VerdictClasses, dims: Dims) -> Result<(DeviceClasses, i64)> {
    check_i32("V", dims.v)?;
    Ok((DeviceClasses::upload(classes, logits.device())?, dims.v as i64))
}

pub(super) fn forward(logits: &Tensor, classes: &VerdictClasses, dims: Dims) -> Result<Verdict> {
    let (device_classes, v) = prepare(logits, classes, dims)?;
    let (b, k, device) = (dims.b, classes.num_classes(), logits.device());
    let (log_probs, probs) = (Tensor::zeros(&[b, k], DType::F32, device)?, Tensor::zeros(&[b, k], DType::F32, device)?);
    let expected = classes.values().map(|_| Tensor::zeros(&[b], DType::F32, device)).transpose()?;
    let (x, backend) = logits.cuda_ptr()?;
    let f = backend.function(&KERNELS, &format!("heads_verdict_forward_{}", logits.dtype().name()))?;
    let (offsets, ids, values) = device_classes.pointers()?;
    let outs = [ptr(&log_probs)?, ptr(&probs)?, expected.as_ref().map_or(Ok(0), ptr)?];
    let mut launch = backend.stream().launch_builder(&f);
    launch.arg(&x).arg(&v).arg(&offsets).arg(&ids).arg(&values).arg(&device_classes.k);
    for out in &outs {
        launch.arg(out);
    }
    // Kernel: heads_verdict_forward_<T>(const T*, long long, const int*, const int*, const float*, int, float* ×3),
    // one block per row of `logits` [B, V]; offsets hold K + 1 entries delimiting `ids` [M], every id < V.
    // SAFETY: arguments match the kernel; `values`/`expected` are null or hold K/B floats; `log_probs` and `probs`
    // hold B·K; the dynamic shared memory holds K (max, sum) pairs.
    unsafe { launch.launch(launch_config(b, THREADS, device_classes.shared_bytes)?) }?;
    Ok(Verdict { probs, log_probs, expected_score: expected })
}

pub(super) fn backward(
    logits: &Tensor,
    classes: &VerdictClasses,
    grads: VerdictGrads<'_>,
    dims: Dims,
    grad: &mut Tensor,
) -> Result<()> {
    let (device_classes, v) = prepare(logits, classes, dims)?;
    let (x, backend) = logits.cuda_ptr()?;
    let f = backend.function(&KERNELS, &format!("heads_verdict_backward_{}", logits.dtype().name()))?;
    let (offsets, ids, values) = device_classes.pointers()?;
    let (g_log_probs, g_expected) = (grads.log_probs.map_or(Ok(0), ptr)?, grads.expected_score.map_or(Ok(0), ptr)?);
    let out = grad.cuda_ptr_mut()?.0;
    let mut launch = backend.stream().launch_builder(&f);
    launch.arg(&x).arg(&v).arg(&offsets).arg(&ids).arg(&values).arg(&device_classes.k);
    launch.arg(&g_log_probs).arg(&g_expected).arg(&out);
    // Kernel: heads_verdict_backward_<T>(const T*, long long, const int*, const int*, const float*, int,
    // const float*, const float*, T*), one block per row; `grad` is written only at the listed ids (distinct).
    // SAFETY: arguments match the kernel; as for the forward, plus `grad_log_probs` null or B·K floats,
    // `grad_expected` null or B floats (only given with values), `grad` B·V elements of T.
    unsafe { launch.launch(launch_config(dims.b, THREADS, device_classes.shared_bytes)?) }?;
    Ok(())
}
