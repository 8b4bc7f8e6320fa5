//! The judge's text side: Qwen2's tokenizer and chat template.

pub mod tokenizer;

pub use tokenizer::{render_chat, ChatMessage, Tokenizer};
