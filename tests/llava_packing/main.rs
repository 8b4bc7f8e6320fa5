//! LLaVA-OneVision's projector and feature packing against transformers 4.57.1 in float64 (fixtures of
//! `tests/reference/llava_packing.py`: anyres unpadding both ways, anyres_max down-sampling, two images in a sample,
//! videos on even and odd patch grids, a text-only batch, a padded batch mixing them), finite differences of the
//! whole pipeline on fresh random inputs, the row-copy op, bad input, and (with `gpu-tests`) CUDA against CPU.

mod common;

mod cuda;
mod errors;
mod finite_differences;
mod reference;
mod rows;
