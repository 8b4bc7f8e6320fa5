//! The Qwen2 model against transformers (float64 fixtures): logits, loss, every gradient, memory, bad input.

mod cuda;
mod generate;
mod model;
mod reference;
