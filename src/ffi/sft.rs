//! `ur_sft_trainer_*`: the SFT trainer (`train::sft::SftRecordTrainer`) behind an opaque handle, stepped on the
//! caller's batches of conversation records (LLaVA JSON strings), so a loop in C, C++ or Python drives training.

use std::ffi::c_char;
use std::path::Path;

use bytemuck::NoUninit;

use super::context::{self, array, read_config, size_of_u32, text, ur_context, Versioned};
use super::host_out::HostOut;
use super::status::{call, ur_status, Failure, FfiResult};
use super::trainer::{as_strs, free, live, publish, read_records, save, trainer_handle, ur_trainer_config};
use crate::train::sft::SftRecordTrainer;

/// Tells a live trainer from garbage (a freed or never-created pointer is still undefined behaviour).
const MAGIC: u64 = 0x7572_5f73_6674_0001; // "ur_sft" v1

/// What `ur_sft_trainer_step` reports (the metrics `unireward train-judge` logs). Set `struct_size =
/// sizeof(ur_sft_step_metrics)` before the call.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, NoUninit)]
pub struct ur_sft_step_metrics {
    /// `sizeof(ur_sft_step_metrics)`, set by the caller.
    pub struct_size: u32,
    /// Written 0 (keeps the struct free of padding).
    pub reserved: u32,
    /// Steps done, this one included.
    pub step: u64,
    /// Mean next-token loss over the step's labelled tokens, before the update.
    pub loss: f64,
    /// Labelled tokens of the step (all micro-batches).
    pub tokens: u64,
    /// The gradients' global L2 norm before clipping; NaN when clipping is off.
    pub grad_norm: f64,
    /// This step's learning rate.
    pub lr: f64,
}

impl Versioned for ur_sft_step_metrics {
    const NAME: &'static str = "ur_sft_step_metrics";
}

/// An SFT trainer: a checkpoint's model in float32 with its AdamW state and tokenizer. Opaque; create it with
/// `ur_sft_trainer_create`, free it with `ur_sft_trainer_free`; one thread at a time.
#[allow(non_camel_case_types)]
pub struct ur_sft_trainer {
    magic: u64,
    trainer: SftRecordTrainer,
}

trainer_handle!(ur_sft_trainer, SftRecordTrainer);

/// Creates an SFT trainer over the checkpoint folder `model_dir` (config, weights, tokenizer files, chat template;
/// a Qwen2 or a LLaVA-OneVision one, with its `preprocessor_config.json`) under `config` (NULL = defaults, which
/// lack `total_steps`: an error), into `*out`. A missing or unreadable checkpoint is `UR_ERROR_CHECKPOINT` or
/// `UR_ERROR_INVALID_ARGUMENT` naming it. On failure `*out` is left unchanged.
///
/// # Safety
/// `ctx` comes from `ur_context_create`; `model_dir` is NULL or a NUL-terminated string; `config` is NULL or a
/// readable `ur_trainer_config` whose pointers are NULL or valid; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ur_sft_trainer_create(
    ctx: *mut ur_context,
    model_dir: *const c_char,
    config: *const ur_trainer_config,
    out: *mut *mut ur_sft_trainer,
) -> ur_status {
    // SAFETY (whole body): this function's contract, passed on to the helpers that read the pointers.
    call(|| unsafe {
        context::check(ctx)?;
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        let dir = text("model_dir", model_dir)?;
        let options = read_config(config)?.to_rust()?;
        let trainer = SftRecordTrainer::new(Path::new(&dir), &options)?;
        publish(trainer, out);
        Ok(())
    })
}

/// One optimizer step on the `count` conversation records of `records` (each one JSON object, as a line of a
/// `train-judge` data file; media paths relative to the config's `media_folder`), cut into micro-batches of
/// `micro_batch_size` consecutive records (the last may be smaller; 0: one micro-batch of all) whose gradients
/// are accumulated, as `train-judge --batch-size B --grad-accum K` does with the same records in its batches.
/// Every record is checked first: a bad one (not JSON, no assistant turn, a missing media file, too long) is
/// `UR_ERROR_INVALID_ARGUMENT` naming it (`micro_batches[i][j]`) and nothing is updated. `metrics` is NULL or
/// receives the step's metrics.
///
/// # Safety
/// `ctx` comes from `ur_context_create`, `trainer` from `ur_sft_trainer_create` (used by this thread only);
/// `records` points to `count` NUL-terminated strings; `metrics` is NULL or a writable `ur_sft_step_metrics`.
#[no_mangle]
pub unsafe extern "C" fn ur_sft_trainer_step(
    ctx: *mut ur_context,
    trainer: *mut ur_sft_trainer,
    records: *const *const c_char,
    count: usize,
    micro_batch_size: usize,
    metrics: *mut ur_sft_step_metrics,
) -> ur_status {
    // SAFETY (whole body): this function's contract, passed on to the helpers that read the pointers.
    call(|| unsafe {
        context::check(ctx)?;
        let trainer = live(trainer)?;
        let metrics = HostOut::versioned("metrics", metrics)?;
        let micro = read_records(records, count, micro_batch_size)?;
        let done = trainer.step(&as_strs(&micro))?;
        if let Some(out) = metrics {
            out.write(ur_sft_step_metrics {
                struct_size: size_of_u32::<ur_sft_step_metrics>(),
                reserved: 0,
                step: done.step,
                loss: done.loss,
                tokens: done.tokens as u64,
                grad_norm: done.grad_norm.unwrap_or(f64::NAN),
                lr: done.lr,
            });
        }
        Ok(())
    })
}

/// Names the tasks of the records later steps take (each record's `task` field, as in a `train-judge` data file):
/// every step then reports each task's mean loss over its labelled tokens (`ur_sft_trainer_task_losses`), and a
/// record of another task, or of none, is `UR_ERROR_INVALID_ARGUMENT` naming it. Without a call every record counts
/// as one task. The `count` names must be distinct and not empty; on error the trainer is unchanged.
///
/// # Safety
/// `ctx` comes from `ur_context_create`, `trainer` from `ur_sft_trainer_create` (used by this thread only); `tasks`
/// points to `count` NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn ur_sft_trainer_set_tasks(
    ctx: *mut ur_context,
    trainer: *mut ur_sft_trainer,
    tasks: *const *const c_char,
    count: usize,
) -> ur_status {
    // SAFETY (whole body): this function's contract, passed on to the helpers that read the pointers.
    call(|| unsafe {
        context::check(ctx)?;
        let trainer = live(trainer)?;
        let names: Vec<String> = array("tasks", tasks, count)?
            .iter()
            .enumerate()
            .map(|(i, &name)| text(&format!("tasks[{i}]"), name))
            .collect::<FfiResult<_>>()?;
        trainer.set_tasks(&names.iter().map(String::as_str).collect::<Vec<_>>())?;
        Ok(())
    })
}

/// Writes the last step's mean loss of each task named by `ur_sft_trainer_set_tasks`, in that order, into
/// `losses[0..count]` (NaN for a task none of whose tokens was in the step). `count` must be the number of tasks;
/// before the first step, or without a task list (one task: `count` = 1), it is an error and nothing is written.
///
/// # Safety
/// `ctx` comes from `ur_context_create`, `trainer` from `ur_sft_trainer_create` (used by this thread only);
/// `losses` is NULL or holds `count` writable doubles.
#[no_mangle]
pub unsafe extern "C" fn ur_sft_trainer_task_losses(
    ctx: *mut ur_context,
    trainer: *mut ur_sft_trainer,
    losses: *mut f64,
    count: usize,
) -> ur_status {
    // SAFETY (whole body): this function's contract.
    call(|| unsafe {
        context::check(ctx)?;
        let trainer = live(trainer)?;
        if losses.is_null() {
            return Err(Failure::null("losses"));
        }
        let last = trainer.last_task_loss();
        if last.is_empty() {
            return Err(Failure::invalid("no step yet: the task losses are a step's"));
        }
        if count != last.len() {
            return Err(Failure::invalid(format!("`count` is {count}; the trainer has {} tasks", last.len())));
        }
        let out = std::slice::from_raw_parts_mut(losses, count);
        for (o, loss) in out.iter_mut().zip(last) {
            *o = loss.unwrap_or(f64::NAN);
        }
        Ok(())
    })
}

/// Writes `out_dir/checkpoint-<step>/` (`step`: the steps done) as `unireward train-judge` does: the weights in the
/// source checkpoint's layout with its config and tokenizer files (transformers loads it), and `trainer_state/`
/// (the AdamW moments and fp32 masters, the step), atomically; an existing checkpoint of that step is replaced. It
/// holds no data-loader position, so `train-judge --resume` refuses it.
///
/// # Safety
/// `ctx` comes from `ur_context_create`, `trainer` from `ur_sft_trainer_create`; `out_dir` is NULL or a
/// NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn ur_sft_trainer_save(
    ctx: *mut ur_context,
    trainer: *mut ur_sft_trainer,
    out_dir: *const c_char,
) -> ur_status {
    // SAFETY: this function's contract.
    unsafe { save(ctx, trainer, out_dir) }
}

/// Frees a trainer. NULL is accepted and does nothing.
///
/// # Safety
/// `trainer` is NULL or a pointer returned by `ur_sft_trainer_create`, not yet freed, and no call is using it.
#[no_mangle]
pub unsafe extern "C" fn ur_sft_trainer_free(trainer: *mut ur_sft_trainer) {
    // SAFETY: this function's contract.
    unsafe { free(trainer) }
}
