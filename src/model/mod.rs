//! Models under their Hugging Face names: configuration (`config.json`) and safetensors weights.

pub mod config;
pub mod files;
pub mod llava;
pub mod loading;
pub mod qwen2;
pub mod weights;

pub use config::Qwen2Config;
pub use loading::{LoadOptions, LoadReport};
pub use qwen2::{ForwardOptions, Qwen2Model};
pub use weights::{qwen2_weight_names, save_safetensors, save_sharded, WeightStore};
