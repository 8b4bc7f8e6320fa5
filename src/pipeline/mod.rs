//! The stages built on the judge and the trainers: the filter that turns a vision model's candidates into preference
//! pairs, and the demo's procedural world (online rounds and the whole-pipeline runner to come).

pub mod filter;
pub mod world;
