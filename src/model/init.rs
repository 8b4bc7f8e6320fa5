//! Parameters for a model trained from scratch (the demo's tiny judge and policy, users' small experiments), in the
//! kind of transformers' `_init_weights`: matrices and embeddings drawn with standard deviation `std` (the configs'
//! `initializer_range`), biases zero, normalisation scales one. Drawn from ChaCha8, a portable generator, uniformly
//! (a uniform of the same standard deviation: the first steps of training do not tell it from a normal).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::runtime::{DType, Device, Tensor};
use crate::{Error, Result};

/// A fresh f32 CPU tensor for every `(name, shape)` of `expected`, in its order: zeros for names ending in `bias`,
/// ones for the weights of normalisation layers (a name holding `norm`), else values of standard deviation `std`.
/// Each tensor draws from its own stream of `seed`, so adding a tensor leaves the others' values as they were.
pub fn initial_parameters(expected: &[(String, Vec<usize>)], std: f32, seed: u64) -> Result<Vec<(String, Tensor)>> {
    if !(std.is_finite() && std > 0.0) {
        return Err(Error::InvalidArgument(format!(
            "the initial standard deviation must be finite and > 0, got {std}"
        )));
    }
    let half_width = std * 3f32.sqrt();
    expected
        .iter()
        .enumerate()
        .map(|(stream, (name, shape))| {
            let numel = shape.iter().product();
            let values = if name.ends_with("bias") {
                vec![0.0; numel]
            } else if name.contains("norm") {
                vec![1.0; numel]
            } else {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                rng.set_stream(stream as u64);
                (0..numel).map(|_| rng.gen_range(-half_width..half_width)).collect()
            };
            Ok((name.clone(), Tensor::from_f32(&values, shape, DType::F32, Device::Cpu)?))
        })
        .collect()
}
