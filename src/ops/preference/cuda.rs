//! CUDA launches of the family (kernels in `kernels/preference.cu`).

use super::dpo::{stat, Plan, PreferenceLogps};
use crate::{Error, Result, Tensor};

pub(crate) fn dpo(_inputs: &PreferenceLogps, _plan: &Plan) -> Result<([f64; stat::COUNT], Tensor, Tensor)> {
    Err(Error::CudaUnavailable("the CUDA path of the DPO losses is not written yet".into()))
}
