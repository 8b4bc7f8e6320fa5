//! The stages built on the judge and the trainers: the sampler that draws K candidates per prompt from a policy,
//! the filter that turns a vision model's candidates into preference
//! pairs, and the demo's procedural world (online rounds and the whole-pipeline runner to come).

pub mod append;
pub mod filter;
pub mod sample;
pub mod world;
