//! `ur_reward_trainer_*`: the scalar reward-model trainer (`train::reward::RewardRecordTrainer`) behind an opaque
//! handle, stepped on the caller's batches of pair or ranking records (JSON strings), so a loop in C, C++ or Python
//! trains a reward model.

use std::ffi::c_char;
use std::path::Path;

use bytemuck::NoUninit;

use super::context::{self, read_config, size_of_u32, text, ur_context, Config, Versioned};
use super::host_out::HostOut;
use super::status::{call, ur_status, Failure, FfiResult};
use super::trainer::{as_strs, free, live, publish, read_records, save, trainer_handle, ur_trainer_config};
use crate::ops::preference::KwiseMethod;
use crate::train::reward::{RewardLoss, RewardRecordTrainer};

/// Tells a live trainer from garbage (a freed or never-created pointer is still undefined behaviour).
const MAGIC: u64 = 0x7572_5f72_776d_0001; // "ur_rwm" v1

/// Bradley–Terry on pairs (TRL's RewardTrainer): records hold `prompt`, `chosen`, `rejected` (optional `margin`).
pub const UR_REWARD_LOSS_BRADLEY_TERRY: i32 = 0;
/// Plackett–Luce on ranked lists: records hold `prompt` and `responses`, best first.
pub const UR_REWARD_LOSS_KWISE: i32 = 1;
/// Bradley–Terry over every pair of a ranked list.
pub const UR_REWARD_LOSS_KWISE_ALL_PAIRS: i32 = 2;

/// The loss of `ur_reward_trainer_create`. Initialise it with `ur_reward_loss_config_default()`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ur_reward_loss_config {
    /// `sizeof(ur_reward_loss_config)`.
    pub struct_size: u32,
    /// `UR_REWARD_LOSS_BRADLEY_TERRY` (default), `UR_REWARD_LOSS_KWISE` or `UR_REWARD_LOSS_KWISE_ALL_PAIRS`.
    pub loss: i32,
    /// Bradley–Terry only: TRL's `center_rewards_coefficient` (adds `c·mean((r_chosen + r_rejected)²)`), finite and
    /// > 0; 0 (default) turns it off.
    pub center_rewards_coefficient: f64,
}

impl Versioned for ur_reward_loss_config {
    const NAME: &'static str = "ur_reward_loss_config";
}

impl Config for ur_reward_loss_config {
    fn default_value() -> Self {
        ur_reward_loss_config {
            struct_size: size_of_u32::<Self>(),
            loss: UR_REWARD_LOSS_BRADLEY_TERRY,
            center_rewards_coefficient: 0.0,
        }
    }
}

/// The defaults of `ur_reward_loss_config` (Bradley–Terry, no centring).
#[no_mangle]
pub extern "C" fn ur_reward_loss_config_default() -> ur_reward_loss_config {
    ur_reward_loss_config::default_value()
}

impl ur_reward_loss_config {
    fn to_rust(self) -> FfiResult<RewardLoss> {
        let c = self.center_rewards_coefficient;
        if !(c.is_finite() && c >= 0.0) {
            return Err(Failure::invalid(format!("`center_rewards_coefficient` must be finite and >= 0, got {c}")));
        }
        let center = (c > 0.0).then_some(c as f32);
        Ok(match self.loss {
            UR_REWARD_LOSS_BRADLEY_TERRY => RewardLoss::BradleyTerry { center_rewards_coefficient: center },
            UR_REWARD_LOSS_KWISE | UR_REWARD_LOSS_KWISE_ALL_PAIRS if center.is_some() => {
                return Err(Failure::invalid("`center_rewards_coefficient` is a Bradley–Terry option"))
            }
            UR_REWARD_LOSS_KWISE => RewardLoss::Kwise(KwiseMethod::PlackettLuce),
            UR_REWARD_LOSS_KWISE_ALL_PAIRS => RewardLoss::Kwise(KwiseMethod::AllPairs),
            other => return Err(Failure::invalid(format!("`loss` is {other}: use a UR_REWARD_LOSS_* code"))),
        })
    }
}

/// What `ur_reward_trainer_step` reports (the metrics `unireward train-reward` logs, TRL's). Set `struct_size =
/// sizeof(ur_reward_step_metrics)` before the call.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, NoUninit)]
pub struct ur_reward_step_metrics {
    /// `sizeof(ur_reward_step_metrics)`, set by the caller.
    pub struct_size: u32,
    /// Written 0 (keeps the struct free of padding).
    pub reserved: u32,
    /// Steps done, this one included.
    pub step: u64,
    /// Means over the step's groups (pairs or ranked lists), before the update: the loss, the share of pairs
    /// ordered as the data ranks them, the mean reward of the chosen (best) and rejected (worst) responses, and
    /// their mean difference.
    pub loss: f64,
    pub accuracy: f64,
    pub rewards_chosen: f64,
    pub rewards_rejected: f64,
    pub margin: f64,
    /// Groups of the step, and their real tokens.
    pub groups: u64,
    pub tokens: u64,
    /// The gradients' global L2 norm before clipping; NaN when clipping is off.
    pub grad_norm: f64,
    /// This step's learning rate.
    pub lr: f64,
}

impl Versioned for ur_reward_step_metrics {
    const NAME: &'static str = "ur_reward_step_metrics";
}

/// A reward-model trainer: a checkpoint's model in float32 with its `score.weight` head, AdamW state, loss and
/// tokenizer. Opaque; create it with `ur_reward_trainer_create`, free it with `ur_reward_trainer_free`; one thread
/// at a time.
#[allow(non_camel_case_types)]
pub struct ur_reward_trainer {
    magic: u64,
    trainer: RewardRecordTrainer,
}

trainer_handle!(ur_reward_trainer, RewardRecordTrainer);

/// Creates a reward-model trainer over the checkpoint folder `model_dir` (a Qwen2 or LLaVA-OneVision checkpoint, or
/// a reward checkpoint holding `score.weight`; a checkpoint without a head gets a fresh one) under `config` (NULL =
/// defaults, which lack `total_steps`: an error) and `loss` (NULL = Bradley–Terry), into `*out`. On failure `*out`
/// is left unchanged.
///
/// # Safety
/// `ctx` comes from `ur_context_create`; `model_dir` is NULL or a NUL-terminated string; `config` is NULL or a
/// readable `ur_trainer_config` whose pointers are NULL or valid; `loss` is NULL or a readable
/// `ur_reward_loss_config`; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ur_reward_trainer_create(
    ctx: *mut ur_context,
    model_dir: *const c_char,
    config: *const ur_trainer_config,
    loss: *const ur_reward_loss_config,
    out: *mut *mut ur_reward_trainer,
) -> ur_status {
    // SAFETY (whole body): this function's contract, passed on to the helpers that read the pointers.
    call(|| unsafe {
        context::check(ctx)?;
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        let dir = text("model_dir", model_dir)?;
        let options = read_config(config)?.to_rust()?;
        let loss = read_config(loss)?.to_rust()?;
        let trainer = RewardRecordTrainer::new(Path::new(&dir), loss, &options)?;
        publish(trainer, out);
        Ok(())
    })
}

/// One optimizer step on the `count` records of `records` (each one JSON object, as a line of a `train-reward`
/// data file: pairs for Bradley–Terry, ranked lists of one length for the K-wise losses; media paths relative to
/// the config's `media_folder`), cut into micro-batches of `micro_batch_size` consecutive records (the last may be
/// smaller; 0: one micro-batch of all) whose gradients are accumulated, as `train-reward --batch-size B
/// --grad-accum K` does with the same records in its batches. Every record is checked first: a bad one is
/// `UR_ERROR_INVALID_ARGUMENT` naming it (`micro_batches[i][j]`) and nothing is updated. `metrics` is NULL or
/// receives the step's metrics.
///
/// # Safety
/// `ctx` comes from `ur_context_create`, `trainer` from `ur_reward_trainer_create` (used by this thread only);
/// `records` points to `count` NUL-terminated strings; `metrics` is NULL or a writable `ur_reward_step_metrics`.
#[no_mangle]
pub unsafe extern "C" fn ur_reward_trainer_step(
    ctx: *mut ur_context,
    trainer: *mut ur_reward_trainer,
    records: *const *const c_char,
    count: usize,
    micro_batch_size: usize,
    metrics: *mut ur_reward_step_metrics,
) -> ur_status {
    // SAFETY (whole body): this function's contract, passed on to the helpers that read the pointers.
    call(|| unsafe {
        context::check(ctx)?;
        let trainer = live(trainer)?;
        let metrics = HostOut::versioned("metrics", metrics)?;
        let micro = read_records(records, count, micro_batch_size)?;
        let done = trainer.step(&as_strs(&micro))?;
        if let Some(out) = metrics {
            let m = done.metrics;
            out.write(ur_reward_step_metrics {
                struct_size: size_of_u32::<ur_reward_step_metrics>(),
                reserved: 0,
                step: done.step,
                loss: m.loss,
                accuracy: m.accuracy,
                rewards_chosen: m.rewards_chosen,
                rewards_rejected: m.rewards_rejected,
                margin: m.margin,
                groups: done.groups as u64,
                tokens: done.tokens as u64,
                grad_norm: done.grad_norm.unwrap_or(f64::NAN),
                lr: done.lr,
            });
        }
        Ok(())
    })
}

/// Writes `out_dir/checkpoint-<step>/` (`step`: the steps done) as `unireward train-reward` does: the weights in
/// the source checkpoint's layout with `score.weight` beside them (a Qwen2 one under a
/// `Qwen2ForSequenceClassification` config, which transformers loads), its tokenizer files, and `trainer_state/`
/// (the AdamW moments and fp32 masters, the step), atomically; an existing checkpoint of that step is replaced. It
/// holds no data-loader position, so `train-reward --resume` refuses it; `resume_from` takes it.
///
/// # Safety
/// `ctx` comes from `ur_context_create`, `trainer` from `ur_reward_trainer_create`; `out_dir` is NULL or a
/// NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn ur_reward_trainer_save(
    ctx: *mut ur_context,
    trainer: *mut ur_reward_trainer,
    out_dir: *const c_char,
) -> ur_status {
    // SAFETY: this function's contract.
    unsafe { save(ctx, trainer, out_dir) }
}

/// Frees a trainer. NULL is accepted and does nothing.
///
/// # Safety
/// `trainer` is NULL or a pointer returned by `ur_reward_trainer_create`, not yet freed, and no call is using it.
#[no_mangle]
pub unsafe extern "C" fn ur_reward_trainer_free(trainer: *mut ur_reward_trainer) {
    // SAFETY: this function's contract.
    unsafe { free(trainer) }
}
