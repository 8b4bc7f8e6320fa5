//! Argument checks shared by the family, beyond `ops::check`.

use crate::ops::check;
use crate::runtime::{DType, Tensor};
use crate::{Error, Result};

/// `t` holds floats of the same dtype as the argument `first`.
pub(crate) fn same_float_dtype(arg: &'static str, t: &Tensor, dtype: DType, first: &str) -> Result<()> {
    check::float(arg, t)?;
    if t.dtype() != dtype {
        return Err(Error::DType { arg, got: t.dtype(), expected: format!("{dtype}, the dtype of `{first}`") });
    }
    Ok(())
}

/// A loss that came out NaN or infinite means non-finite inputs: an error rather than silent garbage.
pub(crate) fn non_finite_is_an_error(loss: f32, inputs: &str) -> Result<()> {
    if !loss.is_finite() {
        return Err(Error::InvalidArgument(format!("the loss is {loss}: the {inputs} contain NaN or infinity")));
    }
    Ok(())
}
