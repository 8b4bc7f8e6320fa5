//! The pipeline's stages above the trainers: the demo's procedural world (and, as they land, the filter, online
//! rounds and the whole-pipeline runner).

pub mod world;
