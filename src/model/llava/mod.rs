//! LLaVA-OneVision (a SigLIP vision tower, a two-layer GELU projector and a Qwen2 language model): UnifiedReward's
//! judge. The image and video features are packed into the token embeddings at placeholder tokens ([`packing`]).
//! Its checkpoints come in two layouts, told apart by `config.json`'s `model_type` ([`config`]) and by their tensor
//! names ([`layout`]).

pub mod config;
pub mod layout;
mod model;
pub mod packing;
mod pass_arena;
pub mod projector;

pub use config::{LlavaConfigFormat, LlavaOnevisionConfig, VisionTower};
pub use layout::LlavaLayout;
pub use model::{LlavaBatch, LlavaGradients, LlavaOnevisionModel, LlavaPass, MediaInput};
