//! `ur_dpo_trainer_*`: the DPO trainer (`train::dpo::DpoRecordTrainer`) behind an opaque handle, stepped on the
//! caller's batches of preference-pair records (JSON strings), so a loop in C, C++ or Python drives alignment.

use std::ffi::c_char;
use std::path::{Path, PathBuf};

use bytemuck::NoUninit;

use super::context::{self, optional_text, read_config, size_of_u32, text, ur_context, Versioned};
use super::host_out::HostOut;
use super::preference::ur_dpo_config;
use super::status::{call, ur_status, Failure, FfiResult};
use super::trainer::{as_strs, free, live, publish, read_records, save, trainer_handle, ur_trainer_config};
use crate::train::dpo::DpoRecordTrainer;

/// Tells a live trainer from garbage (a freed or never-created pointer is still undefined behaviour).
const MAGIC: u64 = 0x7572_5f64_706f_0001; // "ur_dpo" v1

/// What `ur_dpo_trainer_step` reports (the metrics `unireward dpo` logs, TRL's). Set `struct_size =
/// sizeof(ur_dpo_step_metrics)` before the call.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, NoUninit)]
pub struct ur_dpo_step_metrics {
    /// `sizeof(ur_dpo_step_metrics)`, set by the caller.
    pub struct_size: u32,
    /// Written 0 (keeps the struct free of padding).
    pub reserved: u32,
    /// Steps done, this one included.
    pub step: u64,
    /// The loss before the update: the mean over the step's pairs.
    pub loss: f64,
    /// Pairs of the step, and their labelled completion tokens (chosen and rejected).
    pub pairs: u64,
    pub tokens: u64,
    /// The gradients' global L2 norm before clipping; NaN when clipping is off.
    pub grad_norm: f64,
    /// This step's learning rate.
    pub lr: f64,
    /// TRL's `rewards/chosen`, `rewards/rejected`, `rewards/accuracies`, `rewards/margins`, `logps/chosen`,
    /// `logps/rejected`: means over the step's pairs.
    pub rewards_chosen: f32,
    pub rewards_rejected: f32,
    pub rewards_accuracies: f32,
    pub rewards_margins: f32,
    pub logps_chosen: f32,
    pub logps_rejected: f32,
}

impl Versioned for ur_dpo_step_metrics {
    const NAME: &'static str = "ur_dpo_step_metrics";
}

/// A DPO trainer: a policy in float32 with its AdamW state, its loss, a frozen reference when the loss needs one,
/// and the tokenizer. Opaque; create it with `ur_dpo_trainer_create`, free it with `ur_dpo_trainer_free`; one thread
/// at a time.
#[allow(non_camel_case_types)]
pub struct ur_dpo_trainer {
    magic: u64,
    trainer: DpoRecordTrainer,
}

trainer_handle!(ur_dpo_trainer, DpoRecordTrainer);

/// The loss of a trainer: a `ur_dpo_config` (NULL: TRL's defaults) whose per-call tensors (`pair_weights`, the
/// LD-DPO parts, `losses_out`) are NULL — the trainer computes its log-probs itself.
///
/// # Safety
/// `loss` is NULL or a readable `ur_dpo_config` whose pointers are NULL or valid.
unsafe fn read_loss(loss: *const ur_dpo_config) -> FfiResult<crate::ops::preference::DpoConfig> {
    // SAFETY: this function's contract.
    let c = unsafe { read_config(loss) }?;
    let tensors = [
        ("pair_weights", c.pair_weights),
        ("policy_chosen_verbose", c.policy_chosen_verbose),
        ("policy_rejected_verbose", c.policy_rejected_verbose),
        ("grad_policy_chosen_verbose_out", c.grad_policy_chosen_verbose_out),
        ("grad_policy_rejected_verbose_out", c.grad_policy_rejected_verbose_out),
        ("losses_out", c.losses_out),
    ];
    if let Some((name, _)) = tensors.iter().find(|(_, t)| !t.is_null()) {
        return Err(Failure::invalid(format!("`loss->{name}` must be NULL: the trainer takes no per-call tensors")));
    }
    // SAFETY: this function's contract (`loss_types` and `loss_weights` as the struct says).
    unsafe { c.to_config() }
}

/// Creates a DPO trainer over the policy checkpoint `policy_dir` (config, weights, tokenizer files, chat template;
/// Qwen2 or LLaVA-OneVision), with the reference from `reference_dir` (NULL: a frozen copy of the policy as it
/// starts; not loaded when the loss needs none), under `config` (NULL = defaults, which lack `total_steps`: an
/// error) and `loss` (NULL = TRL's defaults: sigmoid, beta 0.1), into `*out`. On failure `*out` is left unchanged.
///
/// # Safety
/// `ctx` comes from `ur_context_create`; `policy_dir` and `reference_dir` are NULL or NUL-terminated strings;
/// `config` is NULL or a readable `ur_trainer_config`, `loss` NULL or a readable `ur_dpo_config`, whose pointers are
/// NULL or valid; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ur_dpo_trainer_create(
    ctx: *mut ur_context,
    policy_dir: *const c_char,
    reference_dir: *const c_char,
    config: *const ur_trainer_config,
    loss: *const ur_dpo_config,
    out: *mut *mut ur_dpo_trainer,
) -> ur_status {
    // SAFETY (whole body): this function's contract, passed on to the helpers that read the pointers.
    call(|| unsafe {
        context::check(ctx)?;
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        let policy = text("policy_dir", policy_dir)?;
        let reference = optional_text("reference_dir", reference_dir)?.map(PathBuf::from);
        let options = read_config(config)?.to_rust()?;
        let loss = read_loss(loss)?;
        let trainer = DpoRecordTrainer::new(Path::new(&policy), reference.as_deref(), loss, &options)?;
        publish(trainer, out);
        Ok(())
    })
}

/// One optimizer step on the `count` pair records of `records` (each one JSON object with `prompt`, `chosen`,
/// `rejected` and optional media, as a line of a `unireward dpo` pair file), cut into micro-batches of
/// `micro_batch_size` consecutive records (the last may be smaller; 0: one micro-batch of all) whose gradients are
/// accumulated, as `unireward dpo --ref-on-the-fly` does with the same records in its batches. Every record is
/// checked first: a bad one is `UR_ERROR_INVALID_ARGUMENT` naming it (`micro_batches[i][j]`) and nothing is
/// updated. `metrics` is NULL or receives the step's metrics.
///
/// # Safety
/// `ctx` comes from `ur_context_create`, `trainer` from `ur_dpo_trainer_create` (used by this thread only);
/// `records` points to `count` NUL-terminated strings; `metrics` is NULL or a writable `ur_dpo_step_metrics`.
#[no_mangle]
pub unsafe extern "C" fn ur_dpo_trainer_step(
    ctx: *mut ur_context,
    trainer: *mut ur_dpo_trainer,
    records: *const *const c_char,
    count: usize,
    micro_batch_size: usize,
    metrics: *mut ur_dpo_step_metrics,
) -> ur_status {
    // SAFETY (whole body): this function's contract, passed on to the helpers that read the pointers.
    call(|| unsafe {
        context::check(ctx)?;
        let trainer = live(trainer)?;
        let metrics = HostOut::versioned("metrics", metrics)?;
        let micro = read_records(records, count, micro_batch_size)?;
        let done = trainer.step(&as_strs(&micro))?;
        if let Some(out) = metrics {
            let m = &done.metrics;
            out.write(ur_dpo_step_metrics {
                struct_size: size_of_u32::<ur_dpo_step_metrics>(),
                reserved: 0,
                step: done.step,
                loss: done.loss,
                pairs: done.pairs as u64,
                tokens: done.tokens as u64,
                grad_norm: done.grad_norm.unwrap_or(f64::NAN),
                lr: done.lr,
                rewards_chosen: m.rewards_chosen,
                rewards_rejected: m.rewards_rejected,
                rewards_accuracies: m.rewards_accuracies,
                rewards_margins: m.rewards_margins,
                logps_chosen: m.logps_chosen,
                logps_rejected: m.logps_rejected,
            });
        }
        Ok(())
    })
}

/// Writes `out_dir/checkpoint-<step>/` as `unireward dpo` does: the policy's weights in the source checkpoint's
/// layout with its config and tokenizer files, and `trainer_state/` (the AdamW state, the step, BCO's running
/// mean), atomically; without a data-loader position, so `unireward dpo --resume` refuses it.
///
/// # Safety
/// `ctx` comes from `ur_context_create`, `trainer` from `ur_dpo_trainer_create`; `out_dir` is NULL or a
/// NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn ur_dpo_trainer_save(
    ctx: *mut ur_context,
    trainer: *mut ur_dpo_trainer,
    out_dir: *const c_char,
) -> ur_status {
    // SAFETY: this function's contract.
    unsafe { save(ctx, trainer, out_dir) }
}

/// Frees a trainer. NULL is accepted and does nothing.
///
/// # Safety
/// `trainer` is NULL or a pointer returned by `ur_dpo_trainer_create`, not yet freed, and no call is using it.
#[no_mangle]
pub unsafe extern "C" fn ur_dpo_trainer_free(trainer: *mut ur_dpo_trainer) {
    // SAFETY: this function's contract.
    unsafe { free(trainer) }
}
