//! CUDA attention (in progress).

use super::{AttentionGrads, AttentionOutput, Plan};
use crate::runtime::Tensor;
use crate::{Error, Result};

pub(super) fn forward(_q: &Tensor, _k: &Tensor, _v: &Tensor, _p: &Plan) -> Result<AttentionOutput> {
    Err(Error::CudaUnavailable("attention on CUDA is not written yet".into()))
}

pub(super) fn backward(
    _g: &Tensor,
    _q: &Tensor,
    _k: &Tensor,
    _v: &Tensor,
    _saved: &AttentionOutput,
    _p: &Plan,
) -> Result<AttentionGrads> {
    Err(Error::CudaUnavailable("attention on CUDA is not written yet".into()))
}
