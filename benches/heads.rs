//! Reward-model heads, forward and forward + backward: the verdict head on 1,024 answer positions of a Qwen2
//! vocabulary (V = 151,936) with a 3-class pair verdict and a 10-value score scale, and the scalar head on
//! N = 1,024 sequences of T = 512 tokens, H = 896 (Qwen2-0.5B), C = 1 (Bradley–Terry) and C = 4 (attributes).
//! On the CPU by default; on CUDA device 0 with the `gpu-tests` feature (scripts/gpu_check.sh).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use unireward::ops::heads::{
    scalar_reward, scalar_reward_backward, verdict_head, verdict_head_backward, ScalarHead, VerdictClasses,
    VerdictGrads,
};
use unireward::{DType, Tensor};

mod common;
use common::{device, sync, tensor};

fn verdict(c: &mut Criterion) {
    let device = device();
    let (b, v) = (1024, 151_936);
    // Token ids of " A", "A", " B", "B", " tie", "tie"-like sets, and of "1" … "10" with and without a space.
    let pair = VerdictClasses::from_sets(&[&[362, 32], &[425, 33], &[18131, 48731]]).unwrap();
    let score_ids: Vec<[u32; 2]> = (0..10).map(|k| [16 + k, 220 + 16 + k]).collect();
    let score_sets: Vec<&[u32]> = score_ids.iter().map(|s| &s[..]).collect();
    let values: Vec<f32> = (1..=10).map(|s| s as f32).collect();
    let scores = VerdictClasses::from_sets(&score_sets).unwrap().with_values(&values).unwrap();

    let mut group = c.benchmark_group(format!("verdict_head_{device}"));
    group.sample_size(10);
    group.throughput(Throughput::Elements(b as u64));
    for dtype in [DType::F32, DType::BF16] {
        let logits = tensor(&[b, v], 0, 0.0, 8.0, dtype, device);
        for (name, classes) in [("pair3", &pair), ("score10", &scores)] {
            let k = classes.num_classes();
            let g = Tensor::from_slice(&vec![0.5f32; b * k], &[b, k], device).unwrap();
            let ge = Tensor::from_slice(&vec![1.0f32; b], &[b], device).unwrap();
            let grads = VerdictGrads { log_probs: Some(&g), expected_score: classes.values().map(|_| &ge) };
            group.bench_function(BenchmarkId::new(format!("forward_{name}"), dtype), |bench| {
                bench.iter(|| {
                    let out = verdict_head(&logits, classes).unwrap();
                    sync(device);
                    out
                })
            });
            group.bench_function(BenchmarkId::new(format!("forward_backward_{name}"), dtype), |bench| {
                bench.iter(|| {
                    let out = verdict_head(&logits, classes).unwrap();
                    let grad = verdict_head_backward(&logits, classes, grads).unwrap();
                    sync(device);
                    (out, grad)
                })
            });
        }
    }
    group.finish();
}

fn scalar(c: &mut Criterion) {
    let device = device();
    let (n, t, h) = (1024, 512, 896);
    let ends: Vec<i64> = (0..n).map(|i| (100 + i * 37 % 412) as i64).collect();
    let ends = Tensor::from_slice(&ends, &[n], device).unwrap();
    let mut group = c.benchmark_group(format!("scalar_head_{device}"));
    group.sample_size(10);
    group.throughput(Throughput::Elements(n as u64));
    for dtype in [DType::BF16, DType::F32] {
        let hidden = tensor(&[n, t, h], 0, 0.0, 1.0, dtype, device);
        for classes in [1, 4] {
            let weight = tensor(&[classes, h], 0, 0.0, 0.03, dtype, device);
            let bias = tensor(&[classes], 0, 0.0, 0.1, dtype, device);
            let head = ScalarHead { hidden: &hidden, ends: &ends, weight: &weight, bias: Some(&bias) };
            let grad = Tensor::from_slice(&vec![1.0f32; n * classes], &[n, classes], device).unwrap();
            group.bench_function(BenchmarkId::new(format!("forward_c{classes}"), dtype), |bench| {
                bench.iter(|| {
                    let out = scalar_reward(head).unwrap();
                    sync(device);
                    out
                })
            });
            group.bench_function(BenchmarkId::new(format!("forward_backward_c{classes}"), dtype), |bench| {
                bench.iter(|| {
                    let out = scalar_reward(head).unwrap();
                    let grads = scalar_reward_backward(head, &grad).unwrap();
                    sync(device);
                    (out, grads)
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, verdict, scalar);
criterion_main!(benches);
