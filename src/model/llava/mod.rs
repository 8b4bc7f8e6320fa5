//! LLaVA-OneVision, the reward model's architecture: a SigLIP vision tower, a two-layer GELU projector and the Qwen2
//! language model, with the image and video features packed into the token embeddings at placeholder tokens.

pub mod packing;
pub mod projector;
