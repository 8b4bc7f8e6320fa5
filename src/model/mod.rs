//! Models under their Hugging Face names: configuration (`config.json`) and safetensors weights.

pub mod architecture;
pub mod config;
pub mod files;
pub mod init;
pub mod llava;
pub mod loading;
pub mod qwen2;
pub mod siglip;
pub(crate) mod views;
pub mod weights;

pub use architecture::Architecture;
pub use config::Qwen2Config;
pub use loading::{LoadOptions, LoadReport};
pub use qwen2::{ForwardOptions, Qwen2Model};
pub use siglip::{
    layers_for_feature_layer, siglip_weight_names, SiglipGradients, SiglipVisionConfig, SiglipVisionTower,
    SiglipWeights, TowerPass,
};
pub use weights::{
    qwen2_weight_names, qwen2_weight_names_under, save_safetensors, save_sharded, Qwen2Names, WeightStore,
};
