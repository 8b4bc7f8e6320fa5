//! CUDA path (kernels in `kernels/logprobs.cu`).

use super::{Dims, LogProbsConfig, SequenceLogProbs};
use crate::runtime::Tensor;
use crate::{Error, Result};

fn todo() -> Error {
    Error::CudaUnavailable("logprobs CUDA path not written yet".into())
}

pub(super) fn forward(
    _: &Tensor,
    _: &Tensor,
    _: Option<&Tensor>,
    _: &LogProbsConfig,
    _: Dims,
) -> Result<SequenceLogProbs> {
    Err(todo())
}

#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    _: &Tensor,
    _: &Tensor,
    _: Option<&Tensor>,
    _: &SequenceLogProbs,
    _: &Tensor,
    _: &LogProbsConfig,
    _: Dims,
    _: &mut Tensor,
) -> Result<()> {
    Err(todo())
}

pub(super) fn backward_in_place(
    _: &mut Tensor,
    _: &Tensor,
    _: Option<&Tensor>,
    _: &SequenceLogProbs,
    _: &Tensor,
    _: &LogProbsConfig,
    _: Dims,
) -> Result<()> {
    Err(todo())
}
