//! `unireward bench products`: the CPU matrix products alone at Qwen2-0.5B's shapes (T tokens against each weight,
//! as the linear layers and the LM head run them: forward `x·Wᵀ`, backward `g·W` and `gᵀ·x`), both operands f32,
//! bf16 or f16, in GFLOP/s, at the instruction-set level the CPU has or a forced lower one;
//! `scripts/bench_torch_matmul.py` runs the same products with `torch.mm`.

use std::time::Instant;

use unireward::runtime::cpu::{isa, matmul_tensors, with_isa, Isa, TensorMat};
use unireward::{DType, Device, Tensor};

use crate::synthetic;

#[derive(clap::Args)]
pub struct ProductsArgs {
    /// Tokens (rows of the activations).
    #[arg(long, default_value_t = 128)]
    t: usize,
    /// Dtype of both operands: f32, bf16 or f16 (results are f32; bf16 × bf16 uses AVX512-BF16 where present).
    #[arg(long, default_value = "f32", value_parser = crate::parse_float_dtype)]
    dtype: DType,
    /// Which product: `y` (x·Wᵀ, the forward), `dx` (g·W) or `dw` (gᵀ·x).
    #[arg(long, default_value = "y", value_parser = ["y", "dx", "dw"])]
    product: String,
    /// Instruction-set level (portable, avx2, avx512, avx512bf16; default: the best this CPU has).
    #[arg(long, value_parser = |s: &str| Isa::parse(s).map_err(|e| e.to_string()))]
    isa: Option<Isa>,
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
    let level = args.isa.unwrap_or_else(isa::detected);
    with_isa(level, || run_at_level(args, level))?
}

fn mat(tensor: &Tensor, rows: usize, cols: usize, transposed: bool) -> TensorMat<'_> {
    TensorMat { tensor, rows, cols, transposed }
}

fn run_at_level(args: &ProductsArgs, level: Isa) -> anyhow::Result<()> {
    let formula = match args.product.as_str() {
        "y" => "x [T, in] · Wᵀ (W [out, in])",
        "dx" => "g [T, out] · W [out, in]",
        _ => "gᵀ (g [T, out]) · x [T, in]",
    };
    println!(
        "{formula}, {} into f32, T = {}, {} level, {} threads; best of {} runs after a warm-up",
        args.dtype,
        args.t,
        level.name(),
        rayon::current_num_threads(),
        args.iters
    );
    println!("{:<14} {:>8} {:>6} {:>10} {:>10}", "weight", "out", "in", "time", "GFLOP/s");
    for (name, out_features, in_features) in SHAPES {
        let (t, dtype, cpu) = (args.t, args.dtype, Device::Cpu);
        let w = synthetic::tensor(2, &[out_features, in_features], 0.03, dtype, cpu)?;
        let x = synthetic::tensor(1, &[t, in_features], 1.0, dtype, cpu)?;
        let g = synthetic::tensor(3, &[t, out_features], 1.0, dtype, cpu)?;
        let (a, b, len) = match args.product.as_str() {
            "y" => (mat(&x, t, in_features, false), mat(&w, out_features, in_features, true), t * out_features),
            "dx" => (mat(&g, t, out_features, false), mat(&w, out_features, in_features, false), t * in_features),
            _ => (mat(&g, t, out_features, true), mat(&x, t, in_features, false), out_features * in_features),
        };
        let mut dst = vec![0.0f32; len];
        let mut best = f64::INFINITY;
        for run in 0..=args.iters {
            let start = Instant::now();
            matmul_tensors(&mut dst, a, b, 0.0)?;
            if run > 0 {
                best = best.min(start.elapsed().as_secs_f64());
            }
        }
        let gflops = 2.0 * (t * out_features * in_features) as f64 / best / 1e9;
        println!("{name:<14} {out_features:>8} {in_features:>6} {:>8.2} ms {gflops:>10.1}", best * 1e3);
    }
    Ok(())
}
