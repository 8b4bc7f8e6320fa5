//! How strictly a checkpoint is taken: what a load may ignore, what it checks, and what it reports.

use crate::runtime::{DType, Device, Tensor};
use crate::{Error, Result};

/// Options of a model load. The default is strict: the checkpoint must hold exactly the model's tensors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Ignore tensors the model does not use (extra heads, a tied model's separately stored `lm_head.weight`),
    /// listing them in [`LoadReport::ignored`], as transformers warns and goes on. Missing tensors and wrong shapes
    /// stay errors.
    pub lenient: bool,
    /// Refuse weights holding NaN or ±inf, naming the first such tensor (a diverged or corrupt checkpoint would
    /// otherwise load silently and generate garbage). Costs one pass over the weights.
    pub check_finite: bool,
}

/// What a load did beyond loading.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Stored tensors the model does not use, sorted (empty unless [`LoadOptions::lenient`]).
    pub ignored: Vec<String>,
}

/// An error naming the first of `weights` that holds a non-finite value, and where.
pub fn check_finite<'a>(weights: impl IntoIterator<Item = (String, &'a Tensor)>) -> Result<()> {
    for (name, tensor) in weights {
        let host = if tensor.device() == Device::Cpu { None } else { Some(tensor.to_device(Device::Cpu)?) };
        let values = host.as_ref().unwrap_or(tensor).to_dtype(DType::F32)?.to_vec::<f32>()?;
        if let Some((index, value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(Error::Checkpoint(format!(
                "weight `{name}` holds {value} at flat index {index} (checked because check_finite was asked for)"
            )));
        }
    }
    Ok(())
}
