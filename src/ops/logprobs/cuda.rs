//! CUDA path: the kernels of `kernels/logprobs.cu`, all on the device's stream. Labels and mask are turned into
//! per-row targets on the device; the only host round trip is the out-of-range flag read after that kernel.

use super::{Dims, LogProbsConfig, SequenceLogProbs, TokenReduction, Zeroing, KERNELS};
use crate::ops::tokens;
use crate::runtime::cuda::{launch_config, PushKernelArg};
use crate::runtime::{DType, Tensor};
use crate::{Error, Result};

const THREADS: u32 = 256;
/// Grid size cap for row and element loops (each kernel strides over the rest).
const MAX_BLOCKS: usize = 1 << 16;

fn ptr(t: &Tensor) -> Result<u64> {
    Ok(t.cuda_ptr()?.0)
}

/// Per row of [N·T]: the label when the token counts, −1 otherwise (i32, on the device). A counted label outside
/// `[0, V)` is an error naming its position, as on the CPU. Also refuses N, T or V beyond i32, which every kernel
/// of this file relies on.
fn targets(labels: &Tensor, mask: Option<&Tensor>, cfg: &LogProbsConfig, dims: Dims) -> Result<Tensor> {
    let rows = dims.n * dims.t;
    if [dims.n, dims.t, dims.v].iter().any(|&d| d > i32::MAX as usize) {
        return Err(Error::Shape(format!("the CUDA path indexes N, T and V with i32; got {dims:?}")));
    }
    let device = labels.device();
    let mut targets = Tensor::zeros(&[dims.n, dims.t], DType::I32, device)?;
    let mut first_bad = Tensor::from_slice(&[i64::MAX], &[1], device)?;
    let (targets_ptr, backend) = targets.cuda_ptr_mut()?;
    let (bad_ptr, _) = first_bad.cuda_ptr_mut()?;
    let labels_i64 = (labels.dtype() == DType::I64) as i32;
    let (mask_ptr, mask_kind) = match mask {
        None => (0u64, 0i32),
        // `check_inputs` admits i32, i64 and f32 masks.
        Some(m) => (
            ptr(m)?,
            match m.dtype() {
                DType::I32 => 1i32,
                DType::I64 => 2,
                _ => 3,
            },
        ),
    };
    let (rows_i64, vocab_i64) = (rows as i64, dims.v as i64);
    let f = backend.function(&KERNELS, "logprobs_targets")?;
    let mut launch = backend.stream().launch_builder(&f);
    let labels_ptr = ptr(labels)?;
    launch.arg(&labels_ptr).arg(&labels_i64).arg(&mask_ptr).arg(&mask_kind);
    launch.arg(&rows_i64).arg(&vocab_i64).arg(&cfg.ignore_index).arg(&targets_ptr).arg(&bad_ptr);
    // SAFETY: logprobs_targets(const void*, int, const void*, int, long long ×3, int*, unsigned long long*):
    // `labels` holds N·T i32 (flag 0) or i64 (flag 1); `mask` is null (kind 0) or N·T i32/i64/f32 (kinds 1-3),
    // checked by `check_inputs`; `targets` holds N·T i32 and `first_bad` one 8-byte integer.
    unsafe { launch.launch(launch_config(rows.div_ceil(THREADS as usize).min(MAX_BLOCKS), THREADS, 0)?) }?;
    let bad = first_bad.to_vec::<i64>()?[0];
    if bad != i64::MAX {
        let position = bad as usize;
        let label = tokens::labels_i64(labels)?[position];
        return Err(Error::InvalidArgument(format!(
            "label {label} at (sequence {}, token {}) is outside the vocabulary [0, {}) and is not the ignore index {}",
            position / dims.t,
            position % dims.t,
            dims.v,
            cfg.ignore_index
        )));
    }
    Ok(targets)
}

fn mean_flag(cfg: &LogProbsConfig) -> i32 {
    (cfg.reduction == TokenReduction::Mean) as i32
}

pub(super) fn forward(
    logits: &Tensor,
    labels: &Tensor,
    mask: Option<&Tensor>,
    cfg: &LogProbsConfig,
    dims: Dims,
) -> Result<SequenceLogProbs> {
    let Dims { n, t, v } = dims;
    let targets = targets(labels, mask, cfg, dims)?;
    let device = logits.device();
    let rows = n * t;
    let f32_zeros = |shape: &[usize]| Tensor::zeros(shape, DType::F32, device);
    let (mut lse, mut per_token) = (f32_zeros(&[n, t])?, f32_zeros(&[3, rows])?);
    let (lse_ptr, backend) = lse.cuda_ptr_mut()?;
    let (per_token_ptr, _) = per_token.cuda_ptr_mut()?;
    let (rows_i64, v_i32) = (rows as i64, v as i32);
    let (logits_ptr, targets_ptr) = (ptr(logits)?, ptr(&targets)?);
    let f = backend.function(&KERNELS, &format!("logprobs_forward_{}", logits.dtype().name()))?;
    let mut launch = backend.stream().launch_builder(&f);
    launch.arg(&logits_ptr).arg(&targets_ptr).arg(&rows_i64).arg(&v_i32).arg(&lse_ptr).arg(&per_token_ptr);
    // SAFETY: logprobs_forward_<T>(const T*, const int*, long long, int, float*, float*): `logits` holds N·T·V
    // elements of T (the kernel's T, chosen by dtype), `targets` N·T i32 each −1 or < V, `lse` N·T floats and
    // `per_token` 3·N·T floats; one block (THREADS, a multiple of 32) per row, striding over the rest.
    unsafe { launch.launch(launch_config(rows.min(MAX_BLOCKS), THREADS, 0)?) }?;

    let mut outs = [f32_zeros(&[n])?, f32_zeros(&[n])?, f32_zeros(&[n])?, f32_zeros(&[n])?];
    let out_ptrs = outs.iter_mut().map(|o| Ok(o.cuda_ptr_mut()?.0)).collect::<Result<Vec<u64>>>()?;
    let (n_i32, t_i32, mean) = (n as i32, t as i32, mean_flag(cfg));
    let f = backend.function(&KERNELS, "logprobs_sequences")?;
    let mut launch = backend.stream().launch_builder(&f);
    launch.arg(&per_token_ptr).arg(&targets_ptr).arg(&n_i32).arg(&t_i32).arg(&mean);
    for p in &out_ptrs {
        launch.arg(p);
    }
    // SAFETY: logprobs_sequences(const float*, const int*, int, int, int, float* ×4): `per_token` holds 3·N·T
    // floats and `targets` N·T i32, each output N floats; one block per sequence.
    unsafe { launch.launch(launch_config(n.min(MAX_BLOCKS), THREADS, 0)?) }?;
    let [logps, token_counts, mean_logits, entropy] = outs;
    Ok(SequenceLogProbs { logps, token_counts, mean_logits, entropy, lse })
}

/// Launches the gradient kernel from `logits_ptr` into `grad_ptr`: a zeroed buffer (rows that do not count are
/// skipped) or `logits_ptr` itself (in place).
#[allow(clippy::too_many_arguments)]
fn launch_backward(
    logits: &Tensor,
    logits_ptr: u64,
    grad_ptr: u64,
    targets: &Tensor,
    saved: &SequenceLogProbs,
    grad_logps: &Tensor,
    cfg: &LogProbsConfig,
    dims: Dims,
) -> Result<()> {
    let Dims { n, t, v } = dims;
    let rows = n * t;
    let backend = targets.cuda_ptr()?.1.clone();
    let (rows_i64, t_i32, v_i32, mean) = (rows as i64, t as i32, v as i32, mean_flag(cfg));
    let f = backend.function(&KERNELS, &format!("logprobs_backward_{}", logits.dtype().name()))?;
    let inputs = [ptr(targets)?, ptr(&saved.lse)?, ptr(grad_logps)?, ptr(&saved.token_counts)?];
    let mut launch = backend.stream().launch_builder(&f);
    launch.arg(&logits_ptr).arg(&grad_ptr);
    for p in &inputs {
        launch.arg(p);
    }
    launch.arg(&rows_i64).arg(&t_i32).arg(&v_i32).arg(&mean);
    // Kernel: logprobs_backward_<T>(const T*, T*, const int*, const float* ×3, long long, int, int, int). `logits`
    // and `grad` may be the same buffer: each element is read, then written, by one thread.
    // SAFETY: arguments match the kernel; `logits`/`grad` hold N·T·V elements of T, `targets` and `lse` N·T,
    // `grad_logps` and `token_counts` N (shapes checked by `check_backward`); one block per row.
    unsafe { launch.launch(launch_config(rows.min(MAX_BLOCKS), THREADS, 0)?) }?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    logits: &Tensor,
    labels: &Tensor,
    mask: Option<&Tensor>,
    saved: &SequenceLogProbs,
    grad_logps: &Tensor,
    cfg: &LogProbsConfig,
    dims: Dims,
    grad: &mut Tensor,
    zeroing: Zeroing,
) -> Result<()> {
    let targets = targets(labels, mask, cfg, dims)?;
    if zeroing == Zeroing::AfterValidation {
        grad.fill_zeros()?;
    }
    let grad_ptr = grad.cuda_ptr_mut()?.0;
    launch_backward(logits, ptr(logits)?, grad_ptr, &targets, saved, grad_logps, cfg, dims)
}

pub(super) fn backward_in_place(
    logits: &mut Tensor,
    labels: &Tensor,
    mask: Option<&Tensor>,
    saved: &SequenceLogProbs,
    grad_logps: &Tensor,
    cfg: &LogProbsConfig,
    dims: Dims,
) -> Result<()> {
    let targets = targets(labels, mask, cfg, dims)?;
    let logits_ptr = logits.cuda_ptr_mut()?.0;
    launch_backward(logits, logits_ptr, logits_ptr, &targets, saved, grad_logps, cfg, dims)
}
