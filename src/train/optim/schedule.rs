//! Learning-rate schedules with warm-up, as multipliers of each group's learning rate (PyTorch's `LambdaLR` over
//! transformers' `get_{constant,linear,cosine}_schedule_with_warmup`).

use crate::{Error, Result};

/// The shape of the schedule after warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ScheduleKind {
    /// 1 after warm-up.
    #[default]
    Constant,
    /// Linear decay from 1 to 0 at `total_steps`.
    Linear,
    /// Half a cosine from 1 to 0 at `total_steps` (UnifiedReward's schedule).
    Cosine,
}

impl ScheduleKind {
    /// The kind named `name` (`constant`, `linear` or `cosine`, transformers' `lr_scheduler_type` names).
    pub fn from_name(name: &str) -> Result<ScheduleKind> {
        match name {
            "constant" => Ok(ScheduleKind::Constant),
            "linear" => Ok(ScheduleKind::Linear),
            "cosine" => Ok(ScheduleKind::Cosine),
            other => {
                Err(Error::InvalidArgument(format!("unknown schedule `{other}`; known: constant, linear, cosine")))
            }
        }
    }
}

/// A learning-rate multiplier per optimizer step: linear warm-up from 0 over `warmup_steps`, then `kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub warmup_steps: usize,
    /// The number of optimizer steps of the run (ignored by [`ScheduleKind::Constant`]).
    pub total_steps: usize,
}

impl Schedule {
    /// A constant learning rate.
    pub fn constant() -> Schedule {
        Schedule::default()
    }

    /// `kind` over `total_steps` with `ceil(total_steps · warmup_ratio)` warm-up steps (transformers'
    /// `TrainingArguments.get_warmup_steps`); UnifiedReward trains with `(Cosine, total, 0.03)`.
    pub fn with_warmup_ratio(kind: ScheduleKind, total_steps: usize, warmup_ratio: f64) -> Result<Schedule> {
        if !(0.0..=1.0).contains(&warmup_ratio) {
            return Err(Error::InvalidArgument(format!("`warmup_ratio` must be in [0, 1], got {warmup_ratio}")));
        }
        let warmup_steps = (total_steps as f64 * warmup_ratio).ceil() as usize;
        Ok(Schedule { kind, warmup_steps, total_steps })
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.kind != ScheduleKind::Constant && self.total_steps == 0 {
            return Err(Error::InvalidArgument(format!("a {:?} schedule needs `total_steps` > 0", self.kind)));
        }
        Ok(())
    }

    /// The multiplier of the step that follows `step` completed steps (step 0 is the first).
    pub fn factor(&self, step: u64) -> f64 {
        let (step, warmup, total) = (step as f64, self.warmup_steps as f64, self.total_steps as f64);
        if step < warmup {
            return step / warmup.max(1.0);
        }
        let remaining = (total - warmup).max(1.0);
        match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => ((total - step) / remaining).max(0.0),
            ScheduleKind::Cosine => {
                let progress = (step - warmup) / remaining;
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }
        }
    }
}
