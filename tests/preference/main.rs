//! Tests of the preference losses (`unireward::ops::preference`): float64 fixtures from
//! `tests/reference/preference.py`, finite differences and f64 loops on fresh random inputs, bf16/f16 inputs,
//! awkward shapes, bad input, and CUDA against CPU (ignored without the `gpu-tests` feature).

mod diffusion_dpo;
mod dpo;
mod reward_model;
mod util;
