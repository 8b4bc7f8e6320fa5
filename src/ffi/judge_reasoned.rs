//! `ur_judge_reasoned`: a reasoned judgment (`crate::judge::Judge::reasoned`) — the answer generated (greedy or
//! sampled) and parsed, and the one-pass probabilities of the final verdict or score given the generated reasoning.
//! The answer's text and the parser's message are owned by the judge handle, as the model's names are by its.

use std::ffi::c_char;

use bytemuck::NoUninit;

use super::context::{self, read_config, ur_context, Versioned};
use super::generation::ur_generation_config;
use super::host_out::HostOut;
use super::judge::{handle_mut, probabilities, read_request, ur_judge, ur_judge_request, ur_judge_result, Outputs};
use super::judge::{verdict_code, UR_VERDICT_NONE};
use super::status::{call, ur_status, Failure, FfiResult};
use crate::judge::answer::{AnswerError, Judgment};
use crate::judge::{GenerationConfig, Judge, Reasoning};

/// `ur_judge_reasoning.parse_status`: the answer states a verdict (pairwise) or a score on the scale (pointwise).
pub const UR_PARSE_OK: i32 = 0;
/// Nothing in the answer follows the template's answer grammar (no verdict phrase; no score prefix, or no number
/// after it): no verdict and no score, never a score of 0.
pub const UR_PARSE_UNPARSABLE: i32 = 1;
/// A score was read but lies outside the template's scale (`parsed_score` holds it).
pub const UR_PARSE_OUT_OF_SCALE: i32 = 2;
/// The answer states its own scale ("7/10") and it is not the template's (`parsed_score` holds the score read).
pub const UR_PARSE_SCALE_MISMATCH: i32 = 3;

/// What `ur_judge_reasoned` read in the answer it generated. Set `struct_size = sizeof(ur_judge_reasoning)` before
/// the call. The strings are owned by the judge: valid until the next `ur_judge_reasoned` with it or
/// `ur_judge_free`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ur_judge_reasoning {
    /// `sizeof(ur_judge_reasoning)`, set by the caller.
    pub struct_size: u32,
    /// `UR_PARSE_OK`, `UR_PARSE_UNPARSABLE`, `UR_PARSE_OUT_OF_SCALE` or `UR_PARSE_SCALE_MISMATCH`.
    pub parse_status: i32,
    /// Pairwise, parsed: the verdict the answer states (`UR_VERDICT_FIRST`: the first candidate given), else
    /// `UR_VERDICT_NONE`.
    pub parsed_verdict: i32,
    /// Written 0.
    pub reserved: i32,
    /// Pointwise: the score the answer states (numbers read as numbers, decimals kept), also when it is out of the
    /// scale or on another scale; NaN when unparsable, and for pairwise.
    pub parsed_score: f64,
    /// The tokens generated (the stop token included when one ended the answer).
    pub generated_tokens: u64,
    /// How many of them the one-pass probabilities are conditioned on: the reasoning before the answer's last
    /// verdict phrase or score prefix, as generated.
    pub reasoning_tokens: u64,
    /// The answer, UTF-8, NUL-terminated, `text_len` bytes before the NUL.
    pub text: *const c_char,
    pub text_len: u64,
    /// Why the answer did not parse, NUL-terminated UTF-8 ("" when `parse_status` is `UR_PARSE_OK`).
    pub parse_error: *const c_char,
}

impl Versioned for ur_judge_reasoning {
    const NAME: &'static str = "ur_judge_reasoning";
}

// SAFETY: `#[repr(C)]` of 4-byte fields (16 bytes), then 8-byte ones: no padding; the pointers are plain
// addresses, which every bit pattern is.
unsafe impl NoUninit for ur_judge_reasoning {}

/// The texts a judge keeps for its last reasoned judgment's `ur_judge_reasoning`, each with its NUL.
#[derive(Debug, Default)]
pub(super) struct ReasoningTexts {
    text: Vec<u8>,
    parse_error: Vec<u8>,
}

/// `text` with a NUL after it (a NUL the model generated inside it stays: `text_len` counts the bytes before ours).
fn nul_terminated(text: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(text.len() + 1);
    bytes.extend_from_slice(text.as_bytes());
    bytes.push(0);
    bytes
}

/// The generation config of the call, checked as generation will check it, named as the C caller wrote it.
///
/// # Safety
/// `cfg` is NULL or a readable `ur_generation_config` whose `stop_tokens` holds `num_stop_tokens` values.
unsafe fn generation_config(judge: &Judge, cfg: *const ur_generation_config) -> FfiResult<GenerationConfig> {
    let renamed = |f: Failure| Failure { message: f.message.replace("`ur_generation_config.", "`cfg->"), ..f };
    // SAFETY: this function's contract.
    let cfg = unsafe { read_config(cfg).map_err(renamed)?.to_rust() }?;
    cfg.validate().map_err(|e| Failure::invalid(e.to_string().replacen('`', "`cfg->", 1)))?;
    let vocab = judge.model.language_model().config.vocab_size;
    if let Some(id) = cfg.stop_tokens.iter().find(|&&id| id as usize >= vocab) {
        return Err(Failure::invalid(format!(
            "`cfg->stop_tokens` holds {id}, outside the vocabulary ({vocab} tokens)"
        )));
    }
    Ok(cfg)
}

/// The `ur_judge_reasoning` of `reasoning`, its strings kept in `texts`.
fn reasoning_struct(reasoning: &Reasoning, texts: &mut ReasoningTexts) -> ur_judge_reasoning {
    let (parse_status, parsed_verdict, parsed_score) = match &reasoning.parsed {
        Ok(Judgment::Verdict(v)) => (UR_PARSE_OK, verdict_code(Some(*v)), f64::NAN),
        Ok(Judgment::Score(s)) => (UR_PARSE_OK, UR_VERDICT_NONE, *s),
        Err(AnswerError::Unparsable(_)) => (UR_PARSE_UNPARSABLE, UR_VERDICT_NONE, f64::NAN),
        Err(AnswerError::OutOfScale { score, .. }) => (UR_PARSE_OUT_OF_SCALE, UR_VERDICT_NONE, *score),
        Err(AnswerError::ScaleMismatch { score, .. }) => (UR_PARSE_SCALE_MISMATCH, UR_VERDICT_NONE, *score),
    };
    texts.text = nul_terminated(&reasoning.text);
    texts.parse_error = nul_terminated(&reasoning.parsed.as_ref().err().map_or(String::new(), ToString::to_string));
    ur_judge_reasoning {
        struct_size: 0,
        parse_status,
        parsed_verdict,
        reserved: 0,
        parsed_score,
        generated_tokens: reasoning.generated_tokens as u64,
        reasoning_tokens: reasoning.reasoning_tokens as u64,
        text: texts.text.as_ptr().cast(),
        text_len: reasoning.text.len() as u64,
        parse_error: texts.parse_error.as_ptr().cast(),
    }
}

/// A reasoned judgment of `request` (one `ur_judge_request`, pairwise or pointwise, as for `ur_judge_many`): the
/// answer generated with `cfg` (NULL: greedy, 64 tokens at most; `max_new_tokens`, `temperature`, `top_p`, `seed`;
/// the checkpoint's end-of-turn tokens stop it besides `cfg->stop_tokens`) in the forward order only, parsed per the
/// task's template into `*reasoning` (the text, the parse status and the verdict or score read), and the one-pass
/// probabilities of the final verdict or score given the generated reasoning to `probs` (room for
/// `probs_capacity` floats: 3 pairwise, the scale's values pointwise, see `ur_judge_num_probs`) and `*result`
/// (pairwise: the most probable verdict of that one order, `position_consistent` -1). Everything (the request, the
/// generation options, the outputs) is checked before the model runs; nothing is written on failure. Synchronises.
///
/// # Safety
/// `ctx` comes from `ur_context_create`, `judge` from `ur_judge_load` (and no other call is using it); `request` is
/// NULL (an error) or a readable `ur_judge_request` whose pointers are valid as for `ur_judge_many`; `cfg` is NULL
/// or a readable `ur_generation_config`; `probs` holds `probs_capacity` writable floats; `result` and `reasoning`
/// are NULL (an error) or point to their `struct_size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn ur_judge_reasoned(
    ctx: *mut ur_context,
    judge: *mut ur_judge,
    request: *const ur_judge_request,
    cfg: *const ur_generation_config,
    probs: *mut f32,
    probs_capacity: usize,
    result: *mut ur_judge_result,
    reasoning: *mut ur_judge_reasoning,
) -> ur_status {
    // SAFETY (whole body): this function's contract.
    call(|| unsafe {
        context::check(ctx)?;
        let handle = handle_mut(judge)?;
        if request.is_null() {
            return Err(Failure::null("request"));
        }
        let request = read_request(&handle.judge, "request", request)?;
        let cfg = generation_config(&handle.judge, cfg)?;
        let reasoning = HostOut::versioned("reasoning", reasoning)?.ok_or_else(|| Failure::null("reasoning"))?;
        let needed = [probabilities(&handle.judge, request.task, request.mode)?];
        let outputs = Outputs::check("result", result, probs, probs_capacity, &needed, &[reasoning.span()])?;
        handle.judge.check(&request)?;
        let judged = handle.judge.reasoned(&request, &cfg)?;
        let answer = judged.reasoning.as_ref().expect("a reasoned judgment carries its reasoning");
        let written = reasoning_struct(answer, &mut handle.reasoning);
        outputs.write(std::slice::from_ref(&judged));
        reasoning.write(written);
        Ok(())
    })
}
