//! The SigLIP-so400m vision tower on one 384×384 image as LLaVA-OneVision runs it (26 of 27 encoder layers, 729
//! patches, f32): the inference forward (`encode`), the training forward, and forward + backward to every parameter
//! and the pixels. On the CPU, or on CUDA with the
//! `gpu-tests` feature (scripts/gpu_check.sh). A forward is ~0.6 TFLOP: seconds per iteration on a few cores, hence
//! the minimum sample count; `UNIREWARD_SIGLIP_BENCH_LAYERS` runs fewer layers on a busy machine (the time scales
//! with the layer count), `UNIREWARD_SIGLIP_BENCH_TILES` more tiles (10: a 9-tile anyres image and its base
//! image). scripts/bench_torch_siglip.py times transformers' eager tower at the same shapes.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use unireward::model::siglip::SiglipWeights;
use unireward::model::{ForwardOptions, SiglipVisionConfig, SiglipVisionTower};
use unireward::DType;

mod common;
use common::{device, sync, tensor};

/// LLaVA's feature layer: the last of 27 dropped.
const DEFAULT_LAYERS: usize = 26;

fn bench(c: &mut Criterion) {
    let device = device();
    let config = SiglipVisionConfig::so400m_patch14_384();
    let from_env =
        |name: &str, default: usize| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let layers = from_env("UNIREWARD_SIGLIP_BENCH_LAYERS", DEFAULT_LAYERS);
    let tiles = from_env("UNIREWARD_SIGLIP_BENCH_TILES", 1);
    let mut seed = 0;
    let weights = SiglipWeights::from_fn(&config, layers, |_, shape| {
        seed += 1;
        Ok(tensor(shape, seed, 0.0, 0.05, DType::F32, device))
    })
    .unwrap();
    let tower = SiglipVisionTower::new(config, weights).unwrap();
    let pixels = tensor(&[tiles, 3, 384, 384], 100, 0.0, 1.0, DType::F32, device);
    let grad = tensor(&[tiles, 729, 1152], 101, 0.0, 1.0, DType::F32, device);

    let pass = tower.forward(&pixels, ForwardOptions::default()).unwrap();
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    eprintln!(
        "siglip bench: parameters {:.1} MiB, activations with the backward's scratch {:.1} MiB (one arena)",
        mib(tower.weights.size_in_bytes()),
        mib(pass.activation_bytes())
    );
    drop(pass);

    let mut group = c.benchmark_group(format!("siglip_so400m_{layers}_layers_{tiles}_tiles_{device}"));
    group.sample_size(10).warm_up_time(Duration::from_millis(1)).measurement_time(Duration::from_secs(1));
    let opts = ForwardOptions::default();
    // The inference forward (a frozen tower's, the judge's): no activations kept, as PyTorch's under no_grad.
    group.bench_function("encode_f32", |b| {
        b.iter(|| {
            drop(tower.encode(&pixels).unwrap());
            sync(device);
        })
    });
    group.bench_function("forward_f32", |b| {
        b.iter(|| {
            drop(tower.forward(&pixels, opts).unwrap());
            sync(device);
        })
    });
    group.bench_function("forward_backward_f32", |b| {
        b.iter(|| {
            let pass = tower.forward(&pixels, opts).unwrap();
            drop(tower.backward(pass, &grad).unwrap());
            sync(device);
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
