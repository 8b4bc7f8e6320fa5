//! The vision ops at LLaVA-OneVision-0.5B's shapes: SigLIP-so400m's encoder on one 384×384 image (T = 729 patches,
//! H = 1152, I = 4304, 16 heads of d = 72) — LayerNorm, GELU-tanh, bidirectional attention — and the bilinear
//! resizes of the projected features (896 channels): 8 video frames pooled 27×27 → 14×14, and an anyres grid of 4×4
//! tiles (108×108 patches) down-sampled to anyres_max_9's 81×81. Forward and backward of each, on the CPU in f32
//! (and bf16), or on CUDA with the `gpu-tests` feature (scripts/gpu_check.sh).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use unireward::ops::attention::{attention, attention_backward, Masking};
use unireward::ops::gelu::{gelu, gelu_backward, GeluApproximation};
use unireward::ops::interpolate::{bilinear, bilinear_backward};
use unireward::ops::layernorm::{layernorm, layernorm_backward, LayerNormConfig};
use unireward::{DType, Tensor};

mod common;
use common::{device, sync, tensor};

const T: usize = 729;
const H: usize = 1152;
const I: usize = 4304;
const HEADS: usize = 16;
const D: usize = 72;
const PROJECTED: usize = 896;

fn bench(c: &mut Criterion) {
    let device = device();
    let mut group = c.benchmark_group(format!("vision_ops_{device}"));
    group.sample_size(10);
    let mask = Tensor::from_slice(&vec![1i64; T], &[1, T], device).unwrap();
    for dtype in [DType::F32, DType::BF16] {
        let mut run = |name: &str, f: &mut dyn FnMut()| {
            group.bench_function(BenchmarkId::new(name, dtype), |b| {
                b.iter(|| {
                    f();
                    sync(device);
                })
            });
        };
        let hidden = tensor(&[1, T, H], 0, 0.0, 1.0, dtype, device);
        let (w, b) = (tensor(&[H], 1, 1.0, 0.1, dtype, device), tensor(&[H], 2, 0.0, 0.1, dtype, device));
        let cfg = LayerNormConfig::default();
        let saved = layernorm(&hidden, &w, &b, &cfg).unwrap();
        run("layernorm_forward", &mut || drop(layernorm(&hidden, &w, &b, &cfg).unwrap()));
        run("layernorm_backward", &mut || drop(layernorm_backward(&hidden, &hidden, &w, &saved.stats).unwrap()));

        let mlp = tensor(&[1, T, I], 3, 0.0, 3.0, dtype, device);
        let tanh = GeluApproximation::Tanh;
        run("gelu_tanh_forward", &mut || drop(gelu(&mlp, tanh).unwrap()));
        run("gelu_tanh_backward", &mut || drop(gelu_backward(&mlp, &mlp, tanh).unwrap()));

        let q = tensor(&[1, T, HEADS, D], 4, 0.0, 1.0, dtype, device);
        let all = Masking::Bidirectional;
        let saved = attention(&q, &q, &q, &mask, all).unwrap();
        run("attention_bidirectional_forward", &mut || drop(attention(&q, &q, &q, &mask, all).unwrap()));
        run("attention_bidirectional_backward", &mut || {
            drop(attention_backward(&q, &q, &q, &q, &mask, all, &saved).unwrap())
        });

        for (name, n, from, to) in [("video_pool_8x27x27", 8, 27, 14), ("anyres_108x108", 1, 108, 81)] {
            let x = tensor(&[n, from, from, PROJECTED], 5, 0.0, 1.0, dtype, device);
            let g = tensor(&[n, to, to, PROJECTED], 6, 0.0, 1.0, dtype, device);
            run(&format!("bilinear_{name}_forward"), &mut || drop(bilinear(&x, [to, to]).unwrap()));
            run(&format!("bilinear_{name}_backward"), &mut || drop(bilinear_backward(&g, [from, from]).unwrap()));
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
