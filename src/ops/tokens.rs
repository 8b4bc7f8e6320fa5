//! Which tokens of a `[N,T]` batch count toward a sequence's log-probability: labels not equal to the ignore index
//! and, when a mask is given, mask ≠ 0. Read once on the host, validated against the vocabulary.

use crate::ops::check;
use crate::runtime::{DType, Device, Tensor};
use crate::{Error, Result};

/// A counted token: its flat position `n·T + t`, its sequence `n` and its label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CountedToken {
    pub position: usize,
    pub sequence: usize,
    pub label: usize,
}

/// Labels of a `[N,T]` integer tensor as i64, from either device.
pub fn labels_i64(labels: &Tensor) -> Result<Vec<i64>> {
    check::integer("labels", labels)?;
    let host = if labels.device() == Device::Cpu { None } else { Some(labels.to_device(Device::Cpu)?) };
    let labels = host.as_ref().unwrap_or(labels);
    Ok(match labels.dtype() {
        DType::I32 => labels.as_slice::<i32>()?.iter().map(|&v| v as i64).collect(),
        _ => labels.as_slice::<i64>()?.to_vec(),
    })
}

/// A `[N,T]` mask (i32, i64 or f32; nonzero counts) as booleans, from either device.
pub fn mask_bools(mask: &Tensor) -> Result<Vec<bool>> {
    let host = if mask.device() == Device::Cpu { None } else { Some(mask.to_device(Device::Cpu)?) };
    let mask = host.as_ref().unwrap_or(mask);
    Ok(match mask.dtype() {
        DType::I32 => mask.as_slice::<i32>()?.iter().map(|&v| v != 0).collect(),
        DType::I64 => mask.as_slice::<i64>()?.iter().map(|&v| v != 0).collect(),
        DType::F32 => mask.as_slice::<f32>()?.iter().map(|&v| v != 0.0).collect(),
        other => return Err(Error::DType { arg: "mask", got: other, expected: "i32, i64 or f32".into() }),
    })
}

/// The counted tokens of a batch of `n` sequences of `t` tokens, in order. A counted label outside
/// `[0, vocab)` is an error naming its position.
pub fn counted_tokens(
    labels: &Tensor,
    mask: Option<&Tensor>,
    ignore_index: i64,
    (n, t, vocab): (usize, usize, usize),
) -> Result<Vec<CountedToken>> {
    check::shape("labels", labels, &[n, t])?;
    let labels = labels_i64(labels)?;
    let mask = match mask {
        Some(m) => {
            check::shape("mask", m, &[n, t])?;
            Some(mask_bools(m)?)
        }
        None => None,
    };
    let mut tokens = Vec::new();
    for (position, &label) in labels.iter().enumerate() {
        if label == ignore_index || mask.as_ref().is_some_and(|m| !m[position]) {
            continue;
        }
        if label < 0 || label as u64 >= vocab as u64 {
            return Err(Error::InvalidArgument(format!(
                "label {label} at (sequence {}, token {}) is outside the vocabulary [0, {vocab}) and is not the \
                 ignore index {ignore_index}",
                position / t,
                position % t
            )));
        }
        tokens.push(CountedToken { position, sequence: position / t, label: label as usize });
    }
    Ok(tokens)
}

/// Tokens counted per sequence.
pub fn counts_per_sequence(tokens: &[CountedToken], n: usize) -> Vec<f32> {
    let mut counts = vec![0.0f32; n];
    for tok in tokens {
        counts[tok.sequence] += 1.0;
    }
    counts
}
