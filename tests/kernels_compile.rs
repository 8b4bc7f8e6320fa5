//! Every kernel file compiles with NVRTC for sm_80 and sm_90 (and for the architecture of each local GPU, if any),
//! with no GPU needed; prints ptxas's registers, spills and stack per kernel.
//!
//! NVRTC must be loadable: `./scripts/test.sh` installs the pinned wheel and puts it on `LD_LIBRARY_PATH`. Without
//! it this test fails rather than skips, so that CI cannot pass without compiling the kernels.
//! Run `cargo test --test kernels_compile -- --nocapture` to see the table.

use unireward::runtime::cuda::{self, nvrtc};

/// The architectures CI compiles for (A100, H100/H200).
const CI_ARCHS: [&str; 2] = ["sm_80", "sm_90"];

fn archs() -> Vec<String> {
    let mut archs: Vec<String> = CI_ARCHS.iter().map(|a| a.to_string()).collect();
    for ordinal in 0..cuda::device_count() {
        match cuda::backend(ordinal) {
            Ok(b) if !archs.iter().any(|a| a == b.arch()) => archs.push(b.arch().to_string()),
            Ok(_) => {}
            Err(e) => panic!("CUDA device {ordinal} is listed by the driver but unusable: {e}"),
        }
    }
    archs
}

#[test]
fn every_kernel_compiles_with_nvrtc() {
    assert!(
        cuda::nvrtc_present(),
        "NVRTC (libnvrtc.so.13) cannot be loaded, so the kernels cannot be compile-checked. Run ./scripts/test.sh, \
         which installs the pinned nvidia-cuda-nvrtc wheel and puts it on LD_LIBRARY_PATH."
    );
    let archs = archs();
    let mut failures = Vec::new();
    let mut spilling = 0;
    println!("\nNVRTC compile check: {} kernel files × {archs:?}", unireward::kernel_modules().count());
    println!(
        "{:<14} {:<44} {:<6} {:>5} {:>12} {:>11} {:>11} {:>7}",
        "file", "kernel", "arch", "regs", "spill stores", "spill loads", "stack", "smem"
    );
    for module in unireward::kernel_modules() {
        for arch in &archs {
            let compiled = match nvrtc::compile(module, arch, true) {
                Ok(c) => c,
                Err(e) => {
                    println!("{:<14} {:<44} {arch:<6} COMPILE FAILED", module.name, "-");
                    failures.push(format!("{} for {arch}: {e}", module.name));
                    continue;
                }
            };
            let stats = nvrtc::ptxas_stats(&compiled.log);
            if stats.is_empty() {
                // Either a file without kernels or a ptxas log this parser no longer reads: both need a look.
                println!("{:<14} {:<44} {arch:<6} NO KERNELS IN THE PTXAS LOG", module.name, "-");
                failures
                    .push(format!("{} for {arch}: no entry function in the ptxas log:\n{}", module.name, compiled.log));
            }
            for k in stats {
                let flag = if k.spill_stores + k.spill_loads > 0 { "  <- spills" } else { "" };
                spilling += usize::from(!flag.is_empty());
                println!(
                    "{:<14} {:<44} {:<6} {:>5} {:>12} {:>11} {:>11} {:>7}{flag}",
                    module.name, k.name, k.arch, k.registers, k.spill_stores, k.spill_loads, k.stack_frame, k.shared
                );
            }
        }
    }
    println!("(bytes per thread for spills and stack; static shared memory per block; {spilling} kernels spill)\n");
    assert!(failures.is_empty(), "{} kernel compilations failed:\n{}", failures.len(), failures.join("\n\n"));
}
