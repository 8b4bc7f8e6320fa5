//! AdamW with decoupled weight decay, fused over all of a model's parameters: `torch.optim.AdamW`'s formulas
//! (bias-corrected, in fp32), with gradient clipping by global norm (`torch.nn.utils.clip_grad_norm_`), a
//! learning-rate schedule with warm-up ([`Schedule`]), gradient accumulation over micro-batches, parameter groups
//! with their own learning rate and weight decay, and frozen groups.
//!
//! The state is three flat fp32 buffers, llm.c style: the two moments of every trainable parameter, and the fp32
//! master weights of the bf16/f16 ones (a bf16 parameter is its master rounded to nearest after each step); the
//! accumulator, when used, is a fourth. Parameters and gradients stay in the model's own tensors and are passed to
//! each call as `(checkpoint name, tensor)` lists ([`Qwen2Weights::named_mut`](crate::model::qwen2::Qwen2Weights::named_mut),
//! [`LlavaOnevisionModel::named_parameters_mut`](crate::model::llava::LlavaOnevisionModel::named_parameters_mut) and
//! their gradients' `named`), matched by name to the layout the optimizer was built with. A step is one pass on
//! the CPU (rayon over chunks) and one kernel launch on CUDA (plus one for the clipping norm), and it checks every
//! argument before anything is written.

mod config;
mod cpu;
mod cuda;
mod layout;
mod schedule;

pub use config::{AdamWConfig, ParamGroup};
pub use schedule::{Schedule, ScheduleKind};

use crate::runtime::cuda::KernelModule;
use crate::runtime::{DType, Device, Tensor};
use crate::{Error, Result};
use layout::{Bound, Layout, Slot};

/// `kernels/adamw.cu`.
pub const KERNELS: KernelModule = crate::kernel_module!("adamw");

/// `clip_grad_norm_`'s guard against a zero norm.
const CLIP_EPS: f64 = 1e-6;

/// What one step did.
#[derive(Clone, Debug, PartialEq)]
pub struct StepReport {
    /// Steps done, this one included.
    pub step: u64,
    /// The schedule's multiplier of every group's learning rate for this step.
    pub lr_factor: f64,
    /// The default group's learning rate for this step (`lr · lr_factor`).
    pub lr: f64,
    /// The global L2 norm of the (accumulated, normalised) gradients before clipping, when clipping is on.
    pub grad_norm: Option<f64>,
    /// The factor the gradients were scaled by (`min(1, max_norm / (norm + 1e-6))`; 1 without clipping).
    pub clip_coef: f64,
}

/// The optimizer's state, for checkpoints: the step count and the flat fp32 buffers, each parameter at its place in
/// layout order ([`AdamW::state_layout`]).
#[derive(Debug)]
pub struct AdamWState<'a> {
    pub step: u64,
    pub exp_avg: &'a Tensor,
    pub exp_avg_sq: &'a Tensor,
    /// fp32 masters of the bf16/f16 trainable parameters (empty when all are f32).
    pub master: &'a Tensor,
}

/// Where one parameter's state is in the flat buffers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateEntry {
    pub name: String,
    /// `None` for a frozen parameter (no state).
    pub offset: Option<usize>,
    pub master_offset: Option<usize>,
    pub numel: usize,
}

pub(crate) struct State {
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    master: Tensor,
    accum: Option<Tensor>,
    /// Σ of the weights of the micro-batches in `accum`.
    accum_weight: f64,
}

/// The per-step constants of the update, computed in f64 and rounded once to f32 as the kernels use them (`1 − β`
/// in f64: in f32, `1 − 0.999f32` is off by 1.3e-5 relative).
pub(crate) struct StepScalars {
    /// Each gradient element is first multiplied by this in f32 (the weight of a micro-batch stepped without the
    /// accumulator, rounded as the accumulator rounds it; 1 otherwise), then by `grad_scale`.
    pub grad_weight: f32,
    pub grad_scale: f32,
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    pub eps: f32,
    pub bias_correction1: f32,
    pub bias_correction2_sqrt: f32,
}

/// AdamW over a fixed list of named parameters.
pub struct AdamW {
    config: AdamWConfig,
    groups: Vec<ParamGroup>,
    layout: Layout,
    state: State,
    step: u64,
}

impl std::fmt::Debug for AdamW {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdamW")
            .field("config", &self.config)
            .field("groups", &self.groups)
            .field("parameters", &self.layout.slots.len())
            .field("trainable_numel", &self.layout.trainable)
            .field("step", &self.step)
            .finish()
    }
}

impl AdamW {
    /// An optimizer for `params` (`(name, tensor)`: float, contiguous, one device), grouped by `groups` (first
    /// match wins; unmatched parameters use `config`'s learning rate and weight decay). Zero moments; masters of
    /// the bf16/f16 parameters copied from them.
    pub fn new(params: &[(String, &Tensor)], groups: Vec<ParamGroup>, config: AdamWConfig) -> Result<AdamW> {
        config.validate()?;
        groups.iter().try_for_each(ParamGroup::validate)?;
        let layout = Layout::new(params, &groups)?;
        let device = layout.device;
        let mut state = State {
            exp_avg: Tensor::zeros(&[layout.trainable], DType::F32, device)?,
            exp_avg_sq: Tensor::zeros(&[layout.trainable], DType::F32, device)?,
            master: Tensor::zeros(&[layout.masters], DType::F32, device)?,
            accum: None,
            accum_weight: 0.0,
        };
        let halves: Vec<(&Slot, &Tensor)> = layout
            .slots
            .iter()
            .zip(params)
            .filter(|(s, _)| s.master_offset.is_some())
            .map(|(s, (_, t))| (s, *t))
            .collect();
        accumulate_into(&mut state.master, &halves, 1.0, true)?;
        Ok(AdamW { config, groups, layout, state, step: 0 })
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// Steps done.
    pub fn steps_done(&self) -> u64 {
        self.step
    }

    /// Elements of the trainable parameters (each has two fp32 moments).
    pub fn trainable_numel(&self) -> usize {
        self.layout.trainable
    }

    /// One step with `grads` (`(name, gradient)`: a float tensor of its parameter's shape, any float dtype, on its
    /// device) on the trainable parameters of `params`; frozen parameters may be listed (and are not touched), and
    /// gradients of frozen parameters are ignored.
    pub fn step(&mut self, params: &mut [(String, &mut Tensor)], grads: &[(String, &Tensor)]) -> Result<StepReport> {
        let bound = self.layout.bind(params, Some(grads))?;
        let report = apply(&self.config, &self.groups, &self.layout, &mut self.state, self.step, bound, (1.0, 1.0))?;
        self.step += 1;
        Ok(report)
    }

    /// Adds one micro-batch's gradients, weighted by `weight` (its share of the batch: 1 for a plain average, its
    /// count of loss tokens for a token-mean loss), into the fp32 accumulator; [`AdamW::step_accumulated`] then
    /// steps with `Σ weight·grad / Σ weight`, which equals the gradient of the whole batch.
    pub fn accumulate(&mut self, grads: &[(String, &Tensor)], weight: f64) -> Result<()> {
        check_weight(weight)?;
        let pairs = self.layout.trainable_grads(grads)?;
        let accum = match &mut self.state.accum {
            Some(a) => a,
            None => self.state.accum.insert(Tensor::zeros(&[self.layout.trainable], DType::F32, self.layout.device)?),
        };
        accumulate_into(accum, &pairs, weight as f32, false)?;
        self.state.accum_weight += weight;
        Ok(())
    }

    /// One step with the accumulated gradients (see [`AdamW::accumulate`]), then an empty accumulator.
    pub fn step_accumulated(&mut self, params: &mut [(String, &mut Tensor)]) -> Result<StepReport> {
        if self.state.accum_weight == 0.0 {
            return Err(Error::InvalidArgument("`step_accumulated` with no accumulated gradients".into()));
        }
        let bound = self.layout.bind(params, None)?;
        let scale = 1.0 / self.state.accum_weight;
        let report = apply(&self.config, &self.groups, &self.layout, &mut self.state, self.step, bound, (scale, 1.0))?;
        self.step += 1;
        self.state.accum_weight = 0.0;
        if let Some(a) = &mut self.state.accum {
            a.fill_zeros()?;
        }
        Ok(report)
    }

    /// Ends a step with its last micro-batch's gradients `grads` and `weight` (as [`AdamW::accumulate`] takes
    /// them): `accumulate(grads, weight)` then [`AdamW::step_accumulated`], bit for bit. When nothing was accumulated
    /// before (a step of one micro-batch), it steps on `grads` directly, each element weighted and rounded as the
    /// accumulator would hold it: the same update without the accumulator, an fp32 buffer the size of the trainable
    /// parameters that is then never allocated.
    pub fn step_with_last_micro_batch(
        &mut self,
        params: &mut [(String, &mut Tensor)],
        grads: &[(String, &Tensor)],
        weight: f64,
    ) -> Result<StepReport> {
        if self.state.accum_weight > 0.0 {
            self.accumulate(grads, weight)?;
            return self.step_accumulated(params);
        }
        check_weight(weight)?;
        let bound = self.layout.bind(params, Some(grads))?;
        let weights = (1.0 / weight, weight as f32);
        let report = apply(&self.config, &self.groups, &self.layout, &mut self.state, self.step, bound, weights)?;
        self.step += 1;
        Ok(report)
    }

    /// Elements of the gradient accumulator: 0 until a step of several micro-batches needs it.
    pub fn accumulator_numel(&self) -> usize {
        self.state.accum.as_ref().map_or(0, Tensor::numel)
    }

    /// The optimizer's buffers and step count (for checkpoints).
    pub fn state(&self) -> AdamWState<'_> {
        AdamWState {
            step: self.step,
            exp_avg: &self.state.exp_avg,
            exp_avg_sq: &self.state.exp_avg_sq,
            master: &self.state.master,
        }
    }

    /// Where each parameter's state sits in [`AdamW::state`]'s buffers, in layout order.
    pub fn state_layout(&self) -> Vec<StateEntry> {
        self.layout
            .slots
            .iter()
            .map(|s| StateEntry {
                name: s.name.clone(),
                offset: s.offset,
                master_offset: s.master_offset,
                numel: s.numel(),
            })
            .collect()
    }

    /// Restores a state saved from [`AdamW::state`] (same parameters and groups): every buffer's shape checked
    /// before anything is copied.
    pub fn load_state(&mut self, step: u64, exp_avg: &Tensor, exp_avg_sq: &Tensor, master: &Tensor) -> Result<()> {
        let s = &self.state;
        for (name, got, want) in
            [("exp_avg", exp_avg, &s.exp_avg), ("exp_avg_sq", exp_avg_sq, &s.exp_avg_sq), ("master", master, &s.master)]
        {
            if got.shape() != want.shape() || got.dtype() != DType::F32 {
                return Err(Error::Shape(format!(
                    "state `{name}` is {:?} {}, this optimizer's {:?} f32",
                    got.shape(),
                    got.dtype(),
                    want.shape()
                )));
            }
        }
        self.state.exp_avg.copy_from(exp_avg)?;
        self.state.exp_avg_sq.copy_from(exp_avg_sq)?;
        self.state.master.copy_from(master)?;
        self.step = step;
        Ok(())
    }
}

fn check_weight(weight: f64) -> Result<()> {
    if weight.is_finite() && weight > 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!("`weight` must be finite and > 0, got {weight}")))
    }
}

/// The step shared by [`AdamW::step`], [`AdamW::step_accumulated`] and [`AdamW::step_with_last_micro_batch`]:
/// clipping norm (refused when not finite and the config says so), schedule, then the fused update, on the
/// gradients times `grad_weight` (in f32) times `grad_scale`. Nothing is written before every check passed.
fn apply(
    config: &AdamWConfig,
    groups: &[ParamGroup],
    layout: &Layout,
    state: &mut State,
    step: u64,
    bound: Vec<Bound<'_>>,
    (grad_scale, grad_weight): (f64, f32),
) -> Result<StepReport> {
    let (grad_norm, clip_coef) = match config.max_grad_norm {
        None => (None, 1.0),
        Some(max_norm) => {
            let norm = grad_scale * sum_of_squares(layout, state, &bound, grad_weight)?.sqrt();
            if !norm.is_finite() && config.error_if_nonfinite {
                return Err(Error::InvalidArgument(format!(
                    "the total norm of the gradients is {norm}: refusing to step (`error_if_nonfinite`)"
                )));
            }
            // `clamp(max=1)` as PyTorch does it: a NaN norm gives a NaN coefficient (f64::min would give 1).
            let coef = max_norm / (norm + CLIP_EPS);
            (Some(norm), if coef > 1.0 { 1.0 } else { coef })
        }
    };
    let lr_factor = config.schedule.factor(step);
    let t = (step + 1) as i32;
    let (beta1, beta2) = config.betas;
    let scalars = StepScalars {
        grad_weight,
        grad_scale: (grad_scale * clip_coef) as f32,
        one_minus_beta1: (1.0 - beta1) as f32,
        beta2: beta2 as f32,
        one_minus_beta2: (1.0 - beta2) as f32,
        eps: config.eps as f32,
        bias_correction1: (1.0 - beta1.powi(t)) as f32,
        bias_correction2_sqrt: (1.0 - beta2.powi(t)).sqrt() as f32,
    };
    let hyper: Vec<(f32, f32)> = bound
        .iter()
        .map(|b| {
            let (lr, wd) = layout.hyper(b.slot, groups, config);
            ((lr * lr_factor) as f32, wd as f32)
        })
        .collect();
    match layout.device {
        Device::Cpu => cpu::step(bound, &hyper, state, &scalars)?,
        Device::Cuda(_) => cuda::step(bound, &hyper, state, &scalars)?,
    }
    Ok(StepReport { step: step + 1, lr_factor, lr: config.lr * lr_factor, grad_norm, clip_coef })
}

/// Σ (grad_weight·g)² over the step's gradients (the bound tensors', or the accumulator's range of each bound
/// parameter), per parameter in the same chunks either way, so that a step on one micro-batch's gradients and on the
/// accumulator holding them add the same partial sums.
fn sum_of_squares(layout: &Layout, state: &State, bound: &[Bound<'_>], grad_weight: f32) -> Result<f64> {
    match layout.device {
        Device::Cpu => cpu::sum_of_squares(bound, state.accum.as_ref(), grad_weight),
        Device::Cuda(_) => cuda::sum_of_squares(bound, state.accum.as_ref(), grad_weight),
    }
}

/// `buffer[range of each slot] += weight · source` (the accumulator, or with `into_masters` the master buffer).
fn accumulate_into(buffer: &mut Tensor, sources: &[(&Slot, &Tensor)], weight: f32, into_masters: bool) -> Result<()> {
    match buffer.device() {
        Device::Cpu => cpu::accumulate(buffer, sources, weight),
        Device::Cuda(_) => cuda::accumulate(buffer, sources, weight, into_masters),
    }
}
