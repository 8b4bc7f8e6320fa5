//! What the C ABI of the trainers stepped on the caller's records (`ur_sft_trainer_*`, `ur_dpo_trainer_*`) shares:
//! their configuration and the reading of a step's records.

use std::ffi::c_char;
use std::path::{Path, PathBuf};

use super::context::ur_context;
use super::context::{self, array, optional_text, size_of_u32, text, Config, Versioned};
use super::dlpack::{device_of, dl_device, DLDevice};
use super::optim::{SCHEDULES, UR_SCHEDULE_COSINE};
use super::status::{call, ur_status, Failure, FfiResult};
use crate::train::run::StepOptions;

/// Configuration of the trainers stepped on the caller's records (`ur_sft_trainer_create`, `ur_dpo_trainer_create`):
/// the optimizer and data settings of `unireward train-judge` / `unireward dpo`. Initialise it with
/// `ur_trainer_config_default()`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ur_trainer_config {
    /// `sizeof(ur_trainer_config)`.
    pub struct_size: u32,
    /// `UR_SCHEDULE_CONSTANT`, `UR_SCHEDULE_LINEAR` or `UR_SCHEDULE_COSINE` (default).
    pub schedule: i32,
    /// Learning rate, finite and >= 0 (default 1e-5).
    pub lr: f64,
    /// Decoupled weight decay, >= 0 (default 0).
    pub weight_decay: f64,
    /// Clip the gradients' global L2 norm to this (default 1); 0 turns clipping off.
    pub max_grad_norm: f64,
    /// `ceil(total_steps · warmup_ratio)` linear warm-up steps, in [0, 1] (default 0.03).
    pub warmup_ratio: f64,
    /// Optimizer steps the schedule spans; must be set (>= 1). A step past it is refused.
    pub total_steps: u64,
    /// A record of more tokens is refused (default 2048).
    pub max_len: u64,
    /// The folder the records' media paths are relative to; NULL: the current directory.
    pub media_folder: *const c_char,
    /// `num_freeze` NUL-terminated strings: parameters left untrained, as `--freeze` names them (`vision`,
    /// `projector`, or a fragment of a parameter name); NULL when `num_freeze` is 0.
    pub freeze: *const *const c_char,
    pub num_freeze: usize,
    /// Where the model is loaded (in float32; default the CPU).
    pub device: DLDevice,
    /// Frames sampled from each video of a LLaVA-OneVision checkpoint (default 8).
    pub video_frames: u32,
    /// Must be 0.
    pub reserved: u32,
    /// A checkpoint folder the trainer's `save` wrote, to continue from (NULL: a fresh start from the model
    /// folder): its weights, optimizer state and step; the trainer must be created with the same settings
    /// (`total_steps` is checked). The model folder still gives the tokenizer and, for DPO, the reference.
    pub resume_from: *const c_char,
}

impl Versioned for ur_trainer_config {
    const NAME: &'static str = "ur_trainer_config";
}

impl Config for ur_trainer_config {
    fn default_value() -> Self {
        let d = StepOptions::default();
        ur_trainer_config {
            struct_size: size_of_u32::<Self>(),
            schedule: UR_SCHEDULE_COSINE,
            lr: d.lr,
            weight_decay: d.weight_decay,
            max_grad_norm: d.max_grad_norm.unwrap_or(0.0),
            warmup_ratio: d.warmup_ratio,
            total_steps: 0,
            max_len: d.max_len as u64,
            media_folder: std::ptr::null(),
            freeze: std::ptr::null(),
            num_freeze: 0,
            device: dl_device(d.device),
            video_frames: d.video_frames as u32,
            reserved: 0,
            resume_from: std::ptr::null(),
        }
    }
}

/// The defaults of `ur_trainer_config` (`unireward train-judge`'s; `total_steps` still to set).
#[no_mangle]
pub extern "C" fn ur_trainer_config_default() -> ur_trainer_config {
    ur_trainer_config::default_value()
}

impl ur_trainer_config {
    /// # Safety
    /// The strings and the array the struct points to are NULL or valid, as its fields say.
    pub(super) unsafe fn to_rust(self) -> FfiResult<StepOptions> {
        if self.reserved != 0 {
            return Err(Failure::invalid("`ur_trainer_config.reserved` must be 0"));
        }
        let size = |name: &str, v: u64| {
            usize::try_from(v).map_err(|_| Failure::invalid(format!("`{name}` = {v} does not fit in memory")))
        };
        // SAFETY: this function's contract.
        let media_folder = unsafe { optional_text("media_folder", self.media_folder) }?.unwrap_or_else(|| ".".into());
        // SAFETY: this function's contract.
        let resume_from = unsafe { optional_text("resume_from", self.resume_from) }?.map(PathBuf::from);
        // SAFETY: this function's contract.
        let freeze = unsafe { array("freeze", self.freeze, self.num_freeze) }?
            .iter()
            .enumerate()
            // SAFETY: this function's contract: each entry is a NUL-terminated string.
            .map(|(i, &s)| unsafe { text(&format!("freeze[{i}]"), s) })
            .collect::<FfiResult<_>>()?;
        Ok(StepOptions {
            lr: self.lr,
            weight_decay: self.weight_decay,
            max_grad_norm: (self.max_grad_norm != 0.0).then_some(self.max_grad_norm),
            schedule: context::code("schedule", self.schedule, &SCHEDULES)?,
            warmup_ratio: self.warmup_ratio,
            total_steps: size("total_steps", self.total_steps)?,
            max_len: size("max_len", self.max_len)?,
            freeze,
            media_folder: PathBuf::from(media_folder),
            video_frames: self.video_frames as usize,
            device: device_of("device", self.device)?,
            resume_from,
        })
    }
}

/// A step's `count` records (`records`: NUL-terminated JSON strings), cut into micro-batches of `micro_batch_size`
/// consecutive records (0: one micro-batch of all).
///
/// # Safety
/// `records` is NULL or points to `count` NUL-terminated strings.
pub(super) unsafe fn read_records(
    records: *const *const c_char,
    count: usize,
    micro_batch_size: usize,
) -> FfiResult<Vec<Vec<String>>> {
    if count == 0 {
        return Err(Failure::invalid("`count` is 0: a step needs at least one record"));
    }
    // SAFETY: this function's contract.
    let texts: Vec<String> = unsafe { array("records", records, count) }?
        .iter()
        .enumerate()
        // SAFETY: this function's contract: each entry is a NUL-terminated string.
        .map(|(i, &s)| unsafe { text(&format!("records[{i}]"), s) })
        .collect::<FfiResult<_>>()?;
    let per_batch = if micro_batch_size == 0 { count } else { micro_batch_size };
    Ok(texts.chunks(per_batch).map(<[String]>::to_vec).collect())
}

/// Borrowed views of [`read_records`]'s micro-batches, as the trainers take them.
pub(super) fn as_strs(micro: &[Vec<String>]) -> Vec<Vec<&str>> {
    micro.iter().map(|batch| batch.iter().map(String::as_str).collect()).collect()
}

/// What the opaque handles of the trainers stepped on records share: a magic number that tells a live handle from
/// garbage (a freed or never-created pointer is still undefined behaviour), the trainer behind it, and its save.
pub(super) trait TrainerHandle: Sized + 'static {
    type Trainer;
    /// The C type's name, for errors.
    const NAME: &'static str;
    fn new(trainer: Self::Trainer) -> Self;
    /// Whether the magic number is the live one.
    fn is_live(&self) -> bool;
    /// Clears the magic number (before the handle is freed).
    fn retire(&mut self);
    fn trainer(&mut self) -> &mut Self::Trainer;
    /// Writes `out/checkpoint-<step>/`.
    fn save(trainer: &Self::Trainer, out: &Path) -> crate::Result<PathBuf>;
}

/// `TrainerHandle` for an opaque handle struct `{ magic: u64, trainer: $trainer }` whose live magic is `MAGIC`.
macro_rules! trainer_handle {
    ($handle:ident, $trainer:ty) => {
        impl super::trainer::TrainerHandle for $handle {
            type Trainer = $trainer;
            const NAME: &'static str = stringify!($handle);
            fn new(trainer: $trainer) -> Self {
                $handle { magic: MAGIC, trainer }
            }
            fn is_live(&self) -> bool {
                self.magic == MAGIC
            }
            fn retire(&mut self) {
                self.magic = 0;
            }
            fn trainer(&mut self) -> &mut $trainer {
                &mut self.trainer
            }
            fn save(trainer: &$trainer, out: &std::path::Path) -> crate::Result<std::path::PathBuf> {
                trainer.save(out)
            }
        }
    };
}
pub(super) use trainer_handle;

/// A new handle for `trainer`, into `*out` (NULL checked by the caller).
///
/// # Safety
/// `out` is writable.
pub(super) unsafe fn publish<H: TrainerHandle>(trainer: H::Trainer, out: *mut *mut H) {
    // SAFETY: this function's contract.
    unsafe { *out = Box::into_raw(Box::new(H::new(trainer))) };
}

/// The live trainer behind `handle`.
///
/// # Safety
/// `handle` is NULL or a pointer returned by its create function.
pub(super) unsafe fn live<'a, H: TrainerHandle>(handle: *mut H) -> FfiResult<&'a mut H::Trainer> {
    // SAFETY: this function's contract.
    match unsafe { handle.as_mut() } {
        None => Err(Failure::null("trainer")),
        Some(h) if h.is_live() => Ok(h.trainer()),
        Some(_) => Err(Failure::invalid(format!("`trainer` is not a live {}", H::NAME))),
    }
}

/// The body of `ur_*_trainer_save`: writes `out_dir/checkpoint-<step>/`.
///
/// # Safety
/// `ctx` comes from `ur_context_create`, `handle` from its create function; `out_dir` is NULL or a NUL-terminated
/// string.
pub(super) unsafe fn save<H: TrainerHandle>(ctx: *mut ur_context, handle: *mut H, out_dir: *const c_char) -> ur_status {
    // SAFETY (whole body): this function's contract, passed on to the helpers that read the pointers.
    call(|| unsafe {
        context::check(ctx)?;
        let trainer = live(handle)?;
        let dir = text("out_dir", out_dir)?;
        H::save(trainer, Path::new(&dir))?;
        Ok(())
    })
}

/// The body of `ur_*_trainer_free`. NULL is accepted and does nothing.
///
/// # Safety
/// `handle` is NULL or a pointer returned by its create function, not yet freed, and no call is using it.
pub(super) unsafe fn free<H: TrainerHandle>(handle: *mut H) {
    if handle.is_null() {
        return;
    }
    // A panic while dropping must not cross into C: the memory is then leaked instead. (The tokenizer's boxed
    // callbacks are not `UnwindSafe`; the handle is gone after the call, so nothing is observed after a panic.)
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: this function's contract: `handle` came from `Box::into_raw` in `publish`.
        let mut handle = unsafe { Box::from_raw(handle) };
        handle.retire();
    }));
}
