//! `unireward bench products`: the CPU matrix products alone at Qwen2-0.5B's shapes (T tokens against each weight,
//! as the linear layers and the LM head run them), f32 and bf16/f16 weights, in GFLOP/s;
//! `scripts/bench_torch_matmul.py` runs the same products with `torch.mm`.

use std::time::Instant;

use unireward::runtime::cpu::{matmul_tensor, MatRef};
use unireward::{DType, Device};

use crate::synthetic;

#[derive(clap::Args)]
pub struct ProductsArgs {
    /// Tokens (rows of the activations).
    #[arg(long, default_value_t = 128)]
    t: usize,
    /// Weight dtype: f32, bf16 or f16 (activations and results are f32).
    #[arg(long, default_value = "f32", value_parser = crate::parse_float_dtype)]
    dtype: DType,
    /// Timed runs of each product after one warm-up; the best is reported.
    #[arg(long, default_value_t = 5)]
    iters: usize,
}

/// (name, out features, in features) of Qwen2-0.5B's weights.
const SHAPES: [(&str, usize, usize); 5] = [
    ("q/o proj", 896, 896),
    ("k/v proj", 128, 896),
    ("gate/up proj", 4864, 896),
    ("down proj", 896, 4864),
    ("lm head", 151_936, 896),
];

pub fn run(args: &ProductsArgs) -> anyhow::Result<()> {
    println!(
        "x [T, in] · Wᵀ (W [out, in], {}) into f32, T = {}, {} threads; best of {} runs after a warm-up",
        args.dtype,
        args.t,
        rayon::current_num_threads(),
        args.iters
    );
    println!("{:<14} {:>8} {:>6} {:>10} {:>10}", "weight", "out", "in", "time", "GFLOP/s");
    for (name, out_features, in_features) in SHAPES {
        let x = synthetic::values(1, args.t * in_features, 1.0);
        let w = synthetic::tensor(2, &[out_features, in_features], 0.03, args.dtype, Device::Cpu)?;
        let mut y = vec![0.0f32; args.t * out_features];
        let mut best = f64::INFINITY;
        for run in 0..=args.iters {
            let start = Instant::now();
            let x = MatRef::row_major(&x, args.t, in_features);
            matmul_tensor(&mut y, x, &w, (out_features, in_features), true, 0.0)?;
            if run > 0 {
                best = best.min(start.elapsed().as_secs_f64());
            }
        }
        let gflops = 2.0 * (args.t * out_features * in_features) as f64 / best / 1e9;
        println!("{name:<14} {out_features:>8} {in_features:>6} {:>8.2} ms {gflops:>10.1}", best * 1e3);
    }
    Ok(())
}
