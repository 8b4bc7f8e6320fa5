//! AdamW's hyper-parameters, gradient clipping and parameter groups, each checked before any state is built.

use super::schedule::Schedule;
use crate::{Error, Result};

/// Hyper-parameters of [`AdamW`](super::AdamW), with `torch.optim.AdamW`'s defaults and names.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamWConfig {
    /// The base learning rate of every group that does not set its own.
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    /// Decoupled weight decay of every group that does not set its own.
    pub weight_decay: f64,
    /// Scales the gradients so that their global L2 norm is at most this (`clip_grad_norm_`'s `max_norm`).
    pub max_grad_norm: Option<f64>,
    /// With clipping, a non-finite global norm is an error and nothing is written (`clip_grad_norm_`'s
    /// `error_if_nonfinite`); otherwise the step goes on and NaN reaches the parameters, as in PyTorch.
    pub error_if_nonfinite: bool,
    pub schedule: Schedule,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 1e-2,
            max_grad_norm: None,
            error_if_nonfinite: false,
            schedule: Schedule::default(),
        }
    }
}

fn non_negative(name: &str, value: f64) -> Result<()> {
    if !(value.is_finite() && value >= 0.0) {
        return Err(Error::InvalidArgument(format!("`{name}` must be finite and >= 0, got {value}")));
    }
    Ok(())
}

impl AdamWConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        non_negative("lr", self.lr)?;
        non_negative("eps", self.eps)?;
        non_negative("weight_decay", self.weight_decay)?;
        for (name, beta) in [("betas.0", self.betas.0), ("betas.1", self.betas.1)] {
            if !(0.0..1.0).contains(&beta) {
                return Err(Error::InvalidArgument(format!("`{name}` must be in [0, 1), got {beta}")));
            }
        }
        if let Some(max) = self.max_grad_norm {
            if !(max.is_finite() && max > 0.0) {
                return Err(Error::InvalidArgument(format!("`max_grad_norm` must be finite and > 0, got {max}")));
            }
        }
        self.schedule.validate()
    }
}

/// Parameters selected by name, with their own learning rate and weight decay, or frozen (never read, never
/// written, no optimizer state). A parameter belongs to the first group with a pattern its name contains; the
/// others form the default group of [`AdamWConfig`].
#[derive(Clone, Debug, PartialEq)]
pub struct ParamGroup {
    /// A label for reports and errors.
    pub name: String,
    /// Substrings of parameter names (`"vision_tower."`, `"bias"`).
    pub patterns: Vec<String>,
    /// The group's base learning rate (else the config's).
    pub lr: Option<f64>,
    /// The group's weight decay (else the config's).
    pub weight_decay: Option<f64>,
    pub frozen: bool,
}

impl ParamGroup {
    /// A group of the parameters whose names contain one of `patterns`, with the config's hyper-parameters.
    pub fn new(name: &str, patterns: &[&str]) -> ParamGroup {
        ParamGroup {
            name: name.into(),
            patterns: patterns.iter().map(|p| p.to_string()).collect(),
            lr: None,
            weight_decay: None,
            frozen: false,
        }
    }

    pub fn lr(mut self, lr: f64) -> ParamGroup {
        self.lr = Some(lr);
        self
    }

    pub fn weight_decay(mut self, weight_decay: f64) -> ParamGroup {
        self.weight_decay = Some(weight_decay);
        self
    }

    pub fn frozen(mut self) -> ParamGroup {
        self.frozen = true;
        self
    }

    /// Whether the parameter `name` is frozen under `groups`: it belongs to the first group one of whose patterns its
    /// name contains, as the optimizer places it.
    pub fn is_frozen(groups: &[ParamGroup], name: &str) -> bool {
        groups.iter().find(|g| g.matches(name)).is_some_and(|g| g.frozen)
    }

    pub(crate) fn matches(&self, name: &str) -> bool {
        self.patterns.iter().any(|p| name.contains(p.as_str()))
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.patterns.is_empty() || self.patterns.iter().any(String::is_empty) {
            return Err(Error::InvalidArgument(format!("group `{}` needs non-empty name patterns", self.name)));
        }
        if let Some(lr) = self.lr {
            non_negative(&format!("groups[{}].lr", self.name), lr)?;
        }
        if let Some(wd) = self.weight_decay {
            non_negative(&format!("groups[{}].weight_decay", self.name), wd)?;
        }
        Ok(())
    }
}
