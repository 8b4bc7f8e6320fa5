//! The demo's procedural world, which needs no download: scenes of coloured shapes drawn in code, their true and
//! corrupted captions, questions with their answers, and short videos of a moving shape. Everything is a pure
//! function of a seed (ChaCha8, a portable generator), so the same seed gives the same pixels on every machine.
//!
//! The language is small on purpose — a tiny judge trained for minutes must be able to learn it — but every fact a
//! caption or answer states can be read back from the pixels (the tests do), so the preferences made from it are
//! true of the images, not only of the scene descriptions.

mod checkpoint;
mod dataset;
mod draw;
mod judgments;
mod motion;
mod scene;
mod text;

pub use checkpoint::{word_level_tokenizer, TinyLlava, CHAT_TEMPLATE, SPECIAL_TOKENS};
pub use dataset::{template_words, DemoFiles, DemoSizes};
pub use draw::{render, render_frames};
pub use judgments::{judgments, Rationale, WorldCandidate, WorldJudgment, FRAMES, IMAGE_SIZE};
pub use motion::{Direction, Motion};
pub use scene::{Colour, Scene, Shape, ShapeKind, GRID};
pub use text::{caption, corrupt, described_answer, question, Question};
