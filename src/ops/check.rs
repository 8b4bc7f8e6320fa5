//! Argument checks shared by every op: each failure names the argument and what was expected.

use crate::runtime::{DType, Device, Tensor};
use crate::{Error, Result};

/// `t` has exactly `shape`.
pub fn shape(name: &str, t: &Tensor, expected: &[usize]) -> Result<()> {
    if t.shape() != expected {
        return Err(Error::Shape(format!("`{name}` has shape {:?}, expected {expected:?}", t.shape())));
    }
    Ok(())
}

/// `t` has rank `rank`; returns its shape.
pub fn rank<'t>(name: &str, t: &'t Tensor, rank: usize) -> Result<&'t [usize]> {
    if t.rank() != rank {
        return Err(Error::Shape(format!("`{name}` must have rank {rank}, got shape {:?}", t.shape())));
    }
    Ok(t.shape())
}

/// `t` holds floats (f32, bf16 or f16).
pub fn float(name: &'static str, t: &Tensor) -> Result<()> {
    if !t.dtype().is_float() {
        return Err(Error::DType { arg: name, got: t.dtype(), expected: "f32, bf16 or f16".into() });
    }
    Ok(())
}

/// `t` holds integer ids (i32 or i64).
pub fn integer(name: &'static str, t: &Tensor) -> Result<()> {
    if !matches!(t.dtype(), DType::I32 | DType::I64) {
        return Err(Error::DType { arg: name, got: t.dtype(), expected: "i32 or i64".into() });
    }
    Ok(())
}

/// `t` has exactly `dtype`.
pub fn dtype(name: &'static str, t: &Tensor, dtype: DType) -> Result<()> {
    if t.dtype() != dtype {
        return Err(Error::DType { arg: name, got: t.dtype(), expected: dtype.to_string() });
    }
    Ok(())
}

/// `t` is contiguous.
pub fn contiguous(name: &str, t: &Tensor) -> Result<()> {
    if !t.is_contiguous() {
        return Err(Error::Shape(format!("`{name}` must be contiguous (strides {:?})", t.strides())));
    }
    Ok(())
}

/// Every named tensor is contiguous and on one device; returns that device.
pub fn same_device(tensors: &[(&str, &Tensor)]) -> Result<Device> {
    let (first_name, first) = tensors.first().ok_or_else(|| Error::InvalidArgument("no tensors given".into()))?;
    let device = first.device();
    for (name, t) in tensors {
        contiguous(name, t)?;
        if t.device() != device {
            return Err(Error::Device(format!("`{name}` is on {}, but `{first_name}` is on {device}", t.device())));
        }
    }
    Ok(device)
}

/// The operands of an element-wise op: floats of one shape and dtype (the first's), not empty, contiguous and on
/// one device; returns that device.
pub fn elementwise(named: &[(&'static str, &Tensor)]) -> Result<Device> {
    let (first_name, first) = *named.first().ok_or_else(|| Error::InvalidArgument("no tensors given".into()))?;
    for &(name, t) in named {
        float(name, t)?;
        shape(name, t, first.shape())?;
        if t.dtype() != first.dtype() {
            return Err(Error::DType {
                arg: name,
                got: t.dtype(),
                expected: format!("the dtype of `{first_name}` ({})", first.dtype()),
            });
        }
    }
    non_empty(first_name, first.numel())?;
    same_device(named)
}

/// A finite scalar hyper-parameter.
pub fn finite(name: &str, value: f32) -> Result<()> {
    if !value.is_finite() {
        return Err(Error::InvalidArgument(format!("`{name}` must be finite, got {value}")));
    }
    Ok(())
}

/// A batch dimension that is not empty.
pub fn non_empty(name: &str, n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::Shape(format!("`{name}` is empty: the batch needs at least one element")));
    }
    Ok(())
}

/// An output the caller provides (an `_into` op): exactly `shape` and `dtype`, on `device` (the inputs'), and
/// contiguous.
pub fn output(name: &'static str, t: &Tensor, expected_shape: &[usize], dtype: DType, device: Device) -> Result<()> {
    shape(name, t, expected_shape)?;
    self::dtype(name, t, dtype)?;
    if t.device() != device {
        return Err(Error::Device(format!("output `{name}` is on {}, but the inputs are on {device}", t.device())));
    }
    contiguous(name, t)
}
