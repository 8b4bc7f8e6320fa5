//! `ur_model_generate(_ex)`: text after a prompt (with images and videos for LLaVA-OneVision), greedy or sampled,
//! with a KV cache, and why it ended.

use bytemuck::NoUninit;

use super::context::{self, read_config, size_of_u32, ur_context, Config, Versioned};
use super::host_out::HostOut;
use super::model::{handle, ur_model};
use super::model_media::{load_pixels, media_inputs, pixel_descs, read_media, ur_media};
use super::status::{call, ur_status, Failure, FfiResult};
use crate::judge::{FinishReason, GenerationConfig};

/// The generation produced one of the stop tokens (its last token).
pub const UR_FINISH_STOP: i32 = 0;
/// It produced `max_new_tokens` tokens.
pub const UR_FINISH_MAX_NEW_TOKENS: i32 = 1;
/// Prompt and new tokens filled the model's `max_position_embeddings`.
pub const UR_FINISH_CONTEXT_LENGTH: i32 = 2;

/// What `ur_model_generate_ex` reports besides the tokens. Set `struct_size = sizeof(ur_generation_result)`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, NoUninit)]
pub struct ur_generation_result {
    /// `sizeof(ur_generation_result)`, set by the caller.
    pub struct_size: u32,
    /// `UR_FINISH_STOP`, `UR_FINISH_MAX_NEW_TOKENS` or `UR_FINISH_CONTEXT_LENGTH`.
    pub finish_reason: i32,
    /// The new tokens written to `out`.
    pub num_tokens: u64,
}

impl Versioned for ur_generation_result {
    const NAME: &'static str = "ur_generation_result";
}

/// How `ur_model_generate(_ex)` picks tokens. Initialise with `ur_generation_config_default()`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ur_generation_config {
    /// `sizeof(ur_generation_config)`.
    pub struct_size: u32,
    /// At most this many new tokens (default 64, at least 1).
    pub max_new_tokens: u32,
    /// 0 (default) picks the most likely token; above 0 samples from softmax(logits / temperature).
    pub temperature: f32,
    /// Nucleus sampling mass in (0, 1] (default 1: every token).
    pub top_p: f32,
    /// The sampler's seed (default 0); a given seed gives the same tokens.
    pub seed: u64,
    /// Generation ends after one of these tokens (which is kept in the output); NULL when `num_stop_tokens` is 0.
    pub stop_tokens: *const i32,
    pub num_stop_tokens: usize,
}

impl Versioned for ur_generation_config {
    const NAME: &'static str = "ur_generation_config";
}

impl Config for ur_generation_config {
    fn default_value() -> Self {
        let d = GenerationConfig::default();
        ur_generation_config {
            struct_size: size_of_u32::<Self>(),
            max_new_tokens: d.max_new_tokens as u32,
            temperature: d.temperature,
            top_p: d.top_p,
            seed: d.seed,
            stop_tokens: std::ptr::null(),
            num_stop_tokens: 0,
        }
    }
}

impl ur_generation_config {
    /// # Safety
    /// `stop_tokens` is NULL or holds `num_stop_tokens` values.
    pub(super) unsafe fn to_rust(self) -> FfiResult<GenerationConfig> {
        let stop = if self.num_stop_tokens == 0 {
            &[][..]
        } else if self.stop_tokens.is_null() {
            return Err(Failure::null("cfg->stop_tokens"));
        } else {
            // SAFETY: this function's contract.
            unsafe { std::slice::from_raw_parts(self.stop_tokens, self.num_stop_tokens) }
        };
        Ok(GenerationConfig {
            max_new_tokens: self.max_new_tokens as usize,
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
            stop_tokens: token_ids("cfg->stop_tokens", stop)?,
            suppress_tokens: Vec::new(),
        })
    }
}

/// Greedy decoding, 64 new tokens at most, seed 0, no stop tokens.
#[no_mangle]
pub extern "C" fn ur_generation_config_default() -> ur_generation_config {
    ur_generation_config::default_value()
}

/// Token ids as the model takes them (a negative id is an error naming `what`).
fn token_ids(what: &str, ids: &[i32]) -> FfiResult<Vec<u32>> {
    ids.iter()
        .map(|&id| {
            u32::try_from(id).map_err(|_| Failure::invalid(format!("`{what}` holds the negative token id {id}")))
        })
        .collect()
}

/// Checks a prompt: each id below the vocabulary size, or (for LLaVA) one of the placeholders.
fn prompt_ids(model: &ur_model, prompt: &[i32]) -> FfiResult<Vec<i64>> {
    let vocab = model.network.language_model().config.vocab_size as i64;
    let placeholders = model.network.placeholders();
    let is_placeholder = |id: i64| placeholders.is_some_and(|p| id == p.image || id == p.video);
    prompt
        .iter()
        .map(|&id| i64::from(id))
        .map(|id| match (0..vocab).contains(&id) || is_placeholder(id) {
            true => Ok(id),
            false => Err(Failure::invalid(format!(
                "`prompt` holds the token id {id}, outside the vocabulary ({vocab} tokens) and no placeholder"
            ))),
        })
        .collect()
}

/// Generates up to `cfg->max_new_tokens` tokens after `prompt` (`prompt_len` > 0 token ids) with a KV cache,
/// writing them to `out` (room for `out_capacity` ids, at least `max_new_tokens`) and their number to `*out_len`
/// (fewer than `max_new_tokens` when a stop token ended the generation, which is included, or when the prompt and
/// the new tokens reached the model's `max_position_embeddings`). `cfg` NULL means the defaults (greedy, 64
/// tokens). Synchronises (each step reads the logits on the host). `ur_model_generate_ex` without media.
///
/// # Safety
/// `ctx` comes from `ur_context_create`, `model` from `ur_model_load`; `prompt` holds `prompt_len` values; `out`
/// holds `out_capacity` writable values; `out_len` is NULL or writable; `cfg` is NULL or a readable config whose
/// `stop_tokens` holds `num_stop_tokens` values.
#[no_mangle]
pub unsafe extern "C" fn ur_model_generate(
    ctx: *mut ur_context,
    model: *const ur_model,
    prompt: *const i32,
    prompt_len: usize,
    cfg: *const ur_generation_config,
    out: *mut i32,
    out_capacity: usize,
    out_len: *mut usize,
) -> ur_status {
    if out_len.is_null() {
        return call(|| Err(Failure::null("out_len")));
    }
    let mut result =
        ur_generation_result { struct_size: size_of_u32::<ur_generation_result>(), finish_reason: 0, num_tokens: 0 };
    let null = std::ptr::null();
    // SAFETY: this function's contract is `ur_model_generate_ex`'s without media; `result` is a local.
    let status =
        unsafe { ur_model_generate_ex(ctx, model, prompt, prompt_len, null, 0, cfg, out, out_capacity, &mut result) };
    if status == ur_status::UR_OK {
        // SAFETY: checked non-NULL; writable by this function's contract.
        unsafe { out_len.write(result.num_tokens as usize) };
    }
    status
}

/// `ur_model_generate` with `num_media` images and videos (as for `ur_model_forward_ex`; the prompt holds their
/// placeholder ids, which for a `llava_qwen` checkpoint are negative) for a LLaVA-OneVision model, and the number of
/// new tokens and why the generation ended (`UR_FINISH_*`) written to `*result`, whose `struct_size` the caller
/// sets. The images are encoded once, in the prefill. Pixel values on a CUDA device must be complete when the
/// call starts (it runs on the library's own stream). Nothing is written to `out` or `*result` on failure.
///
/// # Safety
/// As for `ur_model_generate` and, for `media`, `ur_model_forward_ex`; `result` is NULL (an error) or points to
/// `result->struct_size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn ur_model_generate_ex(
    ctx: *mut ur_context,
    model: *const ur_model,
    prompt: *const i32,
    prompt_len: usize,
    media: *const ur_media,
    num_media: usize,
    cfg: *const ur_generation_config,
    out: *mut i32,
    out_capacity: usize,
    result: *mut ur_generation_result,
) -> ur_status {
    // SAFETY (whole body): this function's contract.
    call(|| unsafe {
        context::check(ctx)?;
        let m = handle(model)?;
        let cfg = read_config(cfg)?.to_rust()?;
        for (arg, is_null) in [("prompt", prompt.is_null()), ("out", out.is_null())] {
            if is_null {
                return Err(Failure::null(arg));
            }
        }
        let result = HostOut::versioned("result", result)?.ok_or_else(|| Failure::null("result"))?;
        if prompt_len == 0 {
            return Err(Failure::invalid("`prompt_len` is 0: generation needs at least one prompt token"));
        }
        if out_capacity < cfg.max_new_tokens {
            return Err(Failure::invalid(format!(
                "`out_capacity` is {out_capacity}, less than `max_new_tokens` ({})",
                cfg.max_new_tokens
            )));
        }
        let prompt = prompt_ids(m, std::slice::from_raw_parts(prompt, prompt_len))?;
        let lm = m.network.language_model();
        let vocab = lm.config.vocab_size;
        if let Some(id) = cfg.stop_tokens.iter().find(|&&id| id as usize >= vocab) {
            return Err(Failure::invalid(format!(
                "`cfg->stop_tokens` holds {id}, outside the vocabulary ({vocab} tokens)"
            )));
        }
        m.network.check_media_count(num_media)?;
        let items = read_media(media, num_media)?;
        m.same_device(&pixel_descs(&items))?;
        let pixels = load_pixels(&items, &m.dir)?;
        let tokens = m.network.generate(&prompt, &media_inputs(&items, &pixels), &cfg)?;
        for (k, &id) in tokens.iter().enumerate() {
            out.add(k).write(id as i32);
        }
        let reason = match FinishReason::of(lm, prompt.len(), &tokens, &cfg) {
            FinishReason::Stop => UR_FINISH_STOP,
            FinishReason::MaxNewTokens => UR_FINISH_MAX_NEW_TOKENS,
            FinishReason::ContextLength => UR_FINISH_CONTEXT_LENGTH,
        };
        result.write(ur_generation_result { struct_size: 0, finish_reason: reason, num_tokens: tokens.len() as u64 });
        Ok(())
    })
}
