//! Batched pairwise comparisons on G = 4,096 groups of K = 10 and K = 64 candidates, from scores [G,K] and from
//! verdict log-odds [G,K,K]: `compare` (preference matrix, wins, Copeland ranks, the Bradley–Terry fit,
//! consistency) and `select_pairs` (UnifiedReward's rule, adjacent and all pairs). Throughput is in groups.
//! On the CPU by default; on CUDA device 0 with the `gpu-tests` feature (scripts/gpu_check.sh).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use unireward::ops::compare::{compare, select_pairs, CompareConfig, Pairing, SelectionConfig, Verdicts};
use unireward::DType;

mod common;
use common::{device, sync, tensor};

const GROUPS: usize = 4096;

fn comparisons(c: &mut Criterion) {
    let device = device();
    let mut group = c.benchmark_group(format!("compare_{device}"));
    group.throughput(Throughput::Elements(GROUPS as u64));
    group.sample_size(10);
    for k in [10, 64] {
        let scores = tensor(&[GROUPS, k], 1, 0.0, 3.0, DType::F32, device);
        let log_odds = tensor(&[GROUPS, k, k], 2, 0.0, 4.0, DType::F32, device);
        let cfg = CompareConfig::default();
        for (name, verdicts) in [("scores", Verdicts::Scores(&scores)), ("log_odds", Verdicts::LogOdds(&log_odds))] {
            group.bench_function(BenchmarkId::new(format!("compare_{name}"), format!("G{GROUPS}_K{k}")), |b| {
                b.iter(|| {
                    compare(verdicts, &cfg).unwrap();
                    sync(device);
                })
            });
            for pairing in [Pairing::Adjacent, Pairing::AllPairs] {
                let sel = SelectionConfig { pairing, ..Default::default() };
                let id = BenchmarkId::new(format!("select_{name}_{pairing:?}"), format!("G{GROUPS}_K{k}"));
                group.bench_function(id, |b| {
                    b.iter(|| {
                        select_pairs(verdicts, &scores, &sel).unwrap();
                        sync(device);
                    })
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, comparisons);
criterion_main!(benches);
