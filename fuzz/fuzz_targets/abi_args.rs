//! libFuzzer over the C ABI's argument checking: `cargo +nightly fuzz run abi_args` (from the repository root).
//! The same harness runs on stable in `tests/abi_fuzz_smoke.rs`.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    harness::run(data);
});
