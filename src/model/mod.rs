//! Models under their Hugging Face names: configuration (`config.json`) and safetensors weights.

pub mod config;
pub mod weights;

pub use config::Qwen2Config;
pub use weights::{qwen2_weight_names, save_safetensors, save_sharded, WeightStore};
