//! Per-sequence log-probs from logits [N,T,V] with a Qwen2 vocabulary (V = 151,936): forward, forward + backward
//! (out of place and in place) and the naive path (materialised log-softmax), f32 and bf16. On the CPU by default;
//! with `--features gpu-tests` on CUDA device 0 (scripts/gpu_check.sh). The full-size comparison (N = 4, T = 512)
//! is `compare_fused_vs_naive`, behind `unireward bench logprobs`.

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use unireward::ops::logprobs::{
    naive_sequence_logprobs, naive_sequence_logprobs_backward, sequence_logprobs, sequence_logprobs_backward,
    sequence_logprobs_backward_in_place, LogProbsConfig,
};
use unireward::{DType, Device, Tensor};

mod common;
use common::{device, sync, tensor};

fn bench(c: &mut Criterion) {
    let device = device();
    let (n, t, v) = (2, 64, 151_936);
    let mut group = c.benchmark_group(format!("logprobs_{device}"));
    group.sample_size(10);
    let labels: Vec<i64> = (0..n * t).map(|i| if i % t < 8 { -100 } else { ((i * 104_729) % v) as i64 }).collect();
    let labels = Tensor::from_slice(&labels, &[n, t], device).unwrap();
    let grad = Tensor::from_slice(&vec![1.0f32; n], &[n], device).unwrap();
    let cfg = LogProbsConfig::default();
    for dtype in [DType::F32, DType::BF16] {
        let logits = tensor(&[n, t, v], 0, 0.0, 8.0, dtype, device);
        group.throughput(Throughput::Bytes(logits.size_in_bytes() as u64));
        group.bench_function(BenchmarkId::new("forward", dtype), |b| {
            b.iter(|| {
                let out = sequence_logprobs(&logits, &labels, None, &cfg).unwrap();
                sync(device);
                out
            })
        });
        group.bench_function(BenchmarkId::new("forward_backward", dtype), |b| {
            b.iter(|| {
                let out = sequence_logprobs(&logits, &labels, None, &cfg).unwrap();
                let g = sequence_logprobs_backward(&logits, &labels, None, &out, &grad, &cfg).unwrap();
                sync(device);
                g
            })
        });
        group.bench_function(BenchmarkId::new("forward_backward_in_place", dtype), |b| {
            b.iter_batched(
                || logits.try_clone().unwrap(),
                |mut x| {
                    let out = sequence_logprobs(&x, &labels, None, &cfg).unwrap();
                    sequence_logprobs_backward_in_place(&mut x, &labels, None, &out, &grad, &cfg).unwrap();
                    sync(device);
                    x
                },
                BatchSize::PerIteration,
            )
        });
        if device == Device::Cpu {
            group.bench_function(BenchmarkId::new("naive_forward_backward", dtype), |b| {
                b.iter(|| {
                    let out = naive_sequence_logprobs(&logits, &labels, None, &cfg).unwrap();
                    naive_sequence_logprobs_backward(&logits, &labels, None, &out, &grad, &cfg).unwrap()
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
