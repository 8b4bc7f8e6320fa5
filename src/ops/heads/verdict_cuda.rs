//! The verdict head on CUDA (in progress).

use super::classes::VerdictClasses;
use super::verdict::{Dims, Verdict, VerdictGrads};
use crate::runtime::Tensor;
use crate::{Error, Result};

pub(super) fn forward(_logits: &Tensor, _classes: &VerdictClasses, _dims: Dims) -> Result<Verdict> {
    Err(Error::Device("verdict head: CUDA path in progress".into()))
}

pub(super) fn backward(
    _logits: &Tensor,
    _classes: &VerdictClasses,
    _grads: VerdictGrads<'_>,
    _dims: Dims,
    _grad: &mut Tensor,
) -> Result<()> {
    Err(Error::Device("verdict head: CUDA path in progress".into()))
}
