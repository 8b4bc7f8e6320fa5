//! `ur_logprobs_*`: per-sequence log-probabilities from materialised logits.

use std::ffi::c_void;

use super::context::{self, code, read_config, size_of_u32, ur_context, Config, Versioned};
use super::dlpack::{on_device, write_outputs, DLTensor, Desc};
use super::status::{call, ur_status, Failure, FfiResult};
use crate::ops::logprobs::{
    sequence_logprobs, sequence_logprobs_backward_in_place, sequence_logprobs_backward_into, LogProbsConfig,
    SequenceLogProbs, TokenReduction,
};
use crate::{DType, Tensor};

/// `ur_logprobs_config.reduction`: the sum over counted tokens (DPO).
pub const UR_REDUCTION_SUM: i32 = 0;
/// `ur_logprobs_config.reduction`: the mean over counted tokens, 0 without any (IPO, SimPO).
pub const UR_REDUCTION_MEAN: i32 = 1;

/// Which tokens count and how they are reduced. Initialise with `ur_logprobs_config_default()`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ur_logprobs_config {
    /// `sizeof(ur_logprobs_config)`.
    pub struct_size: u32,
    /// `UR_REDUCTION_SUM` (default) or `UR_REDUCTION_MEAN`.
    pub reduction: i32,
    /// Labels equal to this do not count (default -100).
    pub ignore_index: i64,
}

impl Versioned for ur_logprobs_config {
    const NAME: &'static str = "ur_logprobs_config";
}

impl Config for ur_logprobs_config {
    fn default_value() -> Self {
        ur_logprobs_config {
            struct_size: size_of_u32::<Self>(),
            reduction: UR_REDUCTION_SUM,
            ignore_index: LogProbsConfig::default().ignore_index,
        }
    }
}

impl ur_logprobs_config {
    pub(crate) fn to_rust(self) -> FfiResult<LogProbsConfig> {
        let reduction = code("reduction", self.reduction, &[TokenReduction::Sum, TokenReduction::Mean])?;
        Ok(LogProbsConfig { ignore_index: self.ignore_index, reduction })
    }
}

/// The defaults: sum over tokens, ignore index -100.
#[no_mangle]
pub extern "C" fn ur_logprobs_config_default() -> ur_logprobs_config {
    ur_logprobs_config::default_value()
}

/// The forward's five outputs (only `logps` is required).
pub(crate) struct SavedOutputs {
    pub logps: Desc,
    pub token_counts: Option<Desc>,
    pub mean_logits: Option<Desc>,
    pub entropy: Option<Desc>,
    pub lse: Option<Desc>,
}

impl SavedOutputs {
    /// # Safety
    /// Each pointer is NULL or a readable DLTensor (see [`Desc::required`]).
    pub unsafe fn read(
        logps: *const DLTensor,
        token_counts: *const DLTensor,
        mean_logits: *const DLTensor,
        entropy: *const DLTensor,
        lse: *const DLTensor,
    ) -> FfiResult<Self> {
        // SAFETY: this function's contract.
        unsafe {
            Ok(SavedOutputs {
                logps: Desc::required("logps_out", logps)?,
                token_counts: Desc::optional("token_counts_out", token_counts)?,
                mean_logits: Desc::optional("mean_logits_out", mean_logits)?,
                entropy: Desc::optional("entropy_out", entropy)?,
                lse: Desc::optional("lse_out", lse)?,
            })
        }
    }

    pub fn descs(&self) -> [Option<&Desc>; 5] {
        [
            Some(&self.logps),
            self.token_counts.as_ref(),
            self.mean_logits.as_ref(),
            self.entropy.as_ref(),
            self.lse.as_ref(),
        ]
    }

    /// # Safety
    /// The outputs describe writable memory (see [`write_outputs`]).
    pub unsafe fn write(&self, r: &SequenceLogProbs) -> FfiResult {
        let [logps, token_counts, mean_logits, entropy, lse] = self.descs();
        // SAFETY: this function's contract.
        unsafe {
            write_outputs(&[
                (logps, &r.logps),
                (token_counts, &r.token_counts),
                (mean_logits, &r.mean_logits),
                (entropy, &r.entropy),
                (lse, &r.lse),
            ])
        }
    }
}

/// What a backward needs of the forward's outputs: the backwards read only `lse` and `token_counts`, so the other
/// fields are empty.
pub(crate) fn saved(lse: Tensor, token_counts: Tensor) -> FfiResult<SequenceLogProbs> {
    let empty = || Tensor::zeros(&[0], DType::F32, lse.device());
    Ok(SequenceLogProbs { logps: empty()?, token_counts, mean_logits: empty()?, entropy: empty()?, lse })
}

/// Per-sequence log-probabilities of `labels` under `logits`, never materialising the log-softmax.
///
/// Inputs: `logits` `[N,T,V]` float32/bfloat16/float16; `labels` `[N,T]` int32/int64; `mask` `[N,T]` int32/int64/
/// float32 or NULL (a token counts when its label is not the ignore index and its mask is nonzero). `cfg` NULL
/// means the defaults. Outputs (float32, on the device of the logits): `logps_out` `[N]` (required),
/// `token_counts_out` `[N]`, `mean_logits_out` `[N]` (mean logit over counted tokens), `entropy_out` `[N]` (mean token
/// entropy), `lse_out` `[N,T]` (per-token logsumexp, 0 where a token does not count: the backward needs it);
/// each optional output may be NULL. Does not synchronise on CUDA.
///
/// # Safety
/// `ctx` comes from `ur_context_create`; every non-NULL `DLTensor*` describes memory valid for its whole extent on
/// its device until the call's work is done (for CUDA: until `stream` has run it); outputs are writable and do not
/// overlap inputs; `stream` is NULL or a valid stream of the tensors' CUDA device.
#[no_mangle]
pub unsafe extern "C" fn ur_logprobs_forward(
    ctx: *mut ur_context,
    logits: *const DLTensor,
    labels: *const DLTensor,
    mask: *const DLTensor,
    cfg: *const ur_logprobs_config,
    logps_out: *const DLTensor,
    token_counts_out: *const DLTensor,
    mean_logits_out: *const DLTensor,
    entropy_out: *const DLTensor,
    lse_out: *const DLTensor,
    stream: *mut c_void,
) -> ur_status {
    // SAFETY (whole body): this function's contract, passed on to the helpers that read the pointers.
    call(|| unsafe {
        context::check(ctx)?;
        let cfg = read_config(cfg)?.to_rust()?;
        let logits = Desc::required("logits", logits)?;
        let labels = Desc::required("labels", labels)?;
        let mask = Desc::optional("mask", mask)?;
        let outs = SavedOutputs::read(logps_out, token_counts_out, mean_logits_out, entropy_out, lse_out)?;
        let mut descs = vec![Some(&logits), Some(&labels), mask.as_ref()];
        descs.extend(outs.descs());
        on_device(&descs, stream, || {
            let mask = mask.as_ref().map(|m| m.tensor()).transpose()?;
            let r = sequence_logprobs(&logits.tensor()?, &labels.tensor()?, mask.as_ref(), &cfg)?;
            outs.write(&r)
        })
    })
}

/// The gradient with respect to the logits of `sum_n grad_logps[n] * logps[n]`, written into `grad_logits_out`
/// (`[N,T,V]`, the dtype of `logits`), with no copy and no `[N,T,V]` temporary.
///
/// In place when `grad_logits_out` describes the same memory as `logits` (same data pointer plus byte offset):
/// the logits are overwritten by their gradient, the memory-saving path of a training step. Any other overlap of
/// `grad_logits_out` with an input is `UR_ERROR_INVALID_ARGUMENT`. `lse` `[N,T]` and `token_counts` `[N]` are the
/// forward's float32 outputs; `grad_logps` `[N]` float32; `labels`, `mask` and `cfg` as in the forward. Does not
/// synchronise on CUDA.
///
/// # Safety
/// As for `ur_logprobs_forward`; in place, `logits` is written.
#[no_mangle]
pub unsafe extern "C" fn ur_logprobs_backward(
    ctx: *mut ur_context,
    logits: *const DLTensor,
    labels: *const DLTensor,
    mask: *const DLTensor,
    lse: *const DLTensor,
    token_counts: *const DLTensor,
    grad_logps: *const DLTensor,
    cfg: *const ur_logprobs_config,
    grad_logits_out: *const DLTensor,
    stream: *mut c_void,
) -> ur_status {
    // SAFETY (whole body): this function's contract, passed on to the helpers that read the pointers.
    call(|| unsafe {
        context::check(ctx)?;
        let cfg = read_config(cfg)?.to_rust()?;
        let logits = Desc::required("logits", logits)?;
        let labels = Desc::required("labels", labels)?;
        let mask = Desc::optional("mask", mask)?;
        let lse = Desc::required("lse", lse)?;
        let token_counts = Desc::required("token_counts", token_counts)?;
        let grad_logps = Desc::required("grad_logps", grad_logps)?;
        let out = Desc::required("grad_logits_out", grad_logits_out)?;
        let in_place = out.ptr == logits.ptr && out.device == logits.device;
        let others = [Some(&labels), mask.as_ref(), Some(&lse), Some(&token_counts), Some(&grad_logps)];
        if in_place && (out.shape != logits.shape || out.dtype != logits.dtype) {
            return Err(Failure::invalid("`grad_logits_out` is the logits' memory but not their shape and dtype"));
        }
        // In place, the logits are the output's memory: passed once, as the output.
        let mut descs = vec![(!in_place).then_some(&logits), Some(&out)];
        descs.extend(others);
        on_device(&descs, stream, || {
            let mask = mask.as_ref().map(|m| m.tensor()).transpose()?;
            let saved = saved(lse.tensor()?, token_counts.tensor()?)?;
            let (labels, grad_logps) = (labels.tensor()?, grad_logps.tensor()?);
            let mut out = out.tensor()?;
            if in_place {
                sequence_logprobs_backward_in_place(&mut out, &labels, mask.as_ref(), &saved, &grad_logps, &cfg)?;
            } else {
                let logits = logits.tensor()?;
                sequence_logprobs_backward_into(&logits, &labels, mask.as_ref(), &saved, &grad_logps, &cfg, &mut out)?;
            }
            Ok(())
        })
    })
}
