// Its own file, without inner attributes, because build.rs includes it too: the library's SONAME on Linux is
// `libunireward.so.<UR_ABI_VERSION>`, so programs built against one ABI never load a library of another.

/// The C ABI's version: bumped on any change that breaks a program built against an older header. Compare it with
/// `ur_abi_version()` at start-up. Version 2 added the model handle (`ur_model_*`) and `UR_ERROR_CHECKPOINT`; version 3 gave
/// `ur_verdict_head_forward/_backward` the count of their `class_values` (`num_class_values`); version 4 gave the
/// metrics structs a leading `struct_size`, which the caller sets.
pub const UR_ABI_VERSION: u32 = 4;
