//! `ur_fused_linear_logprobs_*`: log-probabilities straight from hidden states and the LM head.

use std::ffi::c_void;

use super::context::{self, read_config, size_of_u32, ur_context, Config, Versioned};
use super::dlpack::{on_device, DLTensor, Desc};
use super::logprobs::{saved, ur_logprobs_config, SavedOutputs};
use super::status::{call, ur_status, FfiResult};
use crate::ops::fused_linear::{
    fused_linear_logprobs, fused_linear_logprobs_backward_into, FusedLinearConfig, FusedLinearGradsMut, LinearHead,
};

/// Token reduction and chunking of the fused path. Initialise with `ur_fused_linear_config_default()`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ur_fused_linear_config {
    /// `sizeof(ur_fused_linear_config)`.
    pub struct_size: u32,
    /// `UR_REDUCTION_SUM` (default) or `UR_REDUCTION_MEAN`.
    pub reduction: i32,
    /// Labels equal to this do not count (default -100).
    pub ignore_index: i64,
    /// Tokens whose logits are materialised at once; 0 (default) picks about 256 MiB of float32 logits.
    pub chunk_tokens: u64,
}

impl Versioned for ur_fused_linear_config {
    const NAME: &'static str = "ur_fused_linear_config";
}

impl Config for ur_fused_linear_config {
    fn default_value() -> Self {
        let lp = ur_logprobs_config::default_value();
        ur_fused_linear_config {
            struct_size: size_of_u32::<Self>(),
            reduction: lp.reduction,
            ignore_index: lp.ignore_index,
            chunk_tokens: 0,
        }
    }
}

impl ur_fused_linear_config {
    fn to_rust(self) -> FfiResult<FusedLinearConfig> {
        let lp = ur_logprobs_config { struct_size: 0, reduction: self.reduction, ignore_index: self.ignore_index };
        let chunk = usize::try_from(self.chunk_tokens).unwrap_or(usize::MAX);
        Ok(FusedLinearConfig { logprobs: lp.to_rust()?, chunk_tokens: (chunk > 0).then_some(chunk) })
    }
}

/// The defaults: sum over tokens, ignore index -100, automatic chunks.
#[no_mangle]
pub extern "C" fn ur_fused_linear_config_default() -> ur_fused_linear_config {
    ur_fused_linear_config::default_value()
}

/// Like `ur_logprobs_forward` on the logits `hidden · weightᵀ + bias`, without materialising them.
///
/// Inputs: `hidden` `[N,T,H]`, `weight` `[V,H]`, `bias` `[V]` or NULL (float32/bfloat16/float16); `labels`, `mask` as
/// in `ur_logprobs_forward`. Outputs as in `ur_logprobs_forward` (float32; `logps_out` required, the rest may be NULL;
/// the backward needs `lse_out`). Does not synchronise on CUDA.
///
/// # Safety
/// As for `ur_logprobs_forward`.
#[no_mangle]
pub unsafe extern "C" fn ur_fused_linear_logprobs_forward(
    ctx: *mut ur_context,
    hidden: *const DLTensor,
    weight: *const DLTensor,
    bias: *const DLTensor,
    labels: *const DLTensor,
    mask: *const DLTensor,
    cfg: *const ur_fused_linear_config,
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
        let hidden = Desc::required("hidden", hidden)?;
        let weight = Desc::required("weight", weight)?;
        let bias = Desc::optional("bias", bias)?;
        let labels = Desc::required("labels", labels)?;
        let mask = Desc::optional("mask", mask)?;
        let outs = SavedOutputs::read(logps_out, token_counts_out, mean_logits_out, entropy_out, lse_out)?;
        let mut descs = vec![Some(&hidden), Some(&weight), bias.as_ref(), Some(&labels), mask.as_ref()];
        descs.extend(outs.descs());
        on_device(&descs, stream, || {
            let (hidden, weight) = (hidden.tensor()?, weight.tensor()?);
            let bias = bias.as_ref().map(|b| b.tensor()).transpose()?;
            let mask = mask.as_ref().map(|m| m.tensor()).transpose()?;
            let head = LinearHead { hidden: &hidden, weight: &weight, bias: bias.as_ref() };
            let r = fused_linear_logprobs(head, &labels.tensor()?, mask.as_ref(), &cfg)?;
            outs.write(&r)
        })
    })
}

/// Gradients of `sum_n grad_logps[n] * logps[n]` with respect to `hidden`, `weight` and `bias`, from the forward's
/// `lse` `[N,T]` float32. `grad_logps` `[N]` float32. Outputs, each in the dtype and shape of what it differentiates:
/// `grad_hidden_out` `[N,T,H]`, `grad_weight_out` `[V,H]`, `grad_bias_out` `[V]` (required when `bias` is given, else
/// NULL). Does not synchronise on CUDA.
///
/// # Safety
/// As for `ur_logprobs_forward`.
#[no_mangle]
pub unsafe extern "C" fn ur_fused_linear_logprobs_backward(
    ctx: *mut ur_context,
    hidden: *const DLTensor,
    weight: *const DLTensor,
    bias: *const DLTensor,
    labels: *const DLTensor,
    mask: *const DLTensor,
    lse: *const DLTensor,
    grad_logps: *const DLTensor,
    cfg: *const ur_fused_linear_config,
    grad_hidden_out: *const DLTensor,
    grad_weight_out: *const DLTensor,
    grad_bias_out: *const DLTensor,
    stream: *mut c_void,
) -> ur_status {
    // SAFETY (whole body): this function's contract, passed on to the helpers that read the pointers.
    call(|| unsafe {
        context::check(ctx)?;
        let cfg = read_config(cfg)?.to_rust()?;
        let hidden = Desc::required("hidden", hidden)?;
        let weight = Desc::required("weight", weight)?;
        let bias = Desc::optional("bias", bias)?;
        let labels = Desc::required("labels", labels)?;
        let mask = Desc::optional("mask", mask)?;
        let lse = Desc::required("lse", lse)?;
        let grad_logps = Desc::required("grad_logps", grad_logps)?;
        let grad_hidden_out = Desc::required("grad_hidden_out", grad_hidden_out)?;
        let grad_weight_out = Desc::required("grad_weight_out", grad_weight_out)?;
        let grad_bias_out = match (&bias, Desc::optional("grad_bias_out", grad_bias_out)?) {
            (Some(_), None) => return Err(super::status::Failure::null("grad_bias_out (`bias` is given)")),
            (None, Some(_)) => {
                return Err(super::status::Failure::invalid("`grad_bias_out` is given but `bias` is NULL"))
            }
            (_, out) => out,
        };
        let descs = [
            Some(&hidden),
            Some(&weight),
            bias.as_ref(),
            Some(&labels),
            mask.as_ref(),
            Some(&lse),
            Some(&grad_logps),
            Some(&grad_hidden_out),
            Some(&grad_weight_out),
            grad_bias_out.as_ref(),
        ];
        on_device(&descs, stream, || {
            let (hidden, weight) = (hidden.tensor()?, weight.tensor()?);
            let bias = bias.as_ref().map(|b| b.tensor()).transpose()?;
            // Each output has its input's shape and dtype: checked under the C names before anything runs.
            grad_hidden_out.expect(&hidden)?;
            grad_weight_out.expect(&weight)?;
            if let (Some(out), Some(bias)) = (grad_bias_out.as_ref(), bias.as_ref()) {
                out.expect(bias)?;
            }
            let mask = mask.as_ref().map(|m| m.tensor()).transpose()?;
            let head = LinearHead { hidden: &hidden, weight: &weight, bias: bias.as_ref() };
            let lse = lse.tensor()?;
            let counts = crate::Tensor::zeros(&[0], crate::DType::F32, lse.device())?;
            let saved = saved(lse, counts)?;
            // Written straight into the caller's buffers: no [V, H] gradient of the library's own to copy from.
            let (mut grad_hidden, mut grad_weight) = (grad_hidden_out.tensor()?, grad_weight_out.tensor()?);
            let mut grad_bias = grad_bias_out.as_ref().map(|d| d.tensor()).transpose()?;
            let out = FusedLinearGradsMut {
                grad_hidden: &mut grad_hidden,
                grad_weight: &mut grad_weight,
                grad_bias: grad_bias.as_mut(),
                accumulate: false,
            };
            let (labels, grad_logps) = (labels.tensor()?, grad_logps.tensor()?);
            fused_linear_logprobs_backward_into(head, &labels, mask.as_ref(), &saved, &grad_logps, &cfg, out)?;
            Ok(())
        })
    })
}
