//! The judge: Qwen2's tokenizer and chat template, text generation, UnifiedReward's task templates, the answer
//! parser, one-pass verdicts (teacher-forced class scoring with a shared prefix), the benchmark metrics and the
//! evaluation of a judge on a benchmark file ([`mod@bench`]).

pub mod answer;
pub mod api;
pub mod bench;
pub mod chat_template;
pub mod generate;
mod media_file;
pub mod media_prompt;
pub mod metrics;
pub mod scoring;
pub mod templates;
pub mod tokenizer;
pub mod verdict;

pub use api::{Candidate, Context, Judge, JudgeBatch, JudgeRequest, JudgeResult, Reasoning};
pub use chat_template::ChatTemplate;
pub use generate::{generate, generate_with_prefix, FinishReason, GenerationConfig};
pub use media_file::MediaFile;
pub use media_prompt::{expand_media_markers, load_media, MediaPixels};
pub use scoring::{JudgeModel, ScoredSequence, SequenceScores};
pub use templates::{
    AnswerGrammar, MediaInput, MediaSpec, Mode, ScoreGrammar, Task, TaskTemplate, Variant, VerdictGrammar,
    CHECKPOINT_TEMPLATES,
};
pub use tokenizer::{render_chat, ChatMessage, Tokenizer};
pub use verdict::{one_pass, AnswerClasses, ClassProbabilities, PairVerdict};
