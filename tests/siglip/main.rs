//! The SigLIP vision tower against transformers (float64 fixtures of tests/reference/siglip_tower.py): features and
//! every gradient, bf16, finite differences, checkpoint prefixes, configs and bad input; CUDA against CPU
//! (gpu-tests).

mod cuda;
mod fixtures;
mod gradients;
mod inputs;
// The float64 reference reader is shared with the Qwen2 tests; not every helper is used here.
#[allow(dead_code)]
#[path = "../qwen2/reference.rs"]
mod reference;
mod tower;
