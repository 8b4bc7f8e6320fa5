//! The transformer ops at Qwen2-0.5B's shapes (H = 896, 14 query heads, 2 KV heads, d = 64, I = 4864,
//! vocabulary 151,936) for one sequence of T = 512 tokens: forward and backward of each op, on the CPU in f32
//! (and bf16), or on CUDA with the `gpu-tests` feature (scripts/gpu_check.sh).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use unireward::ops::attention::{attention, attention_backward, attention_cached, kv_cache_write, Masking};
use unireward::ops::embedding::{embedding, embedding_backward};
use unireward::ops::linear::{linear, linear_backward};
use unireward::ops::rmsnorm::{rmsnorm, rmsnorm_backward, RmsNormConfig};
use unireward::ops::rope::{rope, rope_backward, RopeConfig};
use unireward::ops::swiglu::{swiglu, swiglu_backward};
use unireward::{DType, Tensor};

mod common;
use common::{device, sync, tensor};

const T: usize = 512;
const H: usize = 896;
const HQ: usize = 14;
const HKV: usize = 2;
const D: usize = 64;
const I: usize = 4864;
const V: usize = 151_936;

fn bench(c: &mut Criterion) {
    let device = device();
    let mut group = c.benchmark_group(format!("transformer_ops_{device}"));
    group.sample_size(10);
    group.throughput(Throughput::Elements(T as u64));
    let ids: Vec<i64> = (0..T).map(|i| ((i * 104_729) % V) as i64).collect();
    let ids = Tensor::from_slice(&ids, &[1, T], device).unwrap();
    let positions: Vec<i64> = (0..T as i64).collect();
    let positions = Tensor::from_slice(&positions, &[1, T], device).unwrap();
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
        let table = tensor(&[V, H], 0, 0.0, 0.02, dtype, device);
        run("embedding_forward", &mut || drop(embedding(&table, &ids).unwrap()));
        run("embedding_backward", &mut || drop(embedding_backward(&hidden, &ids, V).unwrap()));
        drop(table);

        let w = tensor(&[H], 0, 0.0, 1.0, dtype, device);
        let saved = rmsnorm(&hidden, &w, &RmsNormConfig::default()).unwrap();
        run("rmsnorm_forward", &mut || drop(rmsnorm(&hidden, &w, &RmsNormConfig::default()).unwrap()));
        run("rmsnorm_backward", &mut || drop(rmsnorm_backward(&hidden, &hidden, &w, &saved.rstd).unwrap()));

        let q = tensor(&[1, T, HQ, D], 0, 0.0, 1.0, dtype, device);
        let k = tensor(&[1, T, HKV, D], 0, 0.0, 1.0, dtype, device);
        let cfg = RopeConfig::default();
        run("rope_q_forward", &mut || drop(rope(&q, &positions, &cfg).unwrap()));
        run("rope_q_backward", &mut || drop(rope_backward(&q, &positions, &cfg).unwrap()));

        let causal = Masking::Causal;
        let saved = attention(&q, &k, &k, &mask, causal).unwrap();
        run("attention_forward", &mut || drop(attention(&q, &k, &k, &mask, causal).unwrap()));
        run("attention_backward", &mut || drop(attention_backward(&q, &q, &k, &k, &mask, causal, &saved).unwrap()));

        // Decode: 8 sequences, one new token each, over a 1024-slot cache filled to different lengths.
        let (q1, k1) =
            (tensor(&[8, 1, HQ, D], 0, 0.0, 1.0, dtype, device), tensor(&[8, 1, HKV, D], 0, 0.0, 1.0, dtype, device));
        let mut cache = tensor(&[8, 1024, HKV, D], 0, 0.0, 1.0, dtype, device);
        let starts: Vec<usize> = (0..8).map(|n| 1000 - 100 * n).collect();
        let key_mask = Tensor::from_slice(&vec![1i64; 8 * 1024], &[8, 1024], device).unwrap();
        run("attention_cached_decode_8x1024", &mut || {
            drop(attention_cached(&q1, &cache, &cache, &key_mask, &starts).unwrap())
        });
        run("kv_cache_write_decode_8", &mut || kv_cache_write(&mut cache, &k1, &starts).unwrap());

        let (w_up, b_q) = (tensor(&[I, H], 0, 0.0, 0.03, dtype, device), tensor(&[I], 0, 0.0, 0.1, dtype, device));
        let grad_up = tensor(&[1, T, I], 0, 0.0, 1.0, dtype, device);
        run("linear_896x4864_forward", &mut || drop(linear(&hidden, &w_up, Some(&b_q)).unwrap()));
        run("linear_896x4864_backward", &mut || drop(linear_backward(&grad_up, &hidden, &w_up, Some(&b_q)).unwrap()));

        run("swiglu_forward", &mut || drop(swiglu(&grad_up, &grad_up).unwrap()));
        run("swiglu_backward", &mut || drop(swiglu_backward(&grad_up, &grad_up, &grad_up).unwrap()));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
