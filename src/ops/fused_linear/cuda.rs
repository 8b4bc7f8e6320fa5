//! The CUDA fused path: cuBLAS for the chunk products, `kernels/fused_linear.cu` for gathers, row reductions and
//! gradients. Everything runs on the device's stream; token indices are uploaded once per call.

use super::{ExtendedLogProbs, FusedLinearConfig, FusedLinearGradsMut, LinearHead, Plan, KERNELS};
use crate::ops::logprobs::{SequenceLogProbs, TokenReduction};
use crate::runtime::cuda::blas::{self, DeviceMat};
use crate::runtime::cuda::{launch_config, CudaBackend, PushKernelArg};
use crate::runtime::{DType, Device, Tensor};
use crate::{Error, Result};

const THREADS: u32 = 256;
/// Blocks for grid-stride element loops: enough to fill any current GPU.
const MAX_ELEMENT_BLOCKS: usize = 4096;

/// Counted-token indices on the device, as i32.
struct DeviceTokens {
    positions: Tensor,
    labels: Tensor,
    count: usize,
}

impl DeviceTokens {
    fn upload(plan: &Plan, device: Device) -> Result<Self> {
        if plan.n * plan.t > i32::MAX as usize || plan.v > i32::MAX as usize || plan.h > i32::MAX as usize {
            return Err(Error::Shape("the CUDA fused path indexes tokens and vocabulary with 32-bit integers".into()));
        }
        let column = |f: &dyn Fn(&crate::ops::tokens::CountedToken) -> usize| -> Result<Tensor> {
            let mut values: Vec<i32> = plan.tokens.iter().map(|t| f(t) as i32).collect();
            // Kernels never read past the counted tokens; one padding entry keeps the buffer non-empty.
            values.push(0);
            Tensor::from_slice(&values, &[values.len()], device)
        };
        Ok(DeviceTokens {
            positions: column(&|t| t.position)?,
            labels: column(&|t| t.label)?,
            count: plan.tokens.len(),
        })
    }
}

/// Per-counted-token f32 values on the device (one padding entry keeps the buffer non-empty).
fn per_token_values(values: &[f32], device: Device) -> Result<Tensor> {
    let padded: Vec<f32> = values.iter().copied().chain([0.0]).collect();
    Tensor::from_slice(&padded, &[padded.len()], device)
}

fn ptr(t: &Tensor) -> Result<u64> {
    Ok(t.cuda_ptr()?.0)
}

fn optional_ptr(t: Option<&Tensor>) -> Result<u64> {
    t.map_or(Ok(0), ptr)
}

/// The per-call state shared by forward and backward: tokens on the device and one chunk's scratch buffers.
struct Chunks<'a> {
    head: &'a LinearHead<'a>,
    plan: &'a Plan,
    backend: std::sync::Arc<CudaBackend>,
    tokens: DeviceTokens,
    chunk_len: usize,
    rows: Tensor,
    logits: Tensor,
}

impl<'a> Chunks<'a> {
    fn new(head: &'a LinearHead<'a>, plan: &'a Plan, cfg: &FusedLinearConfig) -> Result<Self> {
        if head.hidden.dtype() != head.weight.dtype() || head.bias.is_some_and(|b| b.dtype() != head.weight.dtype()) {
            return Err(Error::DType {
                arg: "hidden/bias",
                got: head.hidden.dtype(),
                expected: format!("the weight's dtype ({}) on CUDA", head.weight.dtype()),
            });
        }
        let backend = head.hidden.cuda_ptr()?.1.clone();
        let chunk_len = cfg.chunk_tokens_for(plan.v).min(plan.tokens.len().max(1));
        Ok(Chunks {
            head,
            plan,
            tokens: DeviceTokens::upload(plan, plan.device)?,
            rows: Tensor::zeros(&[chunk_len, plan.h], head.hidden.dtype(), plan.device)?,
            logits: Tensor::zeros(&[chunk_len, plan.v], DType::F32, plan.device)?,
            chunk_len,
            backend,
        })
    }

    fn dtype(&self) -> DType {
        self.head.weight.dtype()
    }

    /// The chunks as (first counted token, tokens in chunk).
    fn ranges(&self) -> impl Iterator<Item = (usize, usize)> {
        let (len, total) = (self.chunk_len, self.tokens.count);
        (0..total).step_by(len).map(move |first| (first, len.min(total - first)))
    }

    /// Gathers the hidden rows of tokens [first, first + c) and computes their f32 logits (bias not added: the
    /// row kernels add it on the fly).
    fn chunk_logits(&self, first: usize, c: usize) -> Result<()> {
        let (h, v) = (self.plan.h, self.plan.v);
        let f = self.backend.function(&KERNELS, &format!("fl_gather_rows_{}", self.dtype().name()))?;
        let (hidden, positions, rows) = (ptr(self.head.hidden)?, ptr(&self.tokens.positions)?, ptr(&self.rows)?);
        let positions = positions + 4 * first as u64;
        let (c_i32, h_i32) = (c as i32, h as i32);
        let mut launch = self.backend.stream().launch_builder(&f);
        launch.arg(&hidden).arg(&positions).arg(&rows).arg(&c_i32).arg(&h_i32);
        // SAFETY: fl_gather_rows_<T>(const T*, const int*, T*, int, int): `hidden` holds N·T·H elements of T,
        // `positions` (offset to this chunk) holds c valid positions < N·T, `rows` holds chunk_len·H ≥ c·H.
        unsafe {
            launch.launch(launch_config((c * h).div_ceil(THREADS as usize).min(MAX_ELEMENT_BLOCKS), THREADS, 0)?)
        }?;
        let dtype = self.dtype();
        blas::matmul(
            &self.backend,
            ptr(&self.logits)?,
            DeviceMat::row_major(rows, dtype, c, h),
            DeviceMat::row_major(ptr(self.head.weight)?, dtype, v, h).t(),
            0.0,
        )
    }
}

pub(super) fn forward(head: &LinearHead<'_>, plan: &Plan, cfg: &FusedLinearConfig) -> Result<ExtendedLogProbs> {
    let chunks = Chunks::new(head, plan, cfg)?;
    let (n, v, k) = (plan.n, plan.v, chunks.tokens.count);
    let per_token = || Tensor::zeros(&[k.max(1)], DType::F32, plan.device);
    let (lse_tok, logp_tok, mean_logit_tok, entropy_tok) = (per_token()?, per_token()?, per_token()?, per_token()?);
    let collision_tok = plan.log_collision.then(per_token).transpose()?;
    let stats = chunks.backend.function(&KERNELS, &format!("fl_row_stats_{}", chunks.dtype().name()))?;
    for (first, c) in chunks.ranges() {
        chunks.chunk_logits(first, c)?;
        let (logits, bias, labels) = (ptr(&chunks.logits)?, optional_ptr(head.bias)?, ptr(&chunks.tokens.labels)?);
        let outs = [
            ptr(&lse_tok)?,
            ptr(&logp_tok)?,
            ptr(&mean_logit_tok)?,
            ptr(&entropy_tok)?,
            optional_ptr(collision_tok.as_ref())?,
        ];
        let (v_i32, first_i32) = (v as i32, first as i32);
        let mut launch = chunks.backend.stream().launch_builder(&stats);
        launch.arg(&logits).arg(&bias).arg(&labels).arg(&v_i32).arg(&first_i32);
        for out in &outs {
            launch.arg(out);
        }
        // SAFETY: fl_row_stats_<T>(const float*, const T*, const int*, int, int, float* ×5): one block per chunk
        // row of `logits` [c, V]; `bias` is null or holds V elements; labels and the outputs (the last null or not)
        // hold k ≥ first + c entries; labels were validated < V on the host.
        unsafe { launch.launch(launch_config(c, THREADS, 0)?) }?;
    }

    // Counted tokens are in position order, so each sequence owns a contiguous range of them.
    let mut starts = vec![0i32; n + 1];
    for tok in &plan.tokens {
        starts[tok.sequence + 1] += 1;
    }
    for i in 0..n {
        starts[i + 1] += starts[i];
    }
    let starts = Tensor::from_slice(&starts, &[n + 1], plan.device)?;
    let per_sequence = || Tensor::zeros(&[n], DType::F32, plan.device);
    let (logps, counts, mean_logits, entropy) = (per_sequence()?, per_sequence()?, per_sequence()?, per_sequence()?);
    let lse = Tensor::zeros(&[n, plan.t], DType::F32, plan.device)?;
    let weights = plan.weights.as_deref().map(|w| per_token_values(w, plan.device)).transpose()?;
    let weighted = weights.as_ref().map(|_| per_sequence()).transpose()?;
    let collision = collision_tok.as_ref().map(|_| per_sequence()).transpose()?;
    let reduce = chunks.backend.function(&KERNELS, "fl_reduce_sequences")?;
    let mean = i32::from(cfg.logprobs.reduction == TokenReduction::Mean);
    let args = [
        ptr(&starts)?,
        ptr(&chunks.tokens.positions)?,
        ptr(&lse_tok)?,
        ptr(&logp_tok)?,
        ptr(&mean_logit_tok)?,
        ptr(&entropy_tok)?,
        optional_ptr(weights.as_ref())?,
        optional_ptr(collision_tok.as_ref())?,
    ];
    let outs = [
        ptr(&logps)?,
        ptr(&counts)?,
        ptr(&mean_logits)?,
        ptr(&entropy)?,
        ptr(&lse)?,
        optional_ptr(weighted.as_ref())?,
        optional_ptr(collision.as_ref())?,
    ];
    let mut launch = chunks.backend.stream().launch_builder(&reduce);
    for a in &args {
        launch.arg(a);
    }
    launch.arg(&mean);
    for o in &outs {
        launch.arg(o);
    }
    // SAFETY: fl_reduce_sequences(const int* ×2, const float* ×6, int, float* ×7), a block a sequence: `starts`
    // has N + 1 offsets into the k-long token arrays (`weights`, `collision`: null or k + 1 long); the outputs hold
    // N, N, N, N, N·T, N, N floats (the last two null when their inputs are); every position is < N·T.
    unsafe { launch.launch(launch_config(n, THREADS, 0)?) }?;
    let logprobs = SequenceLogProbs { logps, token_counts: counts, mean_logits, entropy, lse };
    Ok(ExtendedLogProbs { logprobs, weighted_logps: weighted, log_collision: collision })
}

pub(super) fn backward(
    head: &LinearHead<'_>,
    plan: &Plan,
    saved: &SequenceLogProbs,
    scales: &[f32],
    cfg: &FusedLinearConfig,
    out: FusedLinearGradsMut<'_>,
) -> Result<()> {
    let chunks = Chunks::new(head, plan, cfg)?;
    let (h, v, dtype, device) = (plan.h, plan.v, chunks.dtype(), plan.device);
    let scale = per_token_values(scales, device)?;
    let lse = &saved.lse;

    // For f32 the gradient overwrites the chunk's logits; bf16/f16 products need it in the weight's dtype.
    let grads_t = if dtype == DType::F32 { None } else { Some(Tensor::zeros(&[chunks.chunk_len, v], dtype, device)?) };
    let grad_rows = Tensor::zeros(&[chunks.chunk_len, h], DType::F32, device)?;
    let grad_weight = F32Sums::new(out.grad_weight, out.accumulate)?;
    let grad_bias = out.grad_bias.map(|gb| F32Sums::new(gb, out.accumulate)).transpose()?;
    let ones = Tensor::from_f32(&vec![1.0; chunks.chunk_len], &[1, chunks.chunk_len], dtype, device)?;
    let grad_hidden = out.grad_hidden;
    // Rows of uncounted tokens get a zero gradient.
    grad_hidden.fill_zeros()?;

    let row_grad = chunks.backend.function(&KERNELS, &format!("fl_row_grad_{}", dtype.name()))?;
    let scatter = chunks.backend.function(&KERNELS, &format!("fl_scatter_rows_{}", dtype.name()))?;
    for (first, c) in chunks.ranges() {
        chunks.chunk_logits(first, c)?;
        let logits = ptr(&chunks.logits)?;
        let grads = grads_t.as_ref().map_or(Ok(logits), ptr)?;
        let args = [
            logits,
            optional_ptr(head.bias)?,
            ptr(&chunks.tokens.labels)?,
            ptr(&chunks.tokens.positions)?,
            ptr(lse)?,
            ptr(&scale)?,
        ];
        let (v_i32, first_i32, c_i32, h_i32) = (v as i32, first as i32, c as i32, h as i32);
        let mut launch = chunks.backend.stream().launch_builder(&row_grad);
        for a in &args {
            launch.arg(a);
        }
        launch.arg(&v_i32).arg(&first_i32).arg(&grads);
        // SAFETY: fl_row_grad_<T>(const float*, const T*, const int* ×2, const float* ×2, int, int, T*): one block
        // per chunk row; `grads` holds chunk_len·V elements of T (or is `logits` itself for f32, which the kernel
        // allows); token arrays and `scale` hold k ≥ first + c entries; `lse` holds N·T floats.
        unsafe { launch.launch(launch_config(c, THREADS, 0)?) }?;

        let g = DeviceMat::row_major(grads, dtype, c, v);
        let rows = DeviceMat::row_major(ptr(&chunks.rows)?, dtype, c, h);
        blas::matmul(&chunks.backend, ptr(&grad_rows)?, g, DeviceMat::row_major(ptr(head.weight)?, dtype, v, h), 0.0)?;
        blas::matmul(&chunks.backend, grad_weight.ptr()?, g.t(), rows, 1.0)?;
        if let Some(gb) = &grad_bias {
            blas::matmul(&chunks.backend, gb.ptr()?, DeviceMat::row_major(ptr(&ones)?, dtype, 1, c), g, 1.0)?;
        }

        let (src, positions, dst) = (ptr(&grad_rows)?, ptr(&chunks.tokens.positions)?, ptr(grad_hidden)?);
        let mut launch = chunks.backend.stream().launch_builder(&scatter);
        launch.arg(&src).arg(&positions).arg(&first_i32).arg(&c_i32).arg(&h_i32).arg(&dst);
        // SAFETY: fl_scatter_rows_<T>(const float*, const int*, int, int, int, T*): `src` holds c·H floats,
        // positions[first..first + c] are distinct and < N·T, `dst` holds N·T·H elements of T.
        unsafe {
            launch.launch(launch_config((c * h).div_ceil(THREADS as usize).min(MAX_ELEMENT_BLOCKS), THREADS, 0)?)
        }?;
    }
    grad_weight.finish(&chunks.backend)?;
    grad_bias.map(|gb| gb.finish(&chunks.backend)).transpose()?;
    Ok(())
}

/// An output's f32 sums on the device: an f32 output summed in place (cleared first unless accumulating), or a
/// zeroed f32 buffer written (or added) into a bf16/f16 output at the end.
struct F32Sums<'a> {
    out: &'a mut Tensor,
    widened: Option<Tensor>,
    accumulate: bool,
}

impl<'a> F32Sums<'a> {
    fn new(out: &'a mut Tensor, accumulate: bool) -> Result<Self> {
        let widened = if out.dtype() == DType::F32 {
            if !accumulate {
                out.fill_zeros()?;
            }
            None
        } else {
            Some(Tensor::zeros(out.shape(), DType::F32, out.device())?)
        };
        Ok(F32Sums { out, widened, accumulate })
    }

    fn ptr(&self) -> Result<u64> {
        ptr(self.widened.as_ref().unwrap_or(&*self.out))
    }

    fn finish(self, backend: &CudaBackend) -> Result<()> {
        let Some(sums) = self.widened else { return Ok(()) };
        let f = backend.function(&KERNELS, &format!("fl_convert_{}", self.out.dtype().name()))?;
        let (src, dst, n, accumulate) = (ptr(&sums)?, ptr(self.out)?, sums.numel() as i64, i32::from(self.accumulate));
        let mut launch = backend.stream().launch_builder(&f);
        launch.arg(&src).arg(&n).arg(&accumulate).arg(&dst);
        // SAFETY: fl_convert_<T>(const float*, long long, int, T*): `src` holds n floats and `dst` n elements of T
        // (the output's shape, checked by the caller).
        unsafe {
            launch.launch(launch_config((n as usize).div_ceil(THREADS as usize).min(MAX_ELEMENT_BLOCKS), THREADS, 0)?)
        }?;
        Ok(())
    }
}
