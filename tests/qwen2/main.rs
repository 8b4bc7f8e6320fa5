//! The Qwen2 model against transformers (float64 fixtures): logits, loss, every gradient, memory, bad input; KV-cache
//! generation; a DPO step through the model; CUDA against CPU (gpu-tests).

mod cuda;
mod dpo;
mod generate;
mod model;
mod reference;
