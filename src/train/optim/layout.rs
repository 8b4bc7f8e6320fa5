//! Where each parameter's optimizer state sits in the flat fp32 buffers, and the binding of a step's parameter and
//! gradient lists (by name) to that layout, every check done before anything is written.

use std::collections::HashMap;

use super::config::{AdamWConfig, ParamGroup};
use crate::ops::check;
use crate::runtime::{DType, Device, Tensor};
use crate::{Error, Result};

/// Elements per chunk of the fused loops (one CUDA block, one rayon task); `CHUNK` in `kernels/adamw.cu`.
pub(crate) const CHUNK: usize = 32768;

/// One parameter as the optimizer was built with it.
#[derive(Clone, Debug)]
pub(crate) struct Slot {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
    /// Index in the groups, `None` for the default group.
    pub group: Option<usize>,
    /// First element in the moment and accumulator buffers; `None` when frozen.
    pub offset: Option<usize>,
    /// First element in the master buffer (bf16/f16 trainable parameters).
    pub master_offset: Option<usize>,
}

impl Slot {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The parameters of one optimizer, in the order they were given.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    pub slots: Vec<Slot>,
    pub device: Device,
    /// Elements of the trainable parameters (the moment buffers' length).
    pub trainable: usize,
    /// Elements of the bf16/f16 trainable parameters (the master buffer's length).
    pub masters: usize,
    index: HashMap<String, usize>,
}

/// A trainable parameter's gradient for one step: a tensor of the caller's, or the optimizer's accumulator.
pub(crate) enum GradSource<'a> {
    Tensor(&'a Tensor),
    Accumulator,
}

/// A trainable parameter bound for one step.
pub(crate) struct Bound<'a> {
    pub slot: &'a Slot,
    pub param: &'a mut Tensor,
    pub grad: GradSource<'a>,
}

/// One chunk of a trainable parameter: `(index among the trainable parameters, first element)`.
pub(crate) fn chunks<'s>(trainable: impl Iterator<Item = &'s Slot>) -> Vec<(usize, usize)> {
    trainable.enumerate().flat_map(|(k, s)| (0..s.numel()).step_by(CHUNK).map(move |start| (k, start))).collect()
}

impl Layout {
    pub fn new(params: &[(String, &Tensor)], groups: &[ParamGroup]) -> Result<Layout> {
        let device = params
            .first()
            .map(|(_, t)| t.device())
            .ok_or_else(|| Error::InvalidArgument("`params` is empty: nothing to optimize".into()))?;
        let (mut slots, mut index) = (Vec::with_capacity(params.len()), HashMap::new());
        let (mut trainable, mut masters) = (0usize, 0usize);
        for (name, t) in params {
            check_param(name, t, device)?;
            if index.insert(name.clone(), slots.len()).is_some() {
                return Err(Error::InvalidArgument(format!("parameter `{name}` is listed twice in `params`")));
            }
            let group = groups.iter().position(|g| g.matches(name));
            let frozen = group.is_some_and(|g| groups[g].frozen);
            let (offset, master_offset) = if frozen {
                (None, None)
            } else {
                let half = t.dtype() != DType::F32;
                let slot_offsets = (Some(trainable), half.then_some(masters));
                trainable += t.numel();
                masters += if half { t.numel() } else { 0 };
                slot_offsets
            };
            slots.push(Slot {
                name: name.clone(),
                shape: t.shape().to_vec(),
                dtype: t.dtype(),
                group,
                offset,
                master_offset,
            });
        }
        Ok(Layout { slots, device, trainable, masters, index })
    }

    /// The learning rate and weight decay of `slot`'s group before the schedule.
    pub fn hyper(&self, slot: &Slot, groups: &[ParamGroup], config: &AdamWConfig) -> (f64, f64) {
        let group = slot.group.map(|g| &groups[g]);
        (
            group.and_then(|g| g.lr).unwrap_or(config.lr),
            group.and_then(|g| g.weight_decay).unwrap_or(config.weight_decay),
        )
    }

    /// The trainable parameters of `params` in layout order, each with its gradient from `grads` (by name), or
    /// from the accumulator when `grads` is `None`; every name, shape, dtype and device checked.
    pub fn bind<'a>(
        &'a self,
        params: &'a mut [(String, &mut Tensor)],
        grads: Option<&'a [(String, &Tensor)]>,
    ) -> Result<Vec<Bound<'a>>> {
        let mut by_slot: Vec<Option<&'a mut Tensor>> = (0..self.slots.len()).map(|_| None).collect();
        for (name, t) in params.iter_mut() {
            let k = self.slot_index(name, "params")?;
            let slot = &self.slots[k];
            check_param(name, t, self.device)?;
            if t.shape() != slot.shape.as_slice() || t.dtype() != slot.dtype {
                return Err(Error::Shape(format!(
                    "parameter `{name}` is {:?} {}, but the optimizer was built for {:?} {}",
                    t.shape(),
                    t.dtype(),
                    slot.shape,
                    slot.dtype
                )));
            }
            if by_slot[k].replace(&mut **t).is_some() {
                return Err(Error::InvalidArgument(format!("parameter `{name}` is listed twice in `params`")));
            }
        }
        let grads = grads.map(|g| self.grads_by_slot(g)).transpose()?;
        let mut bound = Vec::new();
        for (k, (slot, param)) in self.slots.iter().zip(by_slot).enumerate() {
            if slot.offset.is_none() {
                continue;
            }
            let param = param.ok_or_else(|| {
                Error::InvalidArgument(format!("trainable parameter `{}` is missing from `params`", slot.name))
            })?;
            let grad = match &grads {
                Some(g) => GradSource::Tensor(g[k].ok_or_else(|| {
                    Error::InvalidArgument(format!("trainable parameter `{}` has no gradient in `grads`", slot.name))
                })?),
                None => GradSource::Accumulator,
            };
            bound.push(Bound { slot, param, grad });
        }
        Ok(bound)
    }

    /// The gradients of the trainable parameters in layout order, each checked against its parameter.
    pub fn trainable_grads<'a>(&self, grads: &'a [(String, &'a Tensor)]) -> Result<Vec<(&Slot, &'a Tensor)>> {
        let by_slot = self.grads_by_slot(grads)?;
        self.slots
            .iter()
            .zip(by_slot)
            .filter(|(s, _)| s.offset.is_some())
            .map(|(s, g)| {
                g.map(|g| (s, g)).ok_or_else(|| {
                    Error::InvalidArgument(format!("trainable parameter `{}` has no gradient in `grads`", s.name))
                })
            })
            .collect()
    }

    /// `grads` indexed by slot; a gradient of a frozen parameter is accepted and ignored.
    fn grads_by_slot<'a>(&self, grads: &'a [(String, &'a Tensor)]) -> Result<Vec<Option<&'a Tensor>>> {
        let mut by_slot = vec![None; self.slots.len()];
        for (name, g) in grads {
            let k = self.slot_index(name, "grads")?;
            let slot = &self.slots[k];
            if slot.offset.is_none() {
                continue;
            }
            float(name, "grads", g)?;
            check::contiguous(name, g)?;
            if g.shape() != slot.shape.as_slice() {
                return Err(Error::Shape(format!(
                    "gradient `{name}` has shape {:?}, its parameter {:?}",
                    g.shape(),
                    slot.shape
                )));
            }
            if g.device() != self.device {
                return Err(Error::Device(format!(
                    "gradient `{name}` is on {}, the parameters on {}",
                    g.device(),
                    self.device
                )));
            }
            if by_slot[k].replace(*g).is_some() {
                return Err(Error::InvalidArgument(format!("gradient `{name}` is listed twice in `grads`")));
            }
        }
        Ok(by_slot)
    }

    fn slot_index(&self, name: &str, list: &str) -> Result<usize> {
        self.index.get(name).copied().ok_or_else(|| {
            Error::InvalidArgument(format!("`{list}` names `{name}`, which is not a parameter of this optimizer"))
        })
    }
}

/// A parameter the optimizer can hold: a contiguous float tensor on `device`.
fn check_param(name: &str, t: &Tensor, device: Device) -> Result<()> {
    float(name, "params", t)?;
    check::contiguous(name, t)?;
    if t.device() != device {
        return Err(Error::Device(format!("parameter `{name}` is on {}, the first parameter on {device}", t.device())));
    }
    Ok(())
}

/// `t` (entry `name` of list `list`) holds floats.
fn float(name: &str, list: &'static str, t: &Tensor) -> Result<()> {
    if !t.dtype().is_float() {
        return Err(Error::DType { arg: list, got: t.dtype(), expected: format!("f32, bf16 or f16 for `{name}`") });
    }
    Ok(())
}
