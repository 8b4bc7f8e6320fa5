//! Training: the data pipeline (conversation and preference-pair files, tokenization with loss masks, batching,
//! shuffling and task mixing that a resume can restore) and checkpoints written in the Hugging Face layout.

pub mod checkpoint;
pub mod data;
