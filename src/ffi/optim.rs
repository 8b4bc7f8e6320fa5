//! `ur_adamw_*`: the optimizer (`train::optim::AdamW`) behind an opaque handle, over DLPack parameter and gradient
//! lists (a training loop in C, C++ or Python steps its own tensors).

use std::ffi::{c_char, c_void, CStr};

use bytemuck::NoUninit;

use super::context::{self, read_config, size_of_u32, ur_context, Config, Versioned};
use super::dlpack::{on_device, write_outputs, DLTensor, Desc};
use super::host_out::HostOut;
use super::status::{call, ur_status, Failure, FfiResult};
use crate::runtime::cuda;
use crate::train::optim::{AdamW, AdamWConfig, Schedule, ScheduleKind};
use crate::{DType, Device, Tensor};

/// Tells a live optimizer from garbage (a freed or never-created pointer is still undefined behaviour).
const MAGIC: u64 = 0x7572_5f61_6477_0001; // "ur_adw" v1

/// A constant learning rate after warm-up.
pub const UR_SCHEDULE_CONSTANT: i32 = 0;
/// Linear decay to 0 at `total_steps` after warm-up.
pub const UR_SCHEDULE_LINEAR: i32 = 1;
/// Half a cosine to 0 at `total_steps` after warm-up (transformers' `get_cosine_schedule_with_warmup`).
pub const UR_SCHEDULE_COSINE: i32 = 2;

/// The schedules by their `UR_SCHEDULE_*` code.
pub(super) const SCHEDULES: [ScheduleKind; 3] = [ScheduleKind::Constant, ScheduleKind::Linear, ScheduleKind::Cosine];

/// Configuration of `ur_adamw_create`. Initialise with `ur_adamw_config_default()`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ur_adamw_config {
    /// `sizeof(ur_adamw_config)`.
    pub struct_size: u32,
    /// `UR_SCHEDULE_CONSTANT` (default), `UR_SCHEDULE_LINEAR` or `UR_SCHEDULE_COSINE`.
    pub schedule: i32,
    /// Learning rate, finite and >= 0 (default 1e-3).
    pub lr: f64,
    /// In [0, 1) (defaults 0.9 and 0.999).
    pub beta1: f64,
    pub beta2: f64,
    /// >= 0 (default 1e-8).
    pub eps: f64,
    /// Decoupled weight decay, >= 0 (default 1e-2).
    pub weight_decay: f64,
    /// Clip the gradients' global L2 norm to this; 0 (default) turns clipping off.
    pub max_grad_norm: f64,
    /// Linear warm-up steps from 0 (default 0).
    pub warmup_steps: u64,
    /// Optimizer steps of the run, > 0 for the linear and cosine schedules (default 0).
    pub total_steps: u64,
    /// 1: with clipping, a NaN/inf norm is an error and nothing is written (`clip_grad_norm_`'s
    /// `error_if_nonfinite`); 0 (default): NaN reaches the parameters, as in PyTorch.
    pub error_if_nonfinite: i32,
    /// Must be 0.
    pub reserved: i32,
}

impl Versioned for ur_adamw_config {
    const NAME: &'static str = "ur_adamw_config";
}

impl Config for ur_adamw_config {
    fn default_value() -> Self {
        let d = AdamWConfig::default();
        ur_adamw_config {
            struct_size: size_of_u32::<Self>(),
            schedule: UR_SCHEDULE_CONSTANT,
            lr: d.lr,
            beta1: d.betas.0,
            beta2: d.betas.1,
            eps: d.eps,
            weight_decay: d.weight_decay,
            max_grad_norm: 0.0,
            warmup_steps: 0,
            total_steps: 0,
            error_if_nonfinite: 0,
            reserved: 0,
        }
    }
}

/// The defaults of `ur_adamw_config` (torch.optim.AdamW's, no clipping, a constant learning rate).
#[no_mangle]
pub extern "C" fn ur_adamw_config_default() -> ur_adamw_config {
    ur_adamw_config::default_value()
}

impl ur_adamw_config {
    fn to_rust(self) -> FfiResult<AdamWConfig> {
        if self.reserved != 0 {
            return Err(Failure::invalid("`ur_adamw_config.reserved` must be 0"));
        }
        let kind = context::code("schedule", self.schedule, &SCHEDULES)?;
        let size = |name: &str, v: u64| {
            usize::try_from(v).map_err(|_| Failure::invalid(format!("`{name}` = {v} does not fit in memory")))
        };
        Ok(AdamWConfig {
            lr: self.lr,
            betas: (self.beta1, self.beta2),
            eps: self.eps,
            weight_decay: self.weight_decay,
            max_grad_norm: (self.max_grad_norm != 0.0).then_some(self.max_grad_norm),
            error_if_nonfinite: self.error_if_nonfinite != 0,
            schedule: Schedule {
                kind,
                warmup_steps: size("warmup_steps", self.warmup_steps)?,
                total_steps: size("total_steps", self.total_steps)?,
            },
        })
    }
}

/// What `ur_adamw_step` reports. Set `struct_size = sizeof(ur_adamw_step_report)` before the call.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, NoUninit)]
pub struct ur_adamw_step_report {
    /// `sizeof(ur_adamw_step_report)`, set by the caller.
    pub struct_size: u32,
    /// Written 0 (keeps the struct free of padding).
    pub reserved: u32,
    /// Steps done, this one included.
    pub step: u64,
    /// This step's learning rate (the config's `lr` times the schedule's factor).
    pub lr: f64,
    /// The gradients' global L2 norm before clipping; NaN when clipping is off.
    pub grad_norm: f64,
    /// The factor the gradients were scaled by (1 without clipping).
    pub clip_coef: f64,
}

impl Versioned for ur_adamw_step_report {
    const NAME: &'static str = "ur_adamw_step_report";
}

/// AdamW over a fixed list of parameters (each its own state: two fp32 moments, and an fp32 master for a bf16/f16
/// parameter). Opaque; create it with `ur_adamw_create`, free it with `ur_adamw_free`; one thread at a time.
#[allow(non_camel_case_types)]
pub struct ur_adamw {
    magic: u64,
    opt: AdamW,
    /// The names the optimizer knows its parameters by (`name_<i>` when the caller gave none).
    names: Vec<String>,
    device: Device,
}

/// The `count` descriptors of the DLTensor array `list`.
///
/// # Safety
/// `list` is NULL (an error unless `count` is 0) or points to `count` readable DLTensors.
unsafe fn descs(name: &'static str, list: *const DLTensor, count: usize) -> FfiResult<Vec<Desc>> {
    if list.is_null() {
        return Err(Failure::null(name));
    }
    // SAFETY: this function's contract; each element is a readable DLTensor.
    (0..count).map(|i| unsafe { Desc::required(name, list.add(i)) }).collect()
}

/// Every parameter (written in place) is memory of its own: it overlaps no other parameter and no gradient.
fn check_params_separate(params: &[Desc], grads: &[Desc]) -> FfiResult {
    let listed = params.iter().enumerate().map(|(i, d)| (format!("params[{i}]"), d));
    let all: Vec<(String, &Desc)> =
        listed.chain(grads.iter().enumerate().map(|(i, d)| (format!("grads[{i}]"), d))).collect();
    for (i, (name, p)) in all.iter().enumerate().take(params.len()) {
        if let Some((other, _)) = all.iter().enumerate().find(|&(j, (_, d))| j != i && p.overlaps(d)).map(|(_, x)| x) {
            return Err(Failure::invalid(format!("`{name}` overlaps `{other}`: a parameter must be separate memory")));
        }
    }
    Ok(())
}

/// Creates an optimizer for the `count` parameters of `params` (a DLTensor array: float32/bfloat16/float16,
/// row-major, all on one device), named by `names` (`count` NUL-terminated UTF-8 strings, or NULL for `name_0`,
/// `name_1`, ...), with `config` (NULL = defaults), into `*out`. The moments start at zero; the masters of bf16/f16
/// parameters are copied from them. Synchronises: the parameters must be ready (on CUDA, wait for the stream that
/// wrote them first). On failure `*out` is left unchanged.
///
/// # Safety
/// `ctx` comes from `ur_context_create`; `params` points to `count` DLTensors describing memory valid for its extent;
/// `names` is NULL or points to `count` NUL-terminated strings; `config` is NULL or a readable `ur_adamw_config`;
/// `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ur_adamw_create(
    ctx: *mut ur_context,
    params: *const DLTensor,
    names: *const *const c_char,
    count: usize,
    config: *const ur_adamw_config,
    out: *mut *mut ur_adamw,
) -> ur_status {
    // SAFETY (whole body): this function's contract, passed on to the helpers that read the pointers.
    call(|| unsafe {
        context::check(ctx)?;
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        let config = read_config(config)?.to_rust()?;
        let list = descs("params", params, count)?;
        let names: Vec<String> = (0..count)
            .map(|i| {
                if names.is_null() {
                    return Ok(format!("name_{i}"));
                }
                let p = *names.add(i);
                if p.is_null() {
                    return Err(Failure::null(&format!("names[{i}]")));
                }
                CStr::from_ptr(p)
                    .to_str()
                    .map(str::to_owned)
                    .map_err(|_| Failure::invalid(format!("`names[{i}]` is not UTF-8")))
            })
            .collect::<FfiResult<_>>()?;
        let tensors = list.iter().map(|d| d.tensor()).collect::<FfiResult<Vec<Tensor>>>()?;
        let named: Vec<(String, &Tensor)> = names.iter().cloned().zip(&tensors).collect();
        let opt = AdamW::new(&named, vec![], config)?;
        let device = list.first().map_or(Device::Cpu, |d| d.device);
        if let Device::Cuda(ordinal) = device {
            // The masters were copied on the library's own stream; the steps run on the callers' streams.
            cuda::backend(ordinal)?.synchronize()?;
        }
        *out = Box::into_raw(Box::new(ur_adamw { magic: MAGIC, opt, names, device }));
        Ok(())
    })
}

/// One step: `grads[i]` (a DLTensor array, any float dtype, each the shape of its parameter) updates `params[i]` in
/// place, both arrays of the `count` parameters the optimizer was created with, in that order, on its device
/// (every check done before anything is written). `report` is NULL or receives the step's learning rate, norm and
/// clipping factor. With clipping on CUDA, the call waits for its norm; otherwise it does not synchronise.
///
/// # Safety
/// `ctx` comes from `ur_context_create`, `opt` from `ur_adamw_create` (used by this thread only); `params` and
/// `grads` point to `count` DLTensors describing memory valid for its extent (parameters writable, no overlaps);
/// `report` is NULL or a writable `ur_adamw_step_report`; `stream` is NULL or a valid stream of the device.
#[no_mangle]
pub unsafe extern "C" fn ur_adamw_step(
    ctx: *mut ur_context,
    opt: *mut ur_adamw,
    params: *const DLTensor,
    grads: *const DLTensor,
    count: usize,
    report: *mut ur_adamw_step_report,
    stream: *mut c_void,
) -> ur_status {
    // SAFETY (whole body): this function's contract, passed on to the helpers that read the pointers.
    call(|| unsafe {
        context::check(ctx)?;
        let h = live(opt)?;
        if count != h.names.len() {
            return Err(Failure::invalid(format!(
                "`count` is {count}, the optimizer was created with {} parameters",
                h.names.len()
            )));
        }
        let report = HostOut::versioned("report", report)?;
        let (p, g) = (descs("params", params, count)?, descs("grads", grads, count)?);
        check_params_separate(&p, &g)?;
        let all: Vec<Option<&Desc>> = p.iter().chain(&g).map(Some).collect();
        if let Some(d) = p.first().filter(|d| d.device != h.device) {
            return Err(Failure::invalid(format!("`params` are on {}, the optimizer on {}", d.device, h.device)));
        }
        let done = on_device(&all, stream, || {
            let mut params = p.iter().map(|d| d.tensor()).collect::<FfiResult<Vec<Tensor>>>()?;
            let grads = g.iter().map(|d| d.tensor()).collect::<FfiResult<Vec<Tensor>>>()?;
            let mut named: Vec<(String, &mut Tensor)> = h.names.iter().cloned().zip(params.iter_mut()).collect();
            let named_grads: Vec<(String, &Tensor)> = h.names.iter().cloned().zip(&grads).collect();
            Ok(h.opt.step(&mut named, &named_grads)?)
        })?;
        if let Some(out) = report {
            out.write(ur_adamw_step_report {
                struct_size: size_of_u32::<ur_adamw_step_report>(),
                reserved: 0,
                step: done.step,
                lr: done.lr,
                grad_norm: done.grad_norm.unwrap_or(f64::NAN),
                clip_coef: done.clip_coef,
            });
        }
        Ok(())
    })
}

/// Frees an optimizer and its state. NULL is accepted and does nothing.
///
/// # Safety
/// `opt` is NULL or a pointer returned by `ur_adamw_create`, not yet freed, and no call is using it.
#[no_mangle]
pub unsafe extern "C" fn ur_adamw_free(opt: *mut ur_adamw) {
    if opt.is_null() {
        return;
    }
    // A panic while dropping must not cross into C: the memory is then leaked instead.
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: this function's contract: `opt` came from `Box::into_raw` in `ur_adamw_create`.
        let mut opt = unsafe { Box::from_raw(opt) };
        opt.magic = 0;
    });
}

/// The live optimizer behind `opt` (NULL and freed handles are errors).
///
/// # Safety
/// `opt` is NULL or a pointer returned by `ur_adamw_create`, used by this thread only.
unsafe fn live<'a>(opt: *mut ur_adamw) -> FfiResult<&'a mut ur_adamw> {
    // SAFETY: this function's contract.
    match unsafe { opt.as_mut() } {
        None => Err(Failure::null("opt")),
        Some(h) if h.magic == MAGIC => Ok(h),
        Some(_) => Err(Failure::invalid("`opt` is not a live ur_adamw")),
    }
}

/// The sizes of the optimizer's state, for `ur_adamw_get_state` / `ur_adamw_set_state`: `*moments` elements in each
/// of `exp_avg` and `exp_avg_sq` (every parameter's, in creation order) and `*masters` in `master` (the fp32 masters
/// of the bf16/f16 parameters, in creation order; 0 when all are f32), and the steps done in `*step`. Each output
/// pointer may be NULL.
///
/// # Safety
/// `ctx` comes from `ur_context_create`, `opt` from `ur_adamw_create` (used by this thread only); each output is NULL
/// or writable.
#[no_mangle]
pub unsafe extern "C" fn ur_adamw_state_numel(
    ctx: *mut ur_context,
    opt: *mut ur_adamw,
    moments: *mut u64,
    masters: *mut u64,
    step: *mut u64,
) -> ur_status {
    // SAFETY (whole body): this function's contract, passed on to the helpers that read the pointers.
    call(|| unsafe {
        context::check(ctx)?;
        let state = live(opt)?.opt.state();
        for (out, value) in
            [(moments, state.exp_avg.numel()), (masters, state.master.numel()), (step, state.step as usize)]
        {
            if let Some(out) = out.as_mut() {
                *out = value as u64;
            }
        }
        Ok(())
    })
}

/// Copies the optimizer's state into `exp_avg_out`, `exp_avg_sq_out` (float32, shape `[moments]`) and `master_out`
/// (float32, shape `[masters]`; may be NULL when `masters` is 0), on the optimizer's device, and its steps done into
/// `*step_out` (may be NULL): with `ur_adamw_set_state`, a checkpoint of the training loop. Every output is checked before any is
/// written.
///
/// # Safety
/// `ctx` comes from `ur_context_create`, `opt` from `ur_adamw_create` (used by this thread only); each DLTensor is NULL
/// where allowed or describes writable memory valid for its extent; `step_out` is NULL or writable; `stream` is NULL or a
/// valid stream of the device.
#[no_mangle]
pub unsafe extern "C" fn ur_adamw_get_state(
    ctx: *mut ur_context,
    opt: *mut ur_adamw,
    exp_avg_out: *const DLTensor,
    exp_avg_sq_out: *const DLTensor,
    master_out: *const DLTensor,
    step_out: *mut u64,
    stream: *mut c_void,
) -> ur_status {
    // SAFETY (whole body): this function's contract, passed on to the helpers that read the pointers.
    call(|| unsafe {
        context::check(ctx)?;
        let h = live(opt)?;
        let outputs = [exp_avg_out, exp_avg_sq_out, master_out];
        let descs = StateDescs::read(h, outputs, ["exp_avg_out", "exp_avg_sq_out", "master_out"])?;
        let state = h.opt.state();
        on_device(&descs.all(), stream, || {
            write_outputs(&[
                (Some(&descs.exp_avg), state.exp_avg),
                (Some(&descs.exp_avg_sq), state.exp_avg_sq),
                (descs.master.as_ref(), state.master),
            ])
        })?;
        if let Some(out) = step_out.as_mut() {
            *out = state.step;
        }
        Ok(())
    })
}

/// Restores a state written by `ur_adamw_get_state` of an optimizer over the same parameters (same names, dtypes and
/// shapes, in the same order): the moments, the masters and `step` (the schedule goes on from it). Every input is
/// checked before anything is copied. The parameters themselves are the caller's to restore.
///
/// # Safety
/// As for `ur_adamw_get_state`, the DLTensors readable.
#[no_mangle]
pub unsafe extern "C" fn ur_adamw_set_state(
    ctx: *mut ur_context,
    opt: *mut ur_adamw,
    exp_avg: *const DLTensor,
    exp_avg_sq: *const DLTensor,
    master: *const DLTensor,
    step: u64,
    stream: *mut c_void,
) -> ur_status {
    // SAFETY (whole body): this function's contract, passed on to the helpers that read the pointers.
    call(|| unsafe {
        context::check(ctx)?;
        let h = live(opt)?;
        let descs = StateDescs::read(h, [exp_avg, exp_avg_sq, master], ["exp_avg", "exp_avg_sq", "master"])?;
        let empty = Tensor::zeros(&[0], DType::F32, h.device)?;
        on_device(&descs.all(), stream, || {
            let (m, v) = (descs.exp_avg.tensor()?, descs.exp_avg_sq.tensor()?);
            let w = descs.master.as_ref().map(|d| d.tensor()).transpose()?;
            Ok(h.opt.load_state(step, &m, &v, w.as_ref().unwrap_or(&empty))?)
        })
    })
}

/// The three state buffers of a get/set call, checked against the optimizer's: float32, its shapes, its device.
struct StateDescs {
    exp_avg: Desc,
    exp_avg_sq: Desc,
    master: Option<Desc>,
}

impl StateDescs {
    /// The descriptors `ptrs` (exp_avg, exp_avg_sq, master), named `names` in errors.
    ///
    /// # Safety
    /// Each pointer is NULL or points to a readable DLTensor.
    unsafe fn read(h: &ur_adamw, ptrs: [*const DLTensor; 3], names: [&'static str; 3]) -> FfiResult<StateDescs> {
        let state = h.opt.state();
        // SAFETY: this function's contract.
        let (m, v, w) = unsafe {
            (Desc::required(names[0], ptrs[0])?, Desc::required(names[1], ptrs[1])?, Desc::optional(names[2], ptrs[2])?)
        };
        if w.is_none() && state.master.numel() > 0 {
            return Err(Failure::null(names[2]));
        }
        for (d, want) in [(Some(&m), state.exp_avg), (Some(&v), state.exp_avg_sq), (w.as_ref(), state.master)] {
            let Some(d) = d else { continue };
            if d.device != h.device || d.dtype != DType::F32 || d.shape != want.shape() {
                return Err(Failure::invalid(format!(
                    "`{}` is a {:?} {} tensor on {}: this optimizer's is {:?} float32 on {}",
                    d.name,
                    d.shape,
                    d.dtype,
                    d.device,
                    want.shape(),
                    h.device
                )));
            }
        }
        Ok(StateDescs { exp_avg: m, exp_avg_sq: v, master: w })
    }

    fn all(&self) -> Vec<Option<&Desc>> {
        vec![Some(&self.exp_avg), Some(&self.exp_avg_sq), self.master.as_ref()]
    }
}
