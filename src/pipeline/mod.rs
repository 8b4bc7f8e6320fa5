//! The stages built on the judge and the trainers: the sampler that draws K candidates per prompt from a policy,
//! the filter that turns a vision model's candidates into preference pairs, a policy's evaluation on held-out
//! questions, the pipeline's report, the runner that chains them all from one config (offline or in online
//! rounds), and the demo's procedural world.

pub mod append;
pub mod demo;
pub mod filter;
pub mod policy_eval;
pub mod report;
pub mod runner;
pub mod sample;
pub mod world;
