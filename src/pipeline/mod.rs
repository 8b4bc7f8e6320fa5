//! The stages built on the judge: the filter that turns a vision model's candidates into preference pairs.

pub mod filter;
