//! The scalar head on CUDA (in progress).

use super::scalar::{Plan, ScalarHead, ScalarHeadGrads};
use crate::runtime::Tensor;
use crate::{Error, Result};

pub(super) fn forward(_head: &ScalarHead<'_>, _plan: &Plan) -> Result<Tensor> {
    Err(Error::Device("scalar head: CUDA path in progress".into()))
}

pub(super) fn backward(_head: &ScalarHead<'_>, _plan: &Plan, _grad: &Tensor) -> Result<ScalarHeadGrads> {
    Err(Error::Device("scalar head: CUDA path in progress".into()))
}
