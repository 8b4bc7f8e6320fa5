//! `attention_cached` and `kv_cache_write`: against a plain f64 loop on random caches (holes in the key mask,
//! different starts per sequence), against `attention` on a right-padded batch and when decoding token by token, the
//! broadcast write of prefix sharing, bad input, and (gpu-tests) CUDA against CPU.

use rand::rngs::StdRng;
use rand::Rng;
use unireward::ops::attention::{attention, attention_cached, kv_cache_write, Masking};
use unireward::{DType, Device, Error, Tensor};

use crate::common::*;

/// Sizes of a cached-attention problem.
#[derive(Clone, Copy, Debug)]
struct Dims {
    n: usize,
    tq: usize,
    s: usize,
    hq: usize,
    hkv: usize,
    d: usize,
}

impl Dims {
    fn q_len(&self) -> usize {
        self.n * self.tq * self.hq * self.d
    }
    fn kv_len(&self) -> usize {
        self.n * self.s * self.hkv * self.d
    }
    fn q_at(&self, n: usize, i: usize, h: usize) -> usize {
        ((n * self.tq + i) * self.hq + h) * self.d
    }
    /// Key j of the KV head that query head h reads.
    fn kv_at(&self, n: usize, j: usize, h: usize) -> usize {
        ((n * self.s + j) * self.hkv + h / (self.hq / self.hkv)) * self.d
    }
}

/// f64 reference: query i of sequence n at slot starts[n] + i sees the real keys up to its slot; zeros if none.
fn reference(z: Dims, q: &[f64], k: &[f64], v: &[f64], mask: &[i64], starts: &[usize]) -> Vec<f64> {
    let scale = 1.0 / (z.d as f64).sqrt();
    let mut out = vec![0.0; z.q_len()];
    for n in 0..z.n {
        for i in 0..z.tq {
            let seen: Vec<usize> = (0..=starts[n] + i).filter(|&j| mask[n * z.s + j] != 0).collect();
            for h in 0..z.hq {
                let qi = &q[z.q_at(n, i, h)..][..z.d];
                let s: Vec<f64> = seen.iter().map(|&j| dot(qi, &k[z.kv_at(n, j, h)..][..z.d]) * scale).collect();
                let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = s.iter().map(|x| (x - max).exp()).sum();
                for (&j, x) in seen.iter().zip(&s) {
                    for c in 0..z.d {
                        out[z.q_at(n, i, h) + c] += (x - max).exp() / sum * v[z.kv_at(n, j, h) + c];
                    }
                }
            }
        }
    }
    out
}

struct Inputs {
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
    mask: Vec<i64>,
    starts: Vec<usize>,
}

/// Random starts per sequence, holes anywhere in the key mask, and (N > 2) a last sequence with no real slot.
fn random_inputs(rng: &mut StdRng, z: Dims) -> Inputs {
    let starts: Vec<usize> = (0..z.n).map(|_| rng.gen_range(0..=z.s - z.tq)).collect();
    let mut mask: Vec<i64> = (0..z.n * z.s).map(|_| i64::from(rng.gen_bool(0.75))).collect();
    if z.n > 2 {
        mask[(z.n - 1) * z.s..].fill(0);
    }
    Inputs { q: normal(rng, z.q_len()), k: normal(rng, z.kv_len()), v: normal(rng, z.kv_len()), mask, starts }
}

fn run_cached(z: Dims, x: &Inputs, dtype: DType, mask_dtype: DType, device: Device) -> Vec<f64> {
    let q = tensor(&x.q, &[z.n, z.tq, z.hq, z.d], dtype, device);
    let (k, v) =
        (tensor(&x.k, &[z.n, z.s, z.hkv, z.d], dtype, device), tensor(&x.v, &[z.n, z.s, z.hkv, z.d], dtype, device));
    let out = attention_cached(&q, &k, &v, &ids(&x.mask, &[z.n, z.s], mask_dtype, device), &x.starts).unwrap();
    assert_eq!((out.dtype(), out.shape(), out.device()), (dtype, q.shape(), device));
    values(&out)
}

#[test]
fn random_caches_every_dtype_match_f64() {
    let mut rng = seed();
    let shapes = [
        Dims { n: 3, tq: 1, s: 37, hq: 14, hkv: 2, d: 64 }, // decode, GQA ratio 7, a sequence with no real slot
        Dims { n: 2, tq: 5, s: 23, hq: 2, hkv: 2, d: 6 },
        Dims { n: 4, tq: 3, s: 11, hq: 2, hkv: 1, d: 2 },
        Dims { n: 1, tq: 9, s: 9, hq: 7, hkv: 1, d: 6 }, // the whole cache at once
        Dims { n: 2, tq: 4, s: 131, hq: 4, hkv: 2, d: 64 },
    ];
    for (case, z) in shapes.into_iter().enumerate() {
        let x = random_inputs(&mut rng, z);
        let mask_dtype = if case % 2 == 0 { DType::I64 } else { DType::I32 };
        for dtype in FLOATS {
            let r = |v: &[f64]| rounded(v, dtype);
            let want = reference(z, &r(&x.q), &r(&x.k), &r(&x.v), &x.mask, &x.starts);
            let got = run_cached(z, &x, dtype, mask_dtype, Device::Cpu);
            assert_close(&format!("{dtype} {z:?} starts {:?}", x.starts), &got, &want, tol(dtype));
            if z.n > 2 {
                let last = z.q_len() / z.n * (z.n - 1);
                assert!(got[last..].iter().all(|&o| o == 0.0), "a query that sees no key outputs zeros");
            }
        }
    }
}

/// Rows [0, t) of a [N,T,H,d] buffer placed at the front of a [N,S,H,d] one (the rest zero), or the reverse.
fn resize_rows(x: &[f64], n: usize, from: usize, to: usize, row: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * to * row];
    for b in 0..n {
        let len = from.min(to) * row;
        out[b * to * row..][..len].copy_from_slice(&x[b * from * row..][..len]);
    }
    out
}

/// A right-padded batch written to a larger cache from slot 0: all T queries at once equal `attention`'s output at
/// the real queries.
fn padded_batch_matches_attention(rng: &mut StdRng, dtype: DType, device: Device) {
    let (n, t, s, hq, hkv, d) = (3, 13, 16, 4, 2, 8);
    let lens = [13, 7, 1];
    let mask: Vec<i64> = (0..n * t).map(|p| i64::from(p % t < lens[p / t])).collect();
    let (q, k, v) = (normal(rng, n * t * hq * d), normal(rng, n * t * hkv * d), normal(rng, n * t * hkv * d));
    let tt = |x: &[f64], heads| tensor(x, &[n, t, heads, d], dtype, device);
    let mask_t = ids(&mask, &[n, t], DType::I64, device);
    let full = values(&attention(&tt(&q, hq), &tt(&k, hkv), &tt(&v, hkv), &mask_t, Masking::Causal).unwrap().out);

    let (mut kc, mut vc) = (
        Tensor::zeros(&[n, s, hkv, d], dtype, device).unwrap(),
        Tensor::zeros(&[n, s, hkv, d], dtype, device).unwrap(),
    );
    kv_cache_write(&mut kc, &tt(&k, hkv), &[0; 3]).unwrap();
    kv_cache_write(&mut vc, &tt(&v, hkv), &[0; 3]).unwrap();
    let key_mask: Vec<i64> = (0..n * s).map(|p| i64::from(p % s < lens[p / s])).collect();
    let got = values(
        &attention_cached(&tt(&q, hq), &kc, &vc, &ids(&key_mask, &[n, s], DType::I32, device), &[0; 3]).unwrap(),
    );
    let real = |x: &[f64]| -> Vec<f64> {
        x.chunks(hq * d).enumerate().filter(|(p, _)| mask[*p] != 0).flat_map(|(_, r)| r.to_vec()).collect()
    };
    assert_close(&format!("padded batch {dtype} {device}"), &real(&got), &real(&full), tol(dtype));
}

#[test]
fn padded_batch_matches_attention_every_dtype() {
    let mut rng = seed();
    for dtype in FLOATS {
        padded_batch_matches_attention(&mut rng, dtype, Device::Cpu);
    }
}

/// Sequences of different lengths: a prefill of each prompt (right-padded to the longest) from slot 0, then one
/// token per step at each sequence's own slot. Every real position's output equals full-sequence `attention`.
fn decoding_matches_attention(rng: &mut StdRng, dtype: DType, device: Device) {
    let (hq, hkv, d) = (6, 2, 16);
    let (lens, prompts) = ([11usize, 8, 5], [4usize, 6, 2]);
    let (n, t, tp) = (3, 11, 6);
    let steps = (0..n).map(|b| lens[b] - prompts[b]).max().unwrap();
    let s = (0..n).map(|b| prompts[b]).max().unwrap() + steps + 1; // 14 slots: not a round number
    let mask: Vec<i64> = (0..n * t).map(|p| i64::from(p % t < lens[p / t])).collect();
    let (q, k, v) = (normal(rng, n * t * hq * d), normal(rng, n * t * hkv * d), normal(rng, n * t * hkv * d));
    let tt = |x: &[f64], rows, heads| tensor(x, &[n, rows, heads, d], dtype, device);
    let mask_t = ids(&mask, &[n, t], DType::I64, device);
    let full =
        values(&attention(&tt(&q, t, hq), &tt(&k, t, hkv), &tt(&v, t, hkv), &mask_t, Masking::Causal).unwrap().out);
    let full_at = |b: usize, i: usize| full[(b * t + i) * hq * d..][..hq * d].to_vec();

    let (mut kc, mut vc) = (
        Tensor::zeros(&[n, s, hkv, d], dtype, device).unwrap(),
        Tensor::zeros(&[n, s, hkv, d], dtype, device).unwrap(),
    );
    let mut key_mask = vec![0i64; n * s];
    for b in 0..n {
        key_mask[b * s..][..prompts[b]].fill(1);
    }
    let pre = |x: &[f64], heads| tt(&resize_rows(x, n, t, tp, heads * d), tp, heads);
    kv_cache_write(&mut kc, &pre(&k, hkv), &[0; 3]).unwrap();
    kv_cache_write(&mut vc, &pre(&v, hkv), &[0; 3]).unwrap();
    let out = values(
        &attention_cached(&pre(&q, hq), &kc, &vc, &ids(&key_mask, &[n, s], DType::I64, device), &[0; 3]).unwrap(),
    );
    for b in 0..n {
        for i in 0..prompts[b] {
            let got = &out[(b * tp + i) * hq * d..][..hq * d];
            assert_close(&format!("prefill {dtype} seq {b} pos {i}"), got, &full_at(b, i), tol(dtype));
        }
    }

    let mut pos = prompts.to_vec();
    for step in 0..steps {
        // The token at each sequence's position, or zeros once the sequence has ended (its slot stays masked).
        let token = |x: &[f64], heads: usize| -> Vec<f64> {
            (0..n)
                .flat_map(|b| match pos[b] < lens[b] {
                    true => x[(b * t + pos[b]) * heads * d..][..heads * d].to_vec(),
                    false => vec![0.0; heads * d],
                })
                .collect()
        };
        kv_cache_write(&mut kc, &tt(&token(&k, hkv), 1, hkv), &pos).unwrap();
        kv_cache_write(&mut vc, &tt(&token(&v, hkv), 1, hkv), &pos).unwrap();
        for b in 0..n {
            key_mask[b * s + pos[b]] = i64::from(pos[b] < lens[b]);
        }
        let out = values(
            &attention_cached(&tt(&token(&q, hq), 1, hq), &kc, &vc, &ids(&key_mask, &[n, s], DType::I32, device), &pos)
                .unwrap(),
        );
        for b in (0..n).filter(|&b| pos[b] < lens[b]) {
            let got = &out[b * hq * d..][..hq * d];
            assert_close(&format!("step {step} {dtype} seq {b} pos {}", pos[b]), got, &full_at(b, pos[b]), tol(dtype));
        }
        pos.iter_mut().for_each(|p| *p += 1);
    }
}

#[test]
fn token_by_token_decoding_matches_attention_every_dtype() {
    let mut rng = seed();
    for dtype in FLOATS {
        decoding_matches_attention(&mut rng, dtype, Device::Cpu);
    }
}

/// A cache [N,S,H,d] of random values after writing `new` [B,Tq,H,d] at `starts`: (before, new, after).
fn write_case(
    rng: &mut StdRng,
    dims: [usize; 4],
    b: usize,
    tq: usize,
    starts: &[usize],
    dtype: DType,
    device: Device,
) -> [Vec<f64>; 3] {
    let [n, s, h, d] = dims;
    let (before, new) = (rounded(&normal(rng, n * s * h * d), dtype), rounded(&normal(rng, b * tq * h * d), dtype));
    let mut cache = tensor(&before, &dims, dtype, device);
    kv_cache_write(&mut cache, &tensor(&new, &[b, tq, h, d], dtype, device), starts).unwrap();
    [before, new, values(&cache)]
}

/// What the cache must hold after the write.
fn expected_write(dims: [usize; 4], tq: usize, starts: &[usize], before: &[f64], new: &[f64]) -> Vec<f64> {
    let [n, s, h, d] = dims;
    let row = h * d;
    let broadcast = new.len() == tq * row;
    let mut want = before.to_vec();
    for b in 0..n {
        let from = if broadcast { 0 } else { b * tq * row };
        want[(b * s + starts[b]) * row..][..tq * row].copy_from_slice(&new[from..][..tq * row]);
    }
    want
}

#[test]
fn writes_fill_the_right_slots_and_broadcast_to_every_row() {
    let mut rng = seed();
    let dims = [3, 7, 2, 3];
    for dtype in FLOATS {
        for (b, tq, starts) in [(1, 2, [0, 3, 5]), (3, 2, [5, 0, 2]), (1, 7, [0, 0, 0]), (3, 1, [6, 6, 0])] {
            let [before, new, after] = write_case(&mut rng, dims, b, tq, &starts, dtype, Device::Cpu);
            assert_eq!(after, expected_write(dims, tq, &starts, &before, &new), "{dtype} B {b} Tq {tq} {starts:?}");
        }
    }
}

#[test]
fn bad_input() {
    let t = |shape: &[usize], dtype| Tensor::zeros(shape, dtype, Device::Cpu).unwrap();
    let f = |shape: &[usize]| t(shape, DType::F32);
    let (q, kc) = (f(&[2, 2, 4, 8]), f(&[2, 6, 2, 8]));
    let mask = t(&[2, 6], DType::I32);
    let shape_err = |e: Error, text: &str| assert!(matches!(&e, Error::Shape(m) if m.contains(text)), "{e}");
    let range_err = |e: Error, text: &str| assert!(matches!(&e, Error::InvalidArgument(m) if m.contains(text)), "{e}");

    range_err(
        attention_cached(&q, &kc, &kc, &mask, &[0, 5]).unwrap_err(),
        "`query_start[1]` = 5 plus 2 new tokens overruns the cache of 6 slots",
    );
    shape_err(
        attention_cached(&q, &kc, &kc, &mask, &[0]).unwrap_err(),
        "`query_start` has 1 entries, expected one per sequence (N = 2)",
    );
    shape_err(attention_cached(&f(&[2, 2, 32]), &kc, &kc, &mask, &[0, 0]).unwrap_err(), "`q` must have rank 4");
    shape_err(attention_cached(&q, &f(&[2, 6, 16]), &kc, &mask, &[0, 0]).unwrap_err(), "`k_cache` must have rank 4");
    shape_err(
        attention_cached(&q, &kc, &f(&[2, 5, 2, 8]), &mask, &[0, 0]).unwrap_err(),
        "`v_cache` has shape [2, 5, 2, 8], expected [2, 6, 2, 8]",
    );
    shape_err(
        attention_cached(&q, &f(&[2, 6, 3, 8]), &f(&[2, 6, 3, 8]), &mask, &[0, 0]).unwrap_err(),
        "query heads (4) must be a positive multiple of KV heads (3)",
    );
    shape_err(
        attention_cached(&q, &kc, &kc, &t(&[2, 5], DType::I64), &[0, 0]).unwrap_err(),
        "`key_mask` has shape [2, 5], expected [2, 6]",
    );
    let e = attention_cached(&q, &t(&[2, 6, 2, 8], DType::BF16), &kc, &mask, &[0, 0]).unwrap_err();
    assert!(
        matches!(&e, Error::DType { arg: "k_cache", expected, .. } if expected.contains("the dtype of `q` (f32)")),
        "{e}"
    );
    let e = attention_cached(&q, &kc, &kc, &f(&[2, 6]), &[0, 0]).unwrap_err();
    assert!(matches!(e, Error::DType { arg: "key_mask", .. }), "{e}");
    let e = attention_cached(&t(&[2, 2, 4, 8], DType::I32), &kc, &kc, &mask, &[0, 0]).unwrap_err();
    assert!(matches!(e, Error::DType { arg: "q" | "k_cache", .. }), "{e}");

    let mut cache = f(&[2, 6, 2, 8]);
    range_err(
        kv_cache_write(&mut cache, &f(&[1, 3, 2, 8]), &[0, 4]).unwrap_err(),
        "`query_start[1]` = 4 plus 3 new tokens overruns the cache of 6 slots",
    );
    shape_err(kv_cache_write(&mut cache, &f(&[2, 1, 2, 8]), &[0, 1, 2]).unwrap_err(), "`query_start` has 3 entries");
    shape_err(
        kv_cache_write(&mut cache, &f(&[3, 1, 2, 8]), &[0, 0]).unwrap_err(),
        "its batch must be the cache's N = 2, or 1 to broadcast",
    );
    shape_err(
        kv_cache_write(&mut cache, &f(&[2, 1, 4, 8]), &[0, 0]).unwrap_err(),
        "`new` has shape [2, 1, 4, 8], expected [2, 1, 2, 8]",
    );
    shape_err(kv_cache_write(&mut cache, &f(&[2, 8]), &[0, 0]).unwrap_err(), "`new` must have rank 4");
    let e = kv_cache_write(&mut cache, &t(&[2, 1, 2, 8], DType::F16), &[0, 0]).unwrap_err();
    assert!(
        matches!(&e, Error::DType { arg: "new", expected, .. } if expected.contains("the dtype of `cache` (f32)")),
        "{e}"
    );
    let e = kv_cache_write(&mut t(&[2, 6, 2, 8], DType::I64), &t(&[2, 1, 2, 8], DType::I64), &[0, 0]).unwrap_err();
    assert!(matches!(e, Error::DType { arg: "cache", .. }), "{e}");
    assert!(values(&cache).iter().all(|&x| x == 0.0), "a refused write leaves the cache alone");
}

#[test]
#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
fn cuda_matches_cpu() {
    let mut rng = seed();
    let cuda = Device::Cuda(0);
    let shapes = [
        Dims { n: 4, tq: 1, s: 3001, hq: 14, hkv: 2, d: 64 }, // Qwen2-0.5B decode over a long cache
        Dims { n: 2, tq: 1, s: 1000, hq: 4, hkv: 1, d: 128 },
        Dims { n: 3, tq: 17, s: 70, hq: 7, hkv: 7, d: 72 },
        Dims { n: 3, tq: 3, s: 11, hq: 2, hkv: 1, d: 2 },
        Dims { n: 1, tq: 40, s: 40, hq: 2, hkv: 2, d: 6 },
    ];
    for (case, z) in shapes.into_iter().enumerate() {
        let x = random_inputs(&mut rng, z);
        let mask_dtype = if case % 2 == 0 { DType::I64 } else { DType::I32 };
        for dtype in FLOATS {
            let (cpu, gpu) =
                (run_cached(z, &x, dtype, mask_dtype, Device::Cpu), run_cached(z, &x, dtype, mask_dtype, cuda));
            let t = if dtype == DType::F32 { 1e-4 } else { 2e-2 };
            assert_close(&format!("{dtype} {z:?}"), &gpu, &cpu, t);
        }
    }
    for dtype in FLOATS {
        padded_batch_matches_attention(&mut rng, dtype, cuda);
        decoding_matches_attention(&mut rng, dtype, cuda);
        let dims = [3, 700, 2, 64];
        for (b, tq, starts) in [(1, 300, [0, 100, 400]), (3, 1, [699, 0, 5])] {
            let [before, new, after] = write_case(&mut rng, dims, b, tq, &starts, dtype, cuda);
            assert_eq!(after, expected_write(dims, tq, &starts, &before, &new), "CUDA {dtype} B {b} Tq {tq}");
        }
    }
    let q = Tensor::zeros(&[1, 1, 2, 8], DType::F32, Device::Cpu).unwrap();
    let kc = Tensor::zeros(&[1, 4, 2, 8], DType::F32, cuda).unwrap();
    let mask = ids(&[1, 1, 1, 1], &[1, 4], DType::I32, cuda);
    let e = attention_cached(&q, &kc, &kc, &mask, &[0]).unwrap_err();
    assert!(matches!(&e, Error::Device(m) if m.contains("`k_cache` is on")), "{e}");
    let e = kv_cache_write(
        &mut kc.try_clone().unwrap(),
        &Tensor::zeros(&[1, 1, 2, 8], DType::F32, Device::Cpu).unwrap(),
        &[0],
    )
    .unwrap_err();
    assert!(matches!(&e, Error::Device(m) if m.contains("`new` is on")), "{e}");
}
