//! Training data: LLaVA conversation files for supervised fine-tuning of the judge (UnifiedReward's training sets)
//! and preference-pair files for DPO, tokenized with the checkpoint's chat template and loss masks, checked record
//! by record (bad ones reported with their line, skipped or refused), batched with padding, grouped by length,
//! shuffled from a seed and mixed across tasks with per-task weights.
//!
//! ```text
//! conversations: {"id": "1", "image": "a.png" | ["a.png", "b.png"], "video": "v.mp4", "task": "image_pair",
//!                 "conversations": [{"from": "human", "value": "<image>\n..."}, {"from": "gpt", "value": "..."}]}
//! pairs:         {"prompt": "<image>\n...", "chosen": "...", "rejected": "...", "image": "a.png", "task": "...",
//!                 "margin": 0.5}                            (margin optional: the reward trainer's Bradley–Terry margin)
//! rankings:      {"prompt": "...", "responses": ["best", "second", ..., "worst"], "image": ..., "task": ...}
//! ```

mod batch;
mod dataset;
mod media;
mod problems;
mod record;
mod sampler;
mod tokenize;

pub use batch::{collate_conversations, collate_pairs, collate_rankings, SequenceBatch};
pub use dataset::{
    DataOptions, DataSource, Dataset, PairDataset, PairExample, RankingDataset, RankingExample, SftDataset, SftExample,
    MAX_LINE_BYTES,
};
pub use media::{LoadedMedia, MediaLoader, DEFAULT_VIDEO_FRAMES};
pub use problems::{BadRecord, BadRecordPolicy, DataReport, Problem};
pub use record::{MediaKind, MediaRef, IMAGE_PLACEHOLDER, MAX_RESPONSES, VIDEO_PLACEHOLDER};
pub use sampler::{BatchIndices, BatchSampler, LoaderState, SamplerConfig, MAX_TASK_WEIGHT};
pub use tokenize::{ConversationTokenizer, LabelMask, IGNORE_INDEX};
