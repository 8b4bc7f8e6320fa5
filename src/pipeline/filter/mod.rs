//! The filter stage: a judge turns K candidates per prompt (a policy's responses to a question about an image or
//! video, or a generator's images or videos for a caption) into chosen/rejected preference pairs for DPO.
//!
//! - [`candidates`]: the candidates file (JSONL, one prompt a line), read and checked before anything is judged;
//! - [`judgments`]: the [`Judgments`] a strategy asks for (pairwise verdicts, pointwise scores, unparsable
//!   answers kept as such), answered by a [`Judge`](crate::judge::Judge) through [`JudgeJudgments`];
//! - [`strategy`]: which judgments each [`Strategy`] makes and how it selects pairs (the aggregation is
//!   [`crate::ops::compare`]'s);
//! - [`records`]: the pair, audit and progress lines written;
//! - [`run`]: the resumable, shardable run (its progress file: `progress.rs`); [`merge`]: shards joined into the
//!   unsharded output.
//!
//! See the README's "Filter" section for the file formats and the policies.

pub mod candidates;
pub mod judge_judgments;
pub mod judgments;
pub mod merge;
pub(crate) mod progress;
pub mod records;
pub mod run;
pub mod strategy;

pub use candidates::{read_candidates, read_prompts, CandidateFile, CandidatePrompt, InvalidPrompt, MAX_CANDIDATES};
pub use judge_judgments::JudgeJudgments;
pub use judgments::{Judgments, PairJudgment, PointJudgment};
pub use merge::{merge_shards, ShardOutput};
pub use records::{AuditRecord, GenerationPair, Summary};
pub use run::{run_filter, FilterOptions, FilterOutcome, InvalidPolicy, Shard};
pub use strategy::{Selected, Strategy};
