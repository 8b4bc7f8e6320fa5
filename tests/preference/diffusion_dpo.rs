//! (diffusion: next)
