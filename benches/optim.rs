//! The optimizer step alone on the parameter shapes of Qwen2-0.5B (494,032,768 values with the tied head; set
//! UNIREWARD_BENCH_OPTIM_LAYERS for fewer decoder layers): AdamW, AdamW after global-norm clipping, and bf16
//! parameters with fp32 masters. `scripts/bench_torch_adamw.py` times PyTorch's AdamW (foreach and fused) on the
//! same shapes. On the CPU by default; on CUDA device 0 with the `gpu-tests` feature (scripts/gpu_check.sh).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use unireward::train::optim::{AdamW, AdamWConfig};
use unireward::{DType, Tensor};

mod common;
use common::{device, sync, tensor};

/// Qwen2-0.5B's parameter shapes: embeddings, `layers` decoder layers, final norm.
fn qwen2_05b_shapes(layers: usize) -> Vec<Vec<usize>> {
    let (h, kv, inter, vocab) = (896, 128, 4864, 151_936);
    let layer: [&[usize]; 12] =
        [&[h, h], &[h], &[kv, h], &[kv], &[kv, h], &[kv], &[h, h], &[inter, h], &[inter, h], &[h, inter], &[h], &[h]];
    let mut shapes = vec![vec![vocab, h]];
    for _ in 0..layers {
        shapes.extend(layer.iter().map(|s| s.to_vec()));
    }
    shapes.push(vec![h]);
    shapes
}

fn adamw(c: &mut Criterion) {
    let device = device();
    let layers = std::env::var("UNIREWARD_BENCH_OPTIM_LAYERS").ok().and_then(|v| v.parse().ok()).unwrap_or(24);
    let shapes = qwen2_05b_shapes(layers);
    let names: Vec<String> = (0..shapes.len()).map(|k| format!("p{k}")).collect();
    let numel: usize = shapes.iter().map(|s| s.iter().product::<usize>()).sum();
    let mut group = c.benchmark_group(format!("adamw_qwen2_0.5b_{device}"));
    group.sample_size(10);
    group.throughput(Throughput::Elements(numel as u64));
    for (label, dtype, max_grad_norm) in [
        ("step_f32", DType::F32, None),
        ("clip_step_f32", DType::F32, Some(1.0)),
        ("step_bf16_masters", DType::BF16, None),
    ] {
        let mut params: Vec<Tensor> =
            shapes.iter().enumerate().map(|(k, s)| tensor(s, k, 0.0, 0.02, dtype, device)).collect();
        let grads: Vec<Tensor> =
            shapes.iter().enumerate().map(|(k, s)| tensor(s, k + 7, 0.0, 1e-3, dtype, device)).collect();
        let named_grads: Vec<(String, &Tensor)> = names.iter().cloned().zip(grads.iter()).collect();
        let config = AdamWConfig { lr: 1e-4, max_grad_norm, ..AdamWConfig::default() };
        let named: Vec<(String, &Tensor)> = names.iter().cloned().zip(params.iter()).collect();
        let mut opt = AdamW::new(&named, vec![], config).unwrap();
        group.bench_function(label, |b| {
            b.iter(|| {
                let mut named: Vec<(String, &mut Tensor)> = names.iter().cloned().zip(params.iter_mut()).collect();
                let report = opt.step(&mut named, &named_grads).unwrap();
                sync(device);
                report
            })
        });
    }
    group.finish();
}

criterion_group!(benches, adamw);
criterion_main!(benches);
