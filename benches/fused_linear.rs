//! Fused linear log-probs (hidden states · LM head → per-sequence log-probs), forward and forward + backward, on
//! the CPU with Qwen2-0.5B's head (H = 896, V = 151,936). CUDA numbers come from scripts/gpu_check.sh.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use unireward::ops::fused_linear::{
    fused_linear_logprobs, fused_linear_logprobs_backward, FusedLinearConfig, LinearHead,
};
use unireward::{DType, Tensor};

mod common;
use common::{device, sync, tensor};

fn bench(c: &mut Criterion) {
    let device = device();
    let (n, t, h, v) = (2, 32, 896, 151_936);
    let mut group = c.benchmark_group(format!("fused_linear_{device}"));
    group.sample_size(10);
    group.throughput(Throughput::Elements((n * t) as u64));
    for dtype in [DType::F32, DType::BF16] {
        let hidden = tensor(&[n, t, h], 0, 0.0, 1.0, dtype, device);
        let weight = tensor(&[v, h], 0, 0.0, 0.03, dtype, device);
        let labels: Vec<i64> = (0..n * t).map(|i| ((i * 104_729) % v) as i64).collect();
        let labels = Tensor::from_slice(&labels, &[n, t], device).unwrap();
        let grad = Tensor::from_slice(&vec![1.0f32; n], &[n], device).unwrap();
        let head = LinearHead { hidden: &hidden, weight: &weight, bias: None };
        let cfg = FusedLinearConfig::default();
        group.bench_function(BenchmarkId::new("forward", dtype), |b| {
            b.iter(|| {
                let out = fused_linear_logprobs(head, &labels, None, &cfg).unwrap();
                sync(device);
                out
            })
        });
        group.bench_function(BenchmarkId::new("forward_backward", dtype), |b| {
            b.iter(|| {
                let out = fused_linear_logprobs(head, &labels, None, &cfg).unwrap();
                let grads = fused_linear_logprobs_backward(head, &labels, None, &out, &grad, &cfg).unwrap();
                sync(device);
                grads
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
