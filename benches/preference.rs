//! Preference losses, forward + backward in one call: the DPO family on 4,096 pairs, the K-wise reward-model losses
//! on G = 4,096 groups of K = 8, Bradley–Terry on 4,096 pairs, and Diffusion-DPO on B = 8 samples of 4·64·64.
//! On the CPU by default; on CUDA device 0 with the `gpu-tests` feature (scripts/gpu_check.sh).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use unireward::ops::preference::{
    bradley_terry_loss, diffusion_dpo_loss, dpo_loss, kwise_loss, BradleyTerryConfig, DiffusionDpoConfig,
    DiffusionDpoInputs, DpoConfig, DpoLossType, KwiseConfig, KwiseMethod, PreferenceLogps,
};
use unireward::{DType, Tensor};

mod common;
use common::{device, sync, tensor};

fn dpo(c: &mut Criterion) {
    let device = device();
    let pairs = 4096;
    let mut group = c.benchmark_group(format!("dpo_{device}"));
    group.throughput(Throughput::Elements(pairs as u64));
    let lengths: Vec<i64> = (0..pairs).map(|i| 16 + (i * 37 % 200) as i64).collect();
    let lengths = Tensor::from_slice(&lengths, &[pairs], device).unwrap();
    for dtype in [DType::F32, DType::BF16] {
        let t = |seed| tensor(&[pairs], seed, -120.0, 60.0, dtype, device);
        let (pc, pr, rc, rr) = (t(1), t(2), t(3), t(4));
        for loss_type in [DpoLossType::Sigmoid, DpoLossType::Ipo, DpoLossType::Orpo] {
            let mut inputs = PreferenceLogps::new(&pc, &pr).with_lengths(&lengths, &lengths);
            if loss_type.uses_reference() {
                inputs = inputs.with_reference(&rc, &rr);
            }
            let cfg = DpoConfig { loss_type, rpo_alpha: Some(1.0), ..Default::default() };
            group.bench_function(BenchmarkId::new(loss_type.trl_name(), dtype), |b| {
                b.iter(|| dpo_loss(&inputs, &cfg).unwrap())
            });
        }
    }
    group.finish();
}

fn reward_model(c: &mut Criterion) {
    let device = device();
    let (groups, k) = (4096, 8);
    let mut group = c.benchmark_group(format!("reward_model_{device}"));
    group.throughput(Throughput::Elements((groups * k) as u64));
    for dtype in [DType::F32, DType::BF16] {
        let rewards = tensor(&[groups, k], 5, 0.0, 3.0, dtype, device);
        for method in [KwiseMethod::AllPairs, KwiseMethod::PlackettLuce] {
            let cfg = KwiseConfig { method, grad_output: 1.0 };
            group.bench_function(BenchmarkId::new(format!("kwise_{method:?}_G{groups}_K{k}"), dtype), |b| {
                b.iter(|| kwise_loss(&rewards, None, &cfg).unwrap())
            });
        }
        let (rc, rr) = (tensor(&[groups], 6, 0.5, 2.0, dtype, device), tensor(&[groups], 7, 0.0, 2.0, dtype, device));
        let cfg = BradleyTerryConfig { center_rewards_coefficient: Some(0.01), grad_output: 1.0 };
        group.bench_function(BenchmarkId::new(format!("bradley_terry_P{groups}"), dtype), |b| {
            b.iter(|| bradley_terry_loss(&rc, &rr, None, &cfg).unwrap())
        });
    }
    group.finish();
}

fn diffusion_dpo(c: &mut Criterion) {
    let device = device();
    let shape = [8, 4, 64, 64];
    let mut group = c.benchmark_group(format!("diffusion_dpo_{device}"));
    group.throughput(Throughput::Elements(shape.iter().product::<usize>() as u64));
    for dtype in [DType::F32, DType::BF16] {
        let t: Vec<Tensor> = (0..6).map(|seed| tensor(&shape, 11 * seed, 0.0, 1.0, dtype, device)).collect();
        let inputs = DiffusionDpoInputs {
            model_winner: &t[0],
            model_loser: &t[1],
            ref_winner: &t[2],
            ref_loser: &t[3],
            target_winner: &t[4],
            target_loser: &t[5],
        };
        let cfg = DiffusionDpoConfig { beta: 5000.0, grad_output: 1.0 };
        group.bench_function(BenchmarkId::new("B8_D4x64x64", dtype), |b| {
            b.iter(|| {
                let out = diffusion_dpo_loss(&inputs, &cfg).unwrap();
                sync(device);
                out
            })
        });
    }
    group.finish();
}

criterion_group!(benches, dpo, reward_model, diffusion_dpo);
criterion_main!(benches);
