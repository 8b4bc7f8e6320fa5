//! Reward-model heads: `ur_scalar_head_*` and `ur_verdict_head_*`.

use std::ffi::c_void;

use super::context::{self, ur_context};
use super::dlpack::{on_device, write_outputs, DLTensor, Desc};
use super::status::{call, ur_status, Failure, FfiResult};
use crate::ops::heads::{
    scalar_reward, scalar_reward_backward, verdict_head, verdict_head_backward_into, ScalarHead, VerdictClasses,
    VerdictGrads,
};
use crate::Tensor;

/// The scalar head's input descriptors.
struct ScalarInputs {
    hidden: Desc,
    ends: Desc,
    weight: Desc,
    bias: Option<Desc>,
}

impl ScalarInputs {
    /// # Safety
    /// Each pointer is NULL or a readable DLTensor.
    unsafe fn read(
        hidden: *const DLTensor,
        ends: *const DLTensor,
        weight: *const DLTensor,
        bias: *const DLTensor,
    ) -> FfiResult<Self> {
        // SAFETY: this function's contract.
        unsafe {
            Ok(ScalarInputs {
                hidden: Desc::required("hidden", hidden)?,
                ends: Desc::required("ends", ends)?,
                weight: Desc::required("weight", weight)?,
                bias: Desc::optional("bias", bias)?,
            })
        }
    }

    fn descs(&self) -> Vec<Option<&Desc>> {
        vec![Some(&self.hidden), Some(&self.ends), Some(&self.weight), self.bias.as_ref()]
    }

    /// The wrapped tensors: hidden, ends, weight, bias.
    ///
    /// # Safety
    /// As for [`Desc::tensor`].
    unsafe fn tensors(&self) -> FfiResult<(Tensor, Tensor, Tensor, Option<Tensor>)> {
        // SAFETY: this function's contract.
        unsafe {
            let bias = self.bias.as_ref().map(|b| b.tensor()).transpose()?;
            Ok((self.hidden.tensor()?, self.ends.tensor()?, self.weight.tensor()?, bias))
        }
    }
}

/// Rewards `rewards_out` `[N,C]` float32 = `weight · hidden[n, ends[n]] + bias`, from `hidden` `[N,T,H]` float, `ends`
/// `[N]` int32/int64 (the token read per sequence, 0 <= `ends[n]` < T), `weight` `[C,H]` and `bias` `[C]` or NULL (the
/// dtype of `hidden`). Does not synchronise on CUDA.
///
/// # Safety
/// As for `ur_logprobs_forward`.
#[no_mangle]
pub unsafe extern "C" fn ur_scalar_head_forward(
    ctx: *mut ur_context,
    hidden: *const DLTensor,
    ends: *const DLTensor,
    weight: *const DLTensor,
    bias: *const DLTensor,
    rewards_out: *const DLTensor,
    stream: *mut c_void,
) -> ur_status {
    // SAFETY (whole body): this function's contract, passed on to the helpers that read the pointers.
    call(|| unsafe {
        context::check(ctx)?;
        let ins = ScalarInputs::read(hidden, ends, weight, bias)?;
        let out = Desc::required("rewards_out", rewards_out)?;
        let mut descs = ins.descs();
        descs.push(Some(&out));
        on_device(&descs, stream, || {
            let (hidden, ends, weight, bias) = ins.tensors()?;
            let rewards =
                scalar_reward(ScalarHead { hidden: &hidden, ends: &ends, weight: &weight, bias: bias.as_ref() })?;
            write_outputs(&[(Some(&out), &rewards)])
        })
    })
}

/// Gradients of `sum grad_rewards * rewards` (`[N,C]` float32) with respect to `hidden` (`[N,T,H]`, zero except at the
/// gathered rows), `weight` `[C,H]` and `bias` `[C]` (required when `bias` is given, else NULL), in the dtype of
/// `hidden`. Does not synchronise on CUDA.
///
/// # Safety
/// As for `ur_logprobs_forward`.
#[no_mangle]
pub unsafe extern "C" fn ur_scalar_head_backward(
    ctx: *mut ur_context,
    hidden: *const DLTensor,
    ends: *const DLTensor,
    weight: *const DLTensor,
    bias: *const DLTensor,
    grad_rewards: *const DLTensor,
    grad_hidden_out: *const DLTensor,
    grad_weight_out: *const DLTensor,
    grad_bias_out: *const DLTensor,
    stream: *mut c_void,
) -> ur_status {
    // SAFETY (whole body): this function's contract, passed on to the helpers that read the pointers.
    call(|| unsafe {
        context::check(ctx)?;
        let ins = ScalarInputs::read(hidden, ends, weight, bias)?;
        let grad_rewards = Desc::required("grad_rewards", grad_rewards)?;
        let gh = Desc::required("grad_hidden_out", grad_hidden_out)?;
        let gw = Desc::required("grad_weight_out", grad_weight_out)?;
        let gb = Desc::optional("grad_bias_out", grad_bias_out)?;
        match (&ins.bias, &gb) {
            (Some(_), None) => return Err(Failure::null("grad_bias_out (`bias` is given)")),
            (None, Some(_)) => return Err(Failure::invalid("`grad_bias_out` is given but `bias` is NULL")),
            _ => {}
        }
        let mut descs = ins.descs();
        descs.extend([Some(&grad_rewards), Some(&gh), Some(&gw), gb.as_ref()]);
        on_device(&descs, stream, || {
            let (hidden, ends, weight, bias) = ins.tensors()?;
            let head = ScalarHead { hidden: &hidden, ends: &ends, weight: &weight, bias: bias.as_ref() };
            let g = scalar_reward_backward(head, &grad_rewards.tensor()?)?;
            let mut outs = vec![(Some(&gh), &g.grad_hidden), (Some(&gw), &g.grad_weight)];
            if let (Some(out), Some(grad)) = (gb.as_ref(), g.grad_bias.as_ref()) {
                outs.push((Some(out), grad));
            }
            write_outputs(&outs)
        })
    })
}

/// The verdict classes from CSR descriptors and optional host values.
///
/// # Safety
/// `class_offsets` and `token_ids` as for [`Desc::tensor`] (read inside the device scope); `class_values` is NULL
/// or holds `num_class_values` floats, which must be one per class.
unsafe fn classes(
    class_offsets: &Desc,
    token_ids: &Desc,
    class_values: *const f32,
    num_class_values: usize,
) -> FfiResult<VerdictClasses> {
    // SAFETY: this function's contract.
    let classes = unsafe { VerdictClasses::from_csr(&class_offsets.tensor()?, &token_ids.tensor()?) }?;
    if class_values.is_null() {
        return Ok(classes);
    }
    // Checked here, before reading: a count past the caller's buffer would be an out-of-bounds read.
    if num_class_values != classes.num_classes() {
        return Err(Failure::invalid(format!(
            "`class_values` holds {num_class_values} floats (`num_class_values`), but `class_offsets` describes {} \
             classes: give one value per class",
            classes.num_classes()
        )));
    }
    // SAFETY: this function's contract: `num_class_values` floats.
    let values = unsafe { std::slice::from_raw_parts(class_values, num_class_values) };
    Ok(classes.with_values(values)?)
}

/// The verdict head of a generative judge: per class k (token ids `token_ids[class_offsets[k] ..
/// class_offsets[k+1]]`, disjoint sets; both int32/int64 [K+1] and `[M]` on the logits' device), `log_probs_out`
/// `[B,K]` = logsumexp over the class's logits minus logsumexp over all listed logits, `probs_out` `[B,K]` its exp,
/// and, when `class_values` (`num_class_values` = K host floats, or NULL) is given, `expected_score_out` `[B]` =
/// sum_k p_k * value_k.
/// `logits` `[B,V]` float. Outputs float32; each may be NULL. On CUDA the classes are read to the host first (a
/// wait on `stream`).
///
/// # Safety
/// As for `ur_logprobs_forward`; a non-NULL `class_values` holds `num_class_values` floats (anything else than K
/// is refused before it is read).
#[no_mangle]
pub unsafe extern "C" fn ur_verdict_head_forward(
    ctx: *mut ur_context,
    logits: *const DLTensor,
    class_offsets: *const DLTensor,
    token_ids: *const DLTensor,
    class_values: *const f32,
    num_class_values: usize,
    probs_out: *const DLTensor,
    log_probs_out: *const DLTensor,
    expected_score_out: *const DLTensor,
    stream: *mut c_void,
) -> ur_status {
    // SAFETY (whole body): this function's contract, passed on to the helpers that read the pointers.
    call(|| unsafe {
        context::check(ctx)?;
        let logits = Desc::required("logits", logits)?;
        let offsets = Desc::required("class_offsets", class_offsets)?;
        let ids = Desc::required("token_ids", token_ids)?;
        let probs = Desc::optional("probs_out", probs_out)?;
        let log_probs = Desc::optional("log_probs_out", log_probs_out)?;
        let expected = Desc::optional("expected_score_out", expected_score_out)?;
        if expected.is_some() && class_values.is_null() {
            return Err(Failure::invalid("`expected_score_out` is given but `class_values` is NULL"));
        }
        let descs = [Some(&logits), Some(&offsets), Some(&ids), probs.as_ref(), log_probs.as_ref(), expected.as_ref()];
        on_device(&descs, stream, || {
            let classes = classes(&offsets, &ids, class_values, num_class_values)?;
            let v = verdict_head(&logits.tensor()?, &classes)?;
            let mut outs = vec![(probs.as_ref(), &v.probs), (log_probs.as_ref(), &v.log_probs)];
            if let Some(score) = v.expected_score.as_ref() {
                outs.push((expected.as_ref(), score));
            }
            write_outputs(&outs)
        })
    })
}

/// The gradient with respect to `logits` `[B,V]` (their dtype, zero outside the listed ids) of
/// `sum grad_log_probs * log_probs + sum grad_expected_score * expected_score`; give `grad_log_probs` `[B,K]`
/// float32, `grad_expected_score` `[B]` float32 (needs `class_values`), or both. Written straight into
/// `grad_logits_out` (separate memory: an overlap with an input is `UR_ERROR_INVALID_ARGUMENT`). Does not
/// synchronise on CUDA beyond reading the classes.
///
/// # Safety
/// As for `ur_verdict_head_forward`.
#[no_mangle]
pub unsafe extern "C" fn ur_verdict_head_backward(
    ctx: *mut ur_context,
    logits: *const DLTensor,
    class_offsets: *const DLTensor,
    token_ids: *const DLTensor,
    class_values: *const f32,
    num_class_values: usize,
    grad_log_probs: *const DLTensor,
    grad_expected_score: *const DLTensor,
    grad_logits_out: *const DLTensor,
    stream: *mut c_void,
) -> ur_status {
    // SAFETY (whole body): this function's contract, passed on to the helpers that read the pointers.
    call(|| unsafe {
        context::check(ctx)?;
        let logits = Desc::required("logits", logits)?;
        let offsets = Desc::required("class_offsets", class_offsets)?;
        let ids = Desc::required("token_ids", token_ids)?;
        let g_lp = Desc::optional("grad_log_probs", grad_log_probs)?;
        let g_es = Desc::optional("grad_expected_score", grad_expected_score)?;
        let out = Desc::required("grad_logits_out", grad_logits_out)?;
        let descs = [Some(&logits), Some(&offsets), Some(&ids), g_lp.as_ref(), g_es.as_ref(), Some(&out)];
        on_device(&descs, stream, || {
            let classes = classes(&offsets, &ids, class_values, num_class_values)?;
            let g_lp = g_lp.as_ref().map(|g| g.tensor()).transpose()?;
            let g_es = g_es.as_ref().map(|g| g.tensor()).transpose()?;
            let grads = VerdictGrads { log_probs: g_lp.as_ref(), expected_score: g_es.as_ref() };
            Ok(verdict_head_backward_into(&logits.tensor()?, &classes, grads, &mut out.tensor()?)?)
        })
    })
}
