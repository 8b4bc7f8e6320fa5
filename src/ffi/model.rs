//! `ur_model_*`: a Hugging Face checkpoint — a Qwen2 decoder or the LLaVA-OneVision judge, detected from its
//! `config.json` — behind an opaque handle: logits forward (with images and videos for LLaVA), backward to every
//! parameter gradient under the checkpoint's names. Generation is in `generation.rs`.

use std::ffi::{c_char, c_void, CStr, CString};
use std::path::{Path, PathBuf};

use bytemuck::NoUninit;

use super::context::{self, read_config, size_of_u32, ur_context, Config, Versioned};
use super::dlpack::{device_of, dl_device, dl_dtype, dtype_of, on_device, DLDataType, DLDevice, DLTensor, Desc};
use super::host_out::HostOut;
use super::model_media::{load_pixels, media_inputs, pixel_descs, read_media, ur_media};
use super::network::{Gradients, Network, Pass};
use super::status::{call, ur_status, Failure, FfiResult};
use crate::model::{Architecture, LoadOptions};
use crate::runtime::cuda;
use crate::{Device, Error, Tensor};

/// `ur_model_info.architecture` of a Qwen2 decoder (`model_type: "qwen2"`).
pub const UR_ARCHITECTURE_QWEN2: i32 = 0;
/// `ur_model_info.architecture` of LLaVA-OneVision (`model_type: "llava_onevision"` or `"llava_qwen"`).
pub const UR_ARCHITECTURE_LLAVA_ONEVISION: i32 = 1;

/// Tells a live model from garbage (a freed or never-created pointer is still undefined behaviour).
const MAGIC: u64 = 0x7572_5f6d_6f64_0001; // "ur_mod" v1

/// The name under which `ur_model_gradient` returns the gradient of the input embeddings.
const INPUTS_EMBEDS: &str = "inputs_embeds";

/// A model (Qwen2 or LLaVA-OneVision) with its weights on one device, and the state of one training step: the
/// forward pass kept for the backward, then the gradients. Opaque; create it with `ur_model_load`, free it with
/// `ur_model_free`. `ur_model_forward(_ex)`, `ur_model_backward` and `ur_model_gradient` change or read that state:
/// use a model from one thread at a time. The other calls only read the weights.
#[allow(non_camel_case_types)]
pub struct ur_model {
    magic: u64,
    pub(super) network: Network,
    /// The checkpoint directory (its `preprocessor_config.json` preprocesses image and video files).
    pub(super) dir: PathBuf,
    /// The parameters' checkpoint names, NUL-terminated for `ur_model_parameter_name`.
    names: Vec<CString>,
    /// The stored tensors a lenient load ignored, for `ur_model_ignored_name`.
    ignored: Vec<CString>,
    pass: Option<Pass>,
    grads: Option<Gradients>,
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
    /// `UR_ARCHITECTURE_QWEN2` or `UR_ARCHITECTURE_LLAVA_ONEVISION` (the sizes above are then its language
    /// model's; appended: older callers pass the shorter struct).
    pub architecture: i32,
    /// Written 0.
    pub reserved2: i32,
    /// The placeholder ids of an image and a video in LLaVA input ids (-1 for Qwen2).
    pub image_token_id: i64,
    pub video_token_id: i64,
}

impl Versioned for ur_model_info {
    const NAME: &'static str = "ur_model_info";
    const FIRST_SIZE: usize = std::mem::offset_of!(ur_model_info, architecture);
}

/// How `ur_model_load_ex` takes a checkpoint. Initialise with `ur_load_options_default()`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ur_load_options {
    /// `sizeof(ur_load_options)`.
    pub struct_size: u32,
    /// Nonzero: load a checkpoint holding tensors the model does not use (an extra head, a tied model's separate
    /// `lm_head.weight`), listing them for `ur_model_ignored_name`, as transformers warns and goes on. Default 0:
    /// such a checkpoint is refused. Missing tensors and wrong shapes are errors either way.
    pub lenient: i32,
    /// Nonzero: refuse weights holding NaN or ±inf, naming the tensor (costs one pass over the weights). Default 0.
    pub check_finite: i32,
}

impl Versioned for ur_load_options {
    const NAME: &'static str = "ur_load_options";
}

impl Config for ur_load_options {
    fn default_value() -> Self {
        ur_load_options { struct_size: size_of_u32::<Self>(), lenient: 0, check_finite: 0 }
    }
}

/// Strict: unused tensors refused, finiteness not checked.
#[no_mangle]
pub extern "C" fn ur_load_options_default() -> ur_load_options {
    ur_load_options::default_value()
}

/// Borrows a model handle.
///
/// # Safety
/// `model` is NULL or a pointer returned by `ur_model_load` and not yet freed, not used by another thread.
pub(super) unsafe fn handle<'a>(model: *const ur_model) -> FfiResult<&'a ur_model> {
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
pub(super) unsafe fn write<T>(name: &str, out: *mut T, value: T) -> FfiResult {
    if out.is_null() {
        return Err(Failure::null(name));
    }
    // SAFETY: checked non-NULL; writable by this function's contract.
    unsafe { out.write(value) };
    Ok(())
}

impl ur_model {
    /// Checks that every descriptor is on the model's device.
    pub(super) fn same_device(&self, descs: &[&Desc]) -> FfiResult {
        let device = self.network.language_model().device();
        match descs.iter().find(|d| d.device != device) {
            Some(d) => Err(Error::Device(format!("`{}` is on {}, the model on {device}", d.name, d.device)).into()),
            None => Ok(()),
        }
    }

    /// Checks that `d` is [n,t,V] in the model's dtype (logits, or their gradient).
    fn expect_logits(&self, d: &Desc, n: usize, t: usize) -> FfiResult {
        let lm = self.network.language_model();
        let expected = [n, t, lm.config.vocab_size];
        if d.shape != expected {
            return Err(
                Error::Shape(format!("`{}` has shape {:?}, the logits are {expected:?}", d.name, d.shape)).into()
            );
        }
        if d.dtype != lm.dtype() {
            return Err(Error::DType { arg: d.name, got: d.dtype, expected: lm.dtype().to_string() }.into());
        }
        Ok(())
    }
}

/// Loads the checkpoint in directory `dir` (`config.json` and `model.safetensors`, or sharded weights with
/// `model.safetensors.index.json`): a Qwen2 decoder, or LLaVA-OneVision (`model_type` "llava_onevision" or
/// "llava_qwen"; `ur_model_info.architecture` tells), converted to `dtype` (float32, bfloat16 or float16) on
/// `device` (kDLCPU, or kDLCUDA with its ordinal), into `*out`. Strict: `ur_model_load_ex` with NULL options. A
/// missing, unreadable or unsupported file is `UR_ERROR_CHECKPOINT`, with a message naming it. Synchronises. On
/// failure `*out` is left unchanged.
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
    // SAFETY: this function's contract is `ur_model_load_ex`'s with NULL options.
    unsafe { ur_model_load_ex(ctx, dir, dtype, device, std::ptr::null(), out) }
}

/// `ur_model_load` under `options` (NULL: the defaults of `ur_load_options_default()`): a lenient load lists the
/// tensors it ignored (`ur_model_ignored_count` / `ur_model_ignored_name`); `check_finite` refuses NaN or infinite
/// weights with `UR_ERROR_CHECKPOINT` naming the tensor.
///
/// # Safety
/// As for `ur_model_load`; `options` is NULL or a readable `ur_load_options` of its `struct_size`.
#[no_mangle]
pub unsafe extern "C" fn ur_model_load_ex(
    ctx: *mut ur_context,
    dir: *const c_char,
    dtype: DLDataType,
    device: DLDevice,
    options: *const ur_load_options,
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
        let options = read_config(options)?;
        let options = LoadOptions { lenient: options.lenient != 0, check_finite: options.check_finite != 0 };
        let dir = CStr::from_ptr(dir).to_str().map_err(|_| Failure::invalid("`dir` is not valid UTF-8"))?;
        let device = device_of("device", device)?;
        let (network, report) = Network::load(Path::new(dir), dtype_of("dtype", dtype)?, device, &options)?;
        if let Device::Cuda(ordinal) = device {
            // The weights were written on the library's own stream; the ops run on the callers' streams.
            cuda::backend(ordinal)?.synchronize()?;
        }
        let c_strings = |names: Vec<String>| -> FfiResult<Vec<CString>> {
            let c = |name| CString::new(name).map_err(|_| Failure::invalid("a tensor name holds NUL"));
            names.into_iter().map(c).collect()
        };
        let names = c_strings(network.named_parameters().into_iter().map(|(name, _)| name).collect())?;
        let ignored = c_strings(report.ignored)?;
        let dir = PathBuf::from(dir);
        let handle = ur_model { magic: MAGIC, network, dir, names, ignored, pass: None, grads: None };
        *out = Box::into_raw(Box::new(handle));
        Ok(())
    })
}

/// The number of stored tensors the (lenient) load ignored into `*out` (0 after a strict load).
///
/// # Safety
/// `model` comes from `ur_model_load`; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ur_model_ignored_count(model: *const ur_model, out: *mut usize) -> ur_status {
    // SAFETY (whole body): this function's contract.
    call(|| unsafe { write("out", out, handle(model)?.ignored.len()) })
}

/// The name of ignored tensor `index` (sorted by name) into `*name`: a NUL-terminated string owned by the model,
/// valid until `ur_model_free`.
///
/// # Safety
/// `model` comes from `ur_model_load`; `name` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ur_model_ignored_name(
    model: *const ur_model,
    index: usize,
    name: *mut *const c_char,
) -> ur_status {
    // SAFETY (whole body): this function's contract.
    call(|| unsafe { write("name", name, indexed(&handle(model)?.ignored, index, "ignored tensors")?.as_ptr()) })
}

/// Entry `index` of `list`, or an error naming the count.
fn indexed<'a>(list: &'a [CString], index: usize, what: &str) -> FfiResult<&'a CString> {
    list.get(index).ok_or_else(|| Failure::invalid(format!("`index` is {index}, the model has {} {what}", list.len())))
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
        let lm = m.network.language_model();
        let c = &lm.config;
        let placeholders = m.network.placeholders();
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
            num_parameters: m.network.numel() as u64,
            tie_word_embeddings: i32::from(c.tie_word_embeddings),
            dtype: dl_dtype(lm.dtype()),
            device: dl_device(lm.device()),
            architecture: match m.network.architecture() {
                Architecture::Qwen2 => UR_ARCHITECTURE_QWEN2,
                Architecture::LlavaOnevision => UR_ARCHITECTURE_LLAVA_ONEVISION,
            },
            reserved2: 0,
            image_token_id: placeholders.map_or(-1, |p| p.image),
            video_token_id: placeholders.map_or(-1, |p| p.video),
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

/// The checkpoint name of parameter `index` (`model.layers.0.self_attn.q_proj.weight`, ...; a LLaVA model's under
/// its layout's prefixes) into `*name`: a NUL-terminated string owned by the model, valid until `ur_model_free`.
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
    call(|| unsafe { write("name", name, indexed(&handle(model)?.names, index, "parameters")?.as_ptr()) })
}

/// The shape of parameter `index`: its rank into `*rank` and its dimensions into `dims[0..rank]` (`capacity`
/// values available; 4 always suffice).
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
        let named = m.network.named_parameters();
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
/// not synchronise on CUDA (run the backward on the same stream). `ur_model_forward_ex` without media.
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
    // SAFETY: this function's contract is `ur_model_forward_ex`'s without media.
    unsafe { ur_model_forward_ex(ctx, model, ids, mask, std::ptr::null(), 0, logits_out, stream) }
}

/// `ur_model_forward` with `num_media` images and videos (`media`: an array of `ur_media`, NULL when
/// `num_media` is 0) for a LLaVA-OneVision model. `ids` then hold, for each item, as many placeholder ids
/// (`ur_model_info.image_token_id` / `video_token_id`) as its packed features have rows, as transformers'
/// processor expands them (`ur_model_placeholder_counts` tells how many); a count that does not match is
/// `UR_ERROR_SHAPE` or `UR_ERROR_INVALID_ARGUMENT` naming it. Pixel values are on the model's device; files are
/// decoded and preprocessed with the checkpoint's `preprocessor_config.json`. Everything is checked before
/// `logits_out` is written.
///
/// # Safety
/// As for `ur_model_forward`; `media` points to `num_media` items of `media[0].struct_size` bytes each whose
/// `pixel_values` are NULL or valid `DLTensor`s and whose `path`s are NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn ur_model_forward_ex(
    ctx: *mut ur_context,
    model: *mut ur_model,
    ids: *const DLTensor,
    mask: *const DLTensor,
    media: *const ur_media,
    num_media: usize,
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
        m.network.check_media_count(num_media)?;
        let items = read_media(media, num_media)?;
        let mut descs = vec![Some(&ids), mask.as_ref(), Some(&out)];
        descs.extend(pixel_descs(&items).into_iter().map(Some));
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
            let pixels = load_pixels(&items, &m.dir)?;
            let pass = m.network.forward(&ids, &mask, &media_inputs(&items, &pixels))?;
            out.tensor()?.copy_from(&m.network.logits(&pass)?)?;
            m.pass = Some(pass);
            Ok(())
        })
    })
}

/// The placeholder ids each of `num_media` items takes in the input ids (its packed feature rows, from the pixels'
/// shape and the image's size, or the file after preprocessing) into `counts[0..num_media]`: what a prompt's
/// `<image>` / `<video>` expands to. `UR_ERROR_INVALID_ARGUMENT` for a Qwen2 model given media.
///
/// # Safety
/// `model` comes from `ur_model_load`; `media` as for `ur_model_forward_ex` (host memory is read, CUDA pixel values
/// only described); `counts` is NULL (an error when `num_media` > 0) or has `num_media` writable values.
#[no_mangle]
pub unsafe extern "C" fn ur_model_placeholder_counts(
    model: *const ur_model,
    media: *const ur_media,
    num_media: usize,
    counts: *mut u64,
) -> ur_status {
    // SAFETY (whole body): this function's contract.
    call(|| unsafe {
        let m = handle(model)?;
        m.network.check_media_count(num_media)?;
        let items = read_media(media, num_media)?;
        if num_media > 0 && counts.is_null() {
            return Err(Failure::null("counts"));
        }
        let pixels = load_pixels(&items, &m.dir)?;
        let found = m.network.placeholder_counts(&media_inputs(&items, &pixels))?;
        for (k, count) in found.into_iter().enumerate() {
            counts.add(k).write(count as u64);
        }
        Ok(())
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
        let &[n, t, _] = pass.language_model().hidden().shape() else { unreachable!("hidden states are [N,T,H]") };
        m.expect_logits(&grad, n, t)?;
        on_device(&[Some(&grad)], stream, || {
            let pass = m.pass.take().ok_or_else(|| Failure::invalid("the forward pass vanished"))?;
            m.grads = Some(m.network.backward(pass, &grad.tensor()?)?);
            Ok(())
        })
    })
}

/// Copies the gradient named `name` (a parameter's checkpoint name, or "inputs_embeds" for the gradient of the
/// language model's input embeddings `[N,T,H]`) from the last `ur_model_backward` into `out` (the parameter's shape
/// and the model's dtype, on its device). Does not synchronise on CUDA.
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
        let named = m.network.named_gradients(grads, INPUTS_EMBEDS);
        let grad = named.into_iter().find(|(n, _)| *n == name).map(|(_, t)| t).ok_or_else(|| {
            Failure::invalid(format!(
                "no gradient named `{name}`: use a name from ur_model_parameter_name or \"{INPUTS_EMBEDS}\""
            ))
        })?;
        out.expect(grad)?;
        on_device(&[Some(&out)], stream, || Ok(out.tensor()?.copy_from(grad)?))
    })
}
