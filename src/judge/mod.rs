//! The judge's text side: Qwen2's tokenizer and chat template, and text generation.

pub mod generate;
pub mod tokenizer;

pub use generate::{generate, generate_with_prefix, FinishReason, GenerationConfig};
pub use tokenizer::{render_chat, ChatMessage, Tokenizer};
