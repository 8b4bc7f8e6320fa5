//! The fused optimizer kernels on CUDA (`kernels/adamw.cu`): one launch over every trainable parameter, reaching
//! the tensors through a device array of [`TensorSlot`] descriptors and the chunks through a list of
//! `(slot, first element)` pairs, both uploaded per call (pointers change when a caller swaps buffers).

use super::layout::{chunks, Bound, GradSource, Slot};
use super::{State, StepScalars, KERNELS};
use std::sync::Arc;

use crate::ops::launch::{ptr, THREADS};
use crate::runtime::cuda::{self, launch_config, CudaBackend, PushKernelArg};
use crate::runtime::{DType, Device, Tensor};
use crate::Result;

/// `TensorSlot` of `kernels/adamw.cu` (64 bytes).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct TensorSlot {
    param: u64,
    grad: u64,
    offset: i64,
    numel: i64,
    master_offset: i64,
    lr: f32,
    weight_decay: f32,
    param_dtype: i32,
    grad_dtype: i32,
    pad: i64,
}

fn dtype_code(dtype: DType) -> i32 {
    match dtype {
        DType::BF16 => 1,
        DType::F16 => 2,
        _ => 0,
    }
}

/// The backend of the tensors' device on the calling thread's stream: the optimizer's state outlives the stream
/// it was made on (a caller's, under [`cuda::on_stream`]), so launches take the current one, not the state's.
fn current_backend(device: Device) -> Result<Arc<CudaBackend>> {
    match device {
        Device::Cuda(ordinal) => cuda::backend(ordinal),
        Device::Cpu => Err(crate::Error::Device("the optimizer's CUDA path got CPU tensors".into())),
    }
}

/// The descriptors and the chunk list on `device`, and the number of chunks (blocks).
fn upload(slots: &[TensorSlot], chunks: &[(usize, usize)], device: Device) -> Result<(Tensor, Tensor, usize)> {
    let words: &[i64] = bytemuck::cast_slice(slots);
    let pairs: Vec<i64> = chunks.iter().flat_map(|&(k, start)| [k as i64, start as i64]).collect();
    Ok((
        Tensor::from_slice(words, &[words.len()], device)?,
        Tensor::from_slice(&pairs, &[pairs.len()], device)?,
        chunks.len(),
    ))
}

fn slot(s: &Slot, param: u64, grad: u64, grad_dtype: DType, (lr, weight_decay): (f32, f32)) -> TensorSlot {
    TensorSlot {
        param,
        grad,
        offset: s.offset.unwrap_or(0) as i64,
        numel: s.numel() as i64,
        master_offset: s.master_offset.map_or(-1, |o| o as i64),
        lr,
        weight_decay,
        param_dtype: dtype_code(s.dtype),
        grad_dtype: dtype_code(grad_dtype),
        pad: 0,
    }
}

pub(super) fn step(bound: Vec<Bound<'_>>, hyper: &[(f32, f32)], state: &mut State, s: &StepScalars) -> Result<()> {
    let backend = current_backend(state.exp_avg.device())?;
    let accum = state.accum.as_ref().map(ptr).transpose()?;
    let mut slots = Vec::with_capacity(bound.len());
    for (b, &h) in bound.iter().zip(hyper) {
        let (grad, grad_dtype) = gradient(b, accum)?;
        slots.push(slot(b.slot, ptr(b.param)?, grad, grad_dtype, h));
    }
    let (slots_d, chunks_d, blocks) = upload(&slots, &chunks(bound.iter().map(|b| b.slot)), state.exp_avg.device())?;
    if blocks == 0 {
        return Ok(());
    }
    let f = backend.function(&KERNELS, "adamw_step")?;
    let (slots_p, chunks_p) = (ptr(&slots_d)?, ptr(&chunks_d)?);
    let (m, v, w) = (ptr(&state.exp_avg)?, ptr(&state.exp_avg_sq)?, ptr(&state.master)?);
    let mut l = backend.stream().launch_builder(&f);
    l.arg(&slots_p).arg(&chunks_p).arg(&m).arg(&v).arg(&w).arg(&s.grad_weight).arg(&s.grad_scale);
    l.arg(&s.one_minus_beta1).arg(&s.beta2).arg(&s.one_minus_beta2).arg(&s.eps).arg(&s.bias_correction1);
    l.arg(&s.bias_correction2_sqrt);
    // SAFETY: adamw_step(const TensorSlot*, const Chunk*, float* ×3, float ×8): one block per uploaded chunk, each in
    // a slot below `slots.len()`; slots hold `numel` elements (`Layout::bind`), their moment and master ranges lie
    // inside those buffers (`offset + numel <= trainable`, masters likewise), and no two slots overlap.
    unsafe { l.launch(launch_config(blocks, THREADS, 0)?) }?;
    Ok(())
}

/// A bound parameter's gradient: the caller's tensor, or its range of the accumulator (at `accum`), and its dtype.
fn gradient(b: &Bound<'_>, accum: Option<u64>) -> Result<(u64, DType)> {
    Ok(match b.grad {
        GradSource::Tensor(g) => (ptr(g)?, g.dtype()),
        GradSource::Accumulator => {
            let base = accum.expect("checked by the caller");
            (base + 4 * b.slot.offset.expect("bound parameters are trainable") as u64, DType::F32)
        }
    })
}

/// Σ (weight·g)² over the bound parameters' gradients, as fp32 per-chunk partial sums added in f64 on the host.
pub(super) fn sum_of_squares(bound: &[Bound<'_>], accum: Option<&Tensor>, weight: f32) -> Result<f64> {
    let Some(first) = bound.first() else { return Ok(0.0) };
    let device = first.param.device();
    let backend = current_backend(device)?;
    let accum = accum.map(ptr).transpose()?;
    let slots = bound
        .iter()
        .map(|b| gradient(b, accum).map(|(grad, dtype)| slot(b.slot, 0, grad, dtype, (0.0, 0.0))))
        .collect::<Result<Vec<_>>>()?;
    let (slots_d, chunks_d, blocks) = upload(&slots, &chunks(bound.iter().map(|b| b.slot)), device)?;
    if blocks == 0 {
        return Ok(0.0);
    }
    let mut partial = Tensor::zeros(&[blocks], DType::F32, device)?;
    let f = backend.function(&KERNELS, "grad_sq_norm")?;
    let (slots_p, chunks_p, out) = (ptr(&slots_d)?, ptr(&chunks_d)?, partial.cuda_ptr_mut()?.0);
    let mut l = backend.stream().launch_builder(&f);
    l.arg(&slots_p).arg(&chunks_p).arg(&weight).arg(&out);
    // SAFETY: grad_sq_norm(const TensorSlot*, const Chunk*, float, float*): one block per chunk as in `step`, each
    // reading its slot's gradient within `numel` and writing `partial[block]` (`blocks` floats).
    unsafe { l.launch(launch_config(blocks, THREADS, 0)?) }?;
    Ok(partial.to_vec::<f32>()?.iter().map(|&p| f64::from(p)).sum())
}

/// `acc[slot's offset + i] += weight · source[i]` for every `(slot, source)`, where `offset` is the slot's moment
/// offset, or its master offset when `into_masters` (copying parameters into a zeroed master buffer).
pub(super) fn accumulate(
    acc: &mut Tensor,
    sources: &[(&Slot, &Tensor)],
    weight: f32,
    into_masters: bool,
) -> Result<()> {
    let backend = current_backend(acc.device())?;
    let mut slots = Vec::with_capacity(sources.len());
    for (s, t) in sources {
        let mut d = slot(s, 0, ptr(t)?, t.dtype(), (0.0, 0.0));
        if into_masters {
            d.offset = s.master_offset.expect("only bf16/f16 parameters have masters") as i64;
        }
        slots.push(d);
    }
    let (slots_d, chunks_d, blocks) = upload(&slots, &chunks(sources.iter().map(|(s, _)| *s)), acc.device())?;
    if blocks == 0 {
        return Ok(());
    }
    let f = backend.function(&KERNELS, "accumulate_grads")?;
    let (slots_p, chunks_p, out) = (ptr(&slots_d)?, ptr(&chunks_d)?, acc.cuda_ptr_mut()?.0);
    let mut l = backend.stream().launch_builder(&f);
    l.arg(&slots_p).arg(&chunks_p).arg(&out).arg(&weight);
    // SAFETY: accumulate_grads(const TensorSlot*, const Chunk*, float*, float): one block per chunk as in `step`,
    // each reading its source within `numel` and adding into `acc[offset..offset + numel]`, inside `acc` (moment
    // offsets lie below `trainable`, master offsets below `masters`, the buffer's length), no two slots overlapping.
    unsafe { l.launch(launch_config(blocks, THREADS, 0)?) }?;
    Ok(())
}
