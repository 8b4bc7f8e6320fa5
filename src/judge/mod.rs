//! The judge's text side: Qwen2's tokenizer and chat template, text generation, UnifiedReward's task templates, the
//! answer parser and the benchmark metrics.

pub mod answer;
pub mod chat_template;
pub mod generate;
pub mod metrics;
pub mod templates;
pub mod tokenizer;

pub use chat_template::ChatTemplate;
pub use generate::{generate, generate_with_prefix, FinishReason, GenerationConfig};
pub use templates::{
    AnswerGrammar, MediaInput, MediaSpec, Mode, ScoreGrammar, Task, TaskTemplate, Variant, VerdictGrammar,
};
pub use tokenizer::{render_chat, ChatMessage, Tokenizer};
