//! `unireward kernels`: the NVRTC compile report over every embedded kernel.

use unireward::runtime::cuda::nvrtc;

#[derive(clap::Args)]
pub struct Args {
    /// Architectures to compile for.
    #[arg(long, value_delimiter = ',', default_value = "sm_80,sm_90")]
    arch: Vec<String>,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    println!(
        "{:<14} {:<34} {:>6} {:>5} {:>7} {:>7} {:>6}",
        "module", "kernel", "arch", "regs", "spill_st", "spill_ld", "smem"
    );
    let (mut spilling, mut modules) = (0, 0);
    for module in unireward::kernel_modules() {
        modules += 1;
        for arch in &args.arch {
            let compiled = nvrtc::compile(module, arch, true)?;
            for k in nvrtc::ptxas_stats(&compiled.log) {
                spilling += usize::from(k.spill_stores + k.spill_loads > 0);
                println!(
                    "{:<14} {:<34} {:>6} {:>5} {:>7} {:>7} {:>6}",
                    module.name, k.name, k.arch, k.registers, k.spill_stores, k.spill_loads, k.shared
                );
            }
        }
    }
    println!("{modules} modules compiled for {}; {spilling} kernels spill", args.arch.join(", "));
    Ok(())
}
