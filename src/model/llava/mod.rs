//! LLaVA-OneVision (a SigLIP vision tower, a two-layer GELU projector and a Qwen2 language model): UnifiedReward's
//! judge. Its checkpoints come in two layouts, told apart by `config.json`'s `model_type` ([`config`]) and by their
//! tensor names ([`layout`]).

pub mod config;
pub mod layout;

pub use config::{LlavaConfigFormat, LlavaOnevisionConfig, VisionTower};
pub use layout::LlavaLayout;
