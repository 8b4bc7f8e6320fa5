//! The embedded demo: the whole pipeline on the procedural world, with nothing to download. The world's data set
//! and a tiny checkpoint made from nothing ([`crate::pipeline::world`]), pretrained on described answers into the
//! base model the judge and the policy are made from ([`base`]), a [`crate::pipeline::runner::PipelineConfig`]
//! chaining a judge trained jointly on the four tasks, a policy fine-tuned briefly, K samples per prompt, the
//! filter, DPO and the policy's held-out accuracy before and after ([`crate::pipeline::runner`]); beside it, one
//! judge per task trained on that task's share of the same data for the joint-versus-single comparison
//! ([`single_task`]); and the checks the world makes possible because it knows every answer ([`checks`]).

pub mod base;
pub mod checks;
mod config;
pub mod random_pairs;
pub mod single_task;

pub use base::pretrain_base;
pub use checks::{pair_truth, DemoChecks, PairTruth};
pub use config::{write_pipeline_config, DemoConfig};
pub use random_pairs::{dpo_on_random_pairs, random_pairs};
