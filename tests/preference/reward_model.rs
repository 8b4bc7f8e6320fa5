//! (reward models: next)
