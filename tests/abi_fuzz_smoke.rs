//! The C ABI fuzz harness (`fuzz/harness.rs`, also behind the libFuzzer target `fuzz/fuzz_targets/abi_args.rs`)
//! on stable Rust: a few thousand seeded random inputs, each one export call with random, often broken DLTensor
//! descriptors and configs. Every call must return a status, never crash or panic across the boundary.

#[path = "../fuzz/harness.rs"]
mod harness;

use rand::{Rng, RngCore, SeedableRng};

#[test]
fn random_descriptors_get_a_status_never_a_crash() {
    let seed: u64 = std::env::var("UNIREWARD_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_c0de);
    let cases: usize = std::env::var("UNIREWARD_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(4000);
    println!("seed {seed}, {cases} cases (UNIREWARD_FUZZ_SEED / UNIREWARD_FUZZ_CASES)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut counts = std::collections::BTreeMap::new();
    for case in 0..cases {
        let mut input = vec![0u8; rng.gen_range(0..512)];
        rng.fill_bytes(&mut input);
        let outcome = std::panic::catch_unwind(|| harness::run(&input));
        let status = outcome.unwrap_or_else(|_| panic!("case {case} (seed {seed}) failed; input: {input:?}"));
        *counts.entry(format!("{status:?}")).or_insert(0usize) += 1;
    }
    println!("{counts:#?}");
    // The generator must reach the ops (successes) and each kind of refusal, or it tests little.
    for status in ["UR_OK", "UR_ERROR_NULL_POINTER", "UR_ERROR_INVALID_ARGUMENT", "UR_ERROR_SHAPE", "UR_ERROR_DTYPE"]
        .into_iter()
        .chain(["UR_ERROR_DEVICE", "UR_ERROR_CUDA_UNAVAILABLE", "UR_ERROR_UNSUPPORTED"])
    {
        assert!(counts.get(status).is_some_and(|&n| n >= cases / 400), "too few {status}: {counts:?}");
    }
}
