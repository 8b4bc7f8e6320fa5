//! The transformer ops (embedding, RMSNorm, RoPE, attention, KV cache, linear, residual add, SwiGLU) against
//! float64 references: PyTorch fixtures from `tests/reference/transformer_ops.py`, plain-Rust f64 loops on fresh
//! random inputs, finite differences of those loops for every backward, bf16/f16 storage, awkward shapes, bad
//! input, the `_into` variants over NaN-filled outputs (bit for bit the allocating versions) and their output
//! checks, and (with the `gpu-tests` feature) CUDA against CPU in every dtype.

mod common;

mod attention;
mod embedding;
mod gelu;
mod interpolate;
mod kv_cache;
mod layernorm;
mod linear;
mod residual;
mod rmsnorm;
mod rope;
mod swiglu;
