//! `ur_model_*`: a Qwen2 decoder loaded from a Hugging Face checkpoint, behind an opaque handle: logits forward,
//! backward to every parameter gradient, and text generation.

use std::ffi::{c_char, c_void, CStr, CString};
use std::path::Path;

use bytemuck::NoUninit;

use super::context::{self, read_config, size_of_u32, ur_context, Config, Versioned};
use super::dlpack::{device_of, dl_device, dl_dtype, dtype_of, on_device, DLDataType, DLDevice, DLTensor, Desc};
use super::host_out::HostOut;
use super::status::{call, ur_status, Failure, FfiResult};
use crate::judge::{generate, GenerationConfig};
use crate::model::qwen2::{ForwardOptions, ForwardPass, Qwen2Gradients};
use crate::model::Qwen2Model;
use crate::runtime::cuda;
use crate::{Device, Error, Tensor};

/// Tells a live model from garbage (a freed or never-created pointer is still undefined behaviour).
const MAGIC: u64 = 0x7572_5f6d_6f64_0001; // "ur_mod" v1

/// The name under which `ur_model_gradient` returns the gradient of the input embeddings.
const INPUTS_EMBEDS: &str = "inputs_embeds";

/// A Qwen2 decoder with its weights on one device, and the state of one training step: the forward pass kept for
/// the backward, then the gradients. Opaque; create it with `ur_model_load`, free it with `ur_model_free`.
/// `ur_model_forward`, `ur_model_backward` and `ur_model_gradient` change or read that state: use a model from one
/// thread at a time. The other calls only read the weights.
#[allow(non_camel_case_types)]
pub struct ur_model {
    magic: u64,
    model: Qwen2Model,
    /// The parameters' Hugging Face names, NUL-terminated for `ur_model_parameter_name`.
    names: Vec<CString>,
    pass: Option<ForwardPass>,
    grads: Option<Qwen2Gradients>,
}

/// What `ur_model_get_info` reports. Set `struct_size = sizeof(ur_model_info)` before the call.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, NoUninit)]
pub struct ur_model_info {
    /// `sizeof(ur_model_info)`, set by the caller.
    pub struct_size: u32,
    /// Written 0 (keeps the struct free of padding).
    pub reserved: u32,
    pub vocab_size: u64,
    pub hidden_size: u64,
    pub intermediate_size: u64,
    pub num_layers: u64,
    pub num_attention_heads: u64,
    pub num_key_value_heads: u64,
    pub max_position_embeddings: u64,
    /// Scalar parameters (a tied LM head counted once).
    pub num_parameters: u64,
    /// 1 when the LM head is the embedding matrix (no `lm_head.weight` parameter).
    pub tie_word_embeddings: i32,
    /// The weights' (compute) dtype.
    pub dtype: DLDataType,
    pub device: DLDevice,
}

impl Versioned for ur_model_info {
    const NAME: &'static str = "ur_model_info";
}

/// How `ur_model_generate` picks tokens. Initialise with `ur_generation_config_default()`.
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
    unsafe fn to_rust(self) -> FfiResult<GenerationConfig> {
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

/// Borrows a model handle.
///
/// # Safety
/// `model` is NULL or a pointer returned by `ur_model_load` and not yet freed, not used by another thread.
unsafe fn handle<'a>(model: *const ur_model) -> FfiResult<&'a ur_model> {
    // SAFETY: this function's contract.
    match unsafe { model.as_ref() } {
        None => Err(Failure::null("model")),
        Some(m) if m.magic == MAGIC => Ok(m),
        Some(_) => Err(Failure::invalid("`model` is not a live ur_model")),
    }
}

/// Borrows a model handle mutably.
///
/// # Safety
/// As for [`handle`].
unsafe fn handle_mut<'a>(model: *mut ur_model) -> FfiResult<&'a mut ur_model> {
    // SAFETY: this function's contract; `handle` checked the pointer.
    unsafe { handle(model)? };
    // SAFETY: as above; the caller gives this call exclusive use of the handle.
    Ok(unsafe { &mut *model })
}

/// Writes through an output pointer, or fails naming it when it is NULL.
///
/// # Safety
/// `out` is NULL or writable.
unsafe fn write<T>(name: &str, out: *mut T, value: T) -> FfiResult {
    if out.is_null() {
        return Err(Failure::null(name));
    }
    // SAFETY: checked non-NULL; writable by this function's contract.
    unsafe { out.write(value) };
    Ok(())
}

impl ur_model {
    /// Checks that every descriptor is on the model's device.
    fn same_device(&self, descs: &[&Desc]) -> FfiResult {
        let device = self.model.device();
        match descs.iter().find(|d| d.device != device) {
            Some(d) => Err(Error::Device(format!("`{}` is on {}, the model on {device}", d.name, d.device)).into()),
            None => Ok(()),
        }
    }

    /// Checks that `d` is [n,t,V] in the model's dtype (logits, or their gradient).
    fn expect_logits(&self, d: &Desc, n: usize, t: usize) -> FfiResult {
        let expected = [n, t, self.model.config.vocab_size];
        if d.shape != expected {
            return Err(
                Error::Shape(format!("`{}` has shape {:?}, the logits are {expected:?}", d.name, d.shape)).into()
            );
        }
        if d.dtype != self.model.dtype() {
            return Err(Error::DType { arg: d.name, got: d.dtype, expected: self.model.dtype().to_string() }.into());
        }
        Ok(())
    }
}

/// Loads the Qwen2 checkpoint in directory `dir` (`config.json` and `model.safetensors`, or sharded weights with
/// `model.safetensors.index.json`), converted to `dtype` (float32, bfloat16 or float16) on `device` (kDLCPU, or
/// kDLCUDA with its ordinal), into `*out`. A missing, unreadable or unsupported file is `UR_ERROR_CHECKPOINT`, with a
/// message naming it. Synchronises. On failure `*out` is left unchanged.
///
/// # Safety
/// `ctx` comes from `ur_context_create`; `dir` is NULL or a NUL-terminated UTF-8 path; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ur_model_load(
    ctx: *mut ur_context,
    dir: *const c_char,
    dtype: DLDataType,
    device: DLDevice,
    out: *mut *mut ur_model,
) -> ur_status {
    // SAFETY (whole body): this function's contract.
    call(|| unsafe {
        context::check(ctx)?;
        if dir.is_null() {
            return Err(Failure::null("dir"));
        }
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        let dir = CStr::from_ptr(dir).to_str().map_err(|_| Failure::invalid("`dir` is not valid UTF-8"))?;
        let device = device_of("device", device)?;
        let model = Qwen2Model::load(Path::new(dir), dtype_of("dtype", dtype)?, device)?;
        if let Device::Cuda(ordinal) = device {
            // The weights were written on the library's own stream; the ops run on the callers' streams.
            cuda::backend(ordinal)?.synchronize()?;
        }
        let names = model
            .weights
            .named()
            .into_iter()
            .map(|(name, _)| CString::new(name).map_err(|_| Failure::invalid("a parameter name holds NUL")))
            .collect::<FfiResult<_>>()?;
        let handle = ur_model { magic: MAGIC, model, names, pass: None, grads: None };
        *out = Box::into_raw(Box::new(handle));
        Ok(())
    })
}

/// Frees a model (its weights, a kept forward pass, kept gradients). NULL is accepted and does nothing.
///
/// # Safety
/// `model` is NULL or a pointer returned by `ur_model_load`, not yet freed, and no call is using it.
#[no_mangle]
pub unsafe extern "C" fn ur_model_free(model: *mut ur_model) {
    if model.is_null() {
        return;
    }
    // A panic while dropping must not cross into C: the memory is then leaked instead.
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: this function's contract: `model` came from `Box::into_raw` in `ur_model_load`.
        let mut model = unsafe { Box::from_raw(model) };
        model.magic = 0;
    });
}

/// The model's sizes, dtype and device into `*out`, whose `struct_size` the caller sets to
/// `sizeof(ur_model_info)`.
///
/// # Safety
/// `model` comes from `ur_model_load`; `out` is NULL or points to a writable `ur_model_info`.
#[no_mangle]
pub unsafe extern "C" fn ur_model_get_info(model: *const ur_model, out: *mut ur_model_info) -> ur_status {
    // SAFETY (whole body): this function's contract.
    call(|| unsafe {
        let m = handle(model)?;
        let out = HostOut::versioned("out", out)?.ok_or_else(|| Failure::null("out"))?;
        let c = &m.model.config;
        out.write(ur_model_info {
            struct_size: size_of_u32::<ur_model_info>(),
            reserved: 0,
            vocab_size: c.vocab_size as u64,
            hidden_size: c.hidden_size as u64,
            intermediate_size: c.intermediate_size as u64,
            num_layers: c.num_hidden_layers as u64,
            num_attention_heads: c.num_attention_heads as u64,
            num_key_value_heads: c.num_key_value_heads as u64,
            max_position_embeddings: c.max_position_embeddings as u64,
            num_parameters: m.model.weights.numel() as u64,
            tie_word_embeddings: i32::from(c.tie_word_embeddings),
            dtype: dl_dtype(m.model.dtype()),
            device: dl_device(m.model.device()),
        });
        Ok(())
    })
}

/// The number of parameter tensors into `*out` (what `ur_model_parameter_name` indexes).
///
/// # Safety
/// `model` comes from `ur_model_load`; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ur_model_parameter_count(model: *const ur_model, out: *mut usize) -> ur_status {
    // SAFETY (whole body): this function's contract.
    call(|| unsafe { write("out", out, handle(model)?.names.len()) })
}

/// The Hugging Face name of parameter `index` (`model.layers.0.self_attn.q_proj.weight`, ...) into `*name`: a
/// NUL-terminated string owned by the model, valid until `ur_model_free`.
///
/// # Safety
/// `model` comes from `ur_model_load`; `name` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ur_model_parameter_name(
    model: *const ur_model,
    index: usize,
    name: *mut *const c_char,
) -> ur_status {
    // SAFETY (whole body): this function's contract.
    call(|| unsafe {
        let m = handle(model)?;
        let count = m.names.len();
        let entry = m
            .names
            .get(index)
            .ok_or_else(|| Failure::invalid(format!("`index` is {index}, the model has {count} parameters")))?;
        write("name", name, entry.as_ptr())
    })
}

/// The shape of parameter `index`: its rank into `*rank` and its dimensions into `dims[0..rank]` (`capacity`
/// values available; 2 always suffice for Qwen2).
///
/// # Safety
/// `model` comes from `ur_model_load`; `rank` is NULL or writable; `dims` is NULL or holds `capacity` writable
/// values.
#[no_mangle]
pub unsafe extern "C" fn ur_model_parameter_shape(
    model: *const ur_model,
    index: usize,
    rank: *mut i32,
    dims: *mut i64,
    capacity: usize,
) -> ur_status {
    // SAFETY (whole body): this function's contract.
    call(|| unsafe {
        let m = handle(model)?;
        let named = m.model.weights.named();
        let (_, tensor) = named
            .get(index)
            .ok_or_else(|| Failure::invalid(format!("`index` is {index}, the model has {} parameters", named.len())))?;
        let shape = tensor.shape();
        if capacity < shape.len() {
            return Err(Failure::invalid(format!(
                "`capacity` is {capacity}, the shape has {} dimensions",
                shape.len()
            )));
        }
        if dims.is_null() && !shape.is_empty() {
            return Err(Failure::null("dims"));
        }
        write("rank", rank, shape.len() as i32)?;
        for (k, &d) in shape.iter().enumerate() {
            dims.add(k).write(d as i64);
        }
        Ok(())
    })
}

/// Runs the model over token ids `ids` `[N,T]` (int32/int64, each below the vocabulary size) with `mask` `[N,T]`
/// (int32/int64, nonzero = a real token, typically right padding; NULL = every token real) and writes the logits
/// `[N,T,V]` in the model's dtype into `logits_out`. All tensors are on the model's device. The pass's activations
/// stay in the model for one `ur_model_backward` (a new forward replaces them; kept gradients are dropped). Does
/// not synchronise on CUDA (run the backward on the same stream).
///
/// # Safety
/// `ctx` comes from `ur_context_create`, `model` from `ur_model_load` (used by this thread only); every non-NULL
/// `DLTensor*` describes memory valid for its extent on its device (outputs writable); `stream` is NULL or a valid
/// stream of the model's CUDA device.
#[no_mangle]
pub unsafe extern "C" fn ur_model_forward(
    ctx: *mut ur_context,
    model: *mut ur_model,
    ids: *const DLTensor,
    mask: *const DLTensor,
    logits_out: *const DLTensor,
    stream: *mut c_void,
) -> ur_status {
    // SAFETY (whole body): this function's contract, passed on to the helpers that read the pointers.
    call(|| unsafe {
        context::check(ctx)?;
        let m = handle_mut(model)?;
        let ids = Desc::required("ids", ids)?;
        let mask = Desc::optional("mask", mask)?;
        let out = Desc::required("logits_out", logits_out)?;
        let descs = [Some(&ids), mask.as_ref(), Some(&out)];
        m.same_device(&descs.iter().flatten().copied().collect::<Vec<_>>())?;
        if let &[n, t] = ids.shape.as_slice() {
            m.expect_logits(&out, n, t)?;
        }
        on_device(&descs, stream, || {
            m.pass = None;
            m.grads = None;
            let ids = ids.tensor()?;
            let mask = match &mask {
                Some(mask) => mask.tensor()?,
                None => Tensor::from_slice(&vec![1i32; ids.numel()], ids.shape(), ids.device())?,
            };
            let pass = m.model.forward(&ids, &mask, ForwardOptions::default())?;
            out.tensor()?.copy_from(&m.model.logits(&pass)?)?;
            m.pass = Some(pass);
            Ok(())
        })
    })
}

/// Back-propagates `grad_logits` `[N,T,V]` (the gradient of a loss with respect to the logits of the last
/// `ur_model_forward`, in the model's dtype, on its device) through the model, consuming the kept forward pass
/// (`UR_ERROR_INVALID_ARGUMENT` when there is none). The gradients stay in the model for `ur_model_gradient` until
/// the next forward. Does not synchronise on CUDA.
///
/// # Safety
/// As for `ur_model_forward`.
#[no_mangle]
pub unsafe extern "C" fn ur_model_backward(
    ctx: *mut ur_context,
    model: *mut ur_model,
    grad_logits: *const DLTensor,
    stream: *mut c_void,
) -> ur_status {
    // SAFETY (whole body): this function's contract, passed on to the helpers that read the pointers.
    call(|| unsafe {
        context::check(ctx)?;
        let m = handle_mut(model)?;
        let grad = Desc::required("grad_logits", grad_logits)?;
        m.same_device(&[&grad])?;
        let Some(pass) = &m.pass else {
            return Err(Failure::invalid(
                "no forward pass to back-propagate: call ur_model_forward first (each backward consumes one)",
            ));
        };
        let &[n, t, _] = pass.hidden().shape() else { unreachable!("hidden states are [N,T,H]") };
        m.expect_logits(&grad, n, t)?;
        on_device(&[Some(&grad)], stream, || {
            let pass = m.pass.take().ok_or_else(|| Failure::invalid("the forward pass vanished"))?;
            m.grads = Some(m.model.backward_from_logits(pass, &grad.tensor()?)?);
            Ok(())
        })
    })
}

/// Copies the gradient named `name` (a parameter's Hugging Face name, or "inputs_embeds" for the gradient of the
/// input embeddings `[N,T,H]`) from the last `ur_model_backward` into `out` (the parameter's shape and the model's
/// dtype, on its device). Does not synchronise on CUDA.
///
/// # Safety
/// As for `ur_model_forward`; `name` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn ur_model_gradient(
    ctx: *mut ur_context,
    model: *const ur_model,
    name: *const c_char,
    out: *const DLTensor,
    stream: *mut c_void,
) -> ur_status {
    // SAFETY (whole body): this function's contract, passed on to the helpers that read the pointers.
    call(|| unsafe {
        context::check(ctx)?;
        let m = handle(model)?;
        if name.is_null() {
            return Err(Failure::null("name"));
        }
        let name = CStr::from_ptr(name).to_string_lossy();
        let out = Desc::required("out", out)?;
        m.same_device(&[&out])?;
        let grads = m
            .grads
            .as_ref()
            .ok_or_else(|| Failure::invalid("no gradients: call ur_model_forward and ur_model_backward first"))?;
        let grad = if name == INPUTS_EMBEDS {
            &grads.inputs_embeds
        } else {
            let named = grads.weights.named();
            let found = named.into_iter().find(|(n, _)| *n == name).map(|(_, t)| t);
            found.ok_or_else(|| {
                Failure::invalid(format!(
                    "no gradient named `{name}`: use a name from ur_model_parameter_name or \"{INPUTS_EMBEDS}\""
                ))
            })?
        };
        out.expect(grad)?;
        on_device(&[Some(&out)], stream, || Ok(out.tensor()?.copy_from(grad)?))
    })
}

/// Generates up to `cfg->max_new_tokens` tokens after `prompt` (`prompt_len` > 0 token ids) with a KV cache,
/// writing them to `out` (room for `out_capacity` ids, at least `max_new_tokens`) and their number to `*out_len`
/// (fewer than `max_new_tokens` when a stop token ended the generation; the stop token is included). `cfg` NULL
/// means the defaults (greedy, 64 tokens). Synchronises (each step reads the logits on the host).
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
    // SAFETY (whole body): this function's contract.
    call(|| unsafe {
        context::check(ctx)?;
        let m = handle(model)?;
        let cfg = read_config(cfg)?.to_rust()?;
        for (arg, is_null) in [("prompt", prompt.is_null()), ("out", out.is_null()), ("out_len", out_len.is_null())] {
            if is_null {
                return Err(Failure::null(arg));
            }
        }
        if prompt_len == 0 {
            return Err(Failure::invalid("`prompt_len` is 0: generation needs at least one prompt token"));
        }
        if out_capacity < cfg.max_new_tokens {
            return Err(Failure::invalid(format!(
                "`out_capacity` is {out_capacity}, less than `max_new_tokens` ({})",
                cfg.max_new_tokens
            )));
        }
        let prompt = token_ids("prompt", std::slice::from_raw_parts(prompt, prompt_len))?;
        let vocab = m.model.config.vocab_size;
        if let Some(id) = prompt.iter().chain(&cfg.stop_tokens).find(|&&id| id as usize >= vocab) {
            return Err(Failure::invalid(format!("token id {id} is outside the vocabulary ({vocab} tokens)")));
        }
        let tokens = generate(&m.model, &[prompt], &cfg)?.pop().unwrap_or_default();
        for (k, &id) in tokens.iter().enumerate() {
            out.add(k).write(id as i32);
        }
        out_len.write(tokens.len());
        Ok(())
    })
}
