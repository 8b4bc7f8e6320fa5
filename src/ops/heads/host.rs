//! Host-side helpers of the family: integer side inputs read on the host, and element access to CPU float
//! tensors of any float dtype for the few elements a head touches (a gathered row, the listed token ids).

use half::{bf16, f16};

use crate::runtime::{DType, Device, FloatElement, Tensor};
use crate::{Error, Result};

/// The elements of an integer tensor (i32 or i64, on any device), as i64 on the host.
pub(super) fn host_i64(t: &Tensor) -> Result<Vec<i64>> {
    let host = if t.device() == Device::Cpu { None } else { Some(t.to_device(Device::Cpu)?) };
    let t = host.as_ref().unwrap_or(t);
    Ok(match t.dtype() {
        DType::I32 => t.as_slice::<i32>()?.iter().map(|&v| i64::from(v)).collect(),
        _ => t.as_slice::<i64>()?.to_vec(),
    })
}

/// A CPU float tensor's elements, widened to f32 one at a time: heads read a few elements of large tensors
/// ([N,T,H] hidden states, [B,V] logits), so converting the whole tensor would cost more than the op.
#[derive(Clone, Copy)]
pub(super) enum Floats<'a> {
    F32(&'a [f32]),
    BF16(&'a [bf16]),
    F16(&'a [f16]),
}

impl<'a> Floats<'a> {
    pub(super) fn of(name: &'static str, t: &'a Tensor) -> Result<Self> {
        Ok(match t.dtype() {
            DType::F32 => Floats::F32(t.as_slice()?),
            DType::BF16 => Floats::BF16(t.as_slice()?),
            DType::F16 => Floats::F16(t.as_slice()?),
            other => return Err(Error::DType { arg: name, got: other, expected: "f32, bf16 or f16".into() }),
        })
    }

    #[inline]
    pub(super) fn get(&self, i: usize) -> f32 {
        match self {
            Floats::F32(s) => s[i],
            Floats::BF16(s) => s[i].to_f32(),
            Floats::F16(s) => s[i].to_f32(),
        }
    }

    /// Widens `out.len()` elements from `start` into `out`.
    pub(super) fn read_into(&self, start: usize, out: &mut [f32]) {
        fn widen<T: FloatElement>(src: &[T], out: &mut [f32]) {
            out.iter_mut().zip(src).for_each(|(o, &x)| *o = x.to_f32());
        }
        let end = start + out.len();
        match self {
            Floats::F32(s) => out.copy_from_slice(&s[start..end]),
            Floats::BF16(s) => widen(&s[start..end], out),
            Floats::F16(s) => widen(&s[start..end], out),
        }
    }
}

/// `dst[index(i)] = values[i]` for every i, rounded to the dtype of the CPU float tensor `dst`.
pub(super) fn scatter(dst: &mut Tensor, values: &[f32], index: impl Fn(usize) -> usize) -> Result<()> {
    fn put<T: FloatElement>(dst: &mut [T], values: &[f32], index: impl Fn(usize) -> usize) {
        values.iter().enumerate().for_each(|(i, &v)| dst[index(i)] = T::from_f32(v));
    }
    match dst.dtype() {
        DType::F32 => put(dst.as_mut_slice::<f32>()?, values, index),
        DType::BF16 => put(dst.as_mut_slice::<bf16>()?, values, index),
        DType::F16 => put(dst.as_mut_slice::<f16>()?, values, index),
        other => return Err(Error::DType { arg: "gradient", got: other, expected: "f32, bf16 or f16".into() }),
    }
    Ok(())
}
