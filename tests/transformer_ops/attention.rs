use rand::Rng;
use unireward::ops::attention::{
    attention, attention_backward, attention_backward_into, attention_into, AttentionOutput, Masking,
};
use unireward::{DType, Device, Error, Tensor};

use crate::common::*;

/// Sizes of a problem.
#[derive(Clone, Copy, Debug)]
struct Dims {
    n: usize,
    t: usize,
    hq: usize,
    hkv: usize,
    d: usize,
}

impl Dims {
    fn q_len(&self) -> usize {
        self.n * self.t * self.hq * self.d
    }
    fn kv_len(&self) -> usize {
        self.n * self.t * self.hkv * self.d
    }
    fn q_at(&self, n: usize, i: usize, h: usize) -> usize {
        ((n * self.t + i) * self.hq + h) * self.d
    }
    fn kv_at(&self, n: usize, j: usize, h: usize) -> usize {
        ((n * self.t + j) * self.hkv + h / (self.hq / self.hkv)) * self.d
    }
}

const MASKINGS: [Masking; 2] = [Masking::Causal, Masking::Bidirectional];

/// The inputs of one problem: q, k, v, the upstream gradient, the padding mask and which keys a query sees.
struct Inputs {
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
    g: Vec<f64>,
    mask: Vec<i64>,
    masking: Masking,
}

/// f64 reference probabilities of query (n, i, h): `None` at padding queries.
fn probs(z: Dims, x: &Inputs, q: &[f64], k: &[f64], n: usize, i: usize, h: usize) -> Option<(Vec<f64>, f64)> {
    let mask = &x.mask;
    if mask[n * z.t + i] == 0 {
        return None;
    }
    let scale = 1.0 / (z.d as f64).sqrt();
    let qi = &q[z.q_at(n, i, h)..][..z.d];
    let s: Vec<f64> = (0..z.t)
        .map(|j| {
            if (j <= i || x.masking == Masking::Bidirectional) && mask[n * z.t + j] != 0 {
                dot(qi, &k[z.kv_at(n, j, h)..][..z.d]) * scale
            } else {
                f64::NEG_INFINITY
            }
        })
        .collect();
    let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + s.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
    Some((s.iter().map(|x| (x - lse).exp()).collect(), lse))
}

/// f64 reference forward of `x`'s mask and masking at (possibly perturbed or rounded) q, k, v: (out, lse).
fn forward(z: Dims, x: &Inputs, q: &[f64], k: &[f64], v: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let (mut out, mut lse) = (vec![0.0; z.q_len()], vec![0.0; z.n * z.hq * z.t]);
    for n in 0..z.n {
        for h in 0..z.hq {
            for i in 0..z.t {
                let Some((p, l)) = probs(z, x, q, k, n, i, h) else { continue };
                lse[(n * z.hq + h) * z.t + i] = l;
                for j in 0..z.t {
                    for c in 0..z.d {
                        out[z.q_at(n, i, h) + c] += p[j] * v[z.kv_at(n, j, h) + c];
                    }
                }
            }
        }
    }
    (out, lse)
}

/// f64 reference backward of `x`'s mask and masking at q, k, v, g: (dq, dk, dv).
fn backward(z: Dims, x: &Inputs, q: &[f64], k: &[f64], v: &[f64], g: &[f64]) -> [Vec<f64>; 3] {
    let (mut dq, mut dk, mut dv) = (vec![0.0; z.q_len()], vec![0.0; z.kv_len()], vec![0.0; z.kv_len()]);
    let scale = 1.0 / (z.d as f64).sqrt();
    for n in 0..z.n {
        for h in 0..z.hq {
            for i in 0..z.t {
                let Some((p, _)) = probs(z, x, q, k, n, i, h) else { continue };
                let gi = &g[z.q_at(n, i, h)..][..z.d];
                let dp: Vec<f64> = (0..z.t).map(|j| dot(gi, &v[z.kv_at(n, j, h)..][..z.d])).collect();
                let row_dot = dot(&p, &dp);
                for j in 0..z.t {
                    let ds = p[j] * (dp[j] - row_dot) * scale;
                    for c in 0..z.d {
                        dv[z.kv_at(n, j, h) + c] += p[j] * gi[c];
                        dq[z.q_at(n, i, h) + c] += ds * k[z.kv_at(n, j, h) + c];
                        dk[z.kv_at(n, j, h) + c] += ds * q[z.q_at(n, i, h) + c];
                    }
                }
            }
        }
    }
    [dq, dk, dv]
}

fn random_inputs(rng: &mut rand::rngs::StdRng, z: Dims, masking: Masking) -> Inputs {
    // Right padding of random length per sequence; the last sequence is entirely padding when N > 2.
    let mut mask = Vec::with_capacity(z.n * z.t);
    for n in 0..z.n {
        let real = if z.n > 2 && n == z.n - 1 { 0 } else { rng.gen_range(1..=z.t) };
        mask.extend((0..z.t).map(|i| i64::from(i < real)));
    }
    Inputs {
        q: normal(rng, z.q_len()),
        k: normal(rng, z.kv_len()),
        v: normal(rng, z.kv_len()),
        g: normal(rng, z.q_len()),
        mask,
        masking,
    }
}

fn run(z: Dims, x: &Inputs, dtype: DType, device: Device) -> [Vec<f64>; 5] {
    let t = |data: &[f64], heads| tensor(data, &[z.n, z.t, heads, z.d], dtype, device);
    let (q, k, v) = (t(&x.q, z.hq), t(&x.k, z.hkv), t(&x.v, z.hkv));
    let mask = ids(&x.mask, &[z.n, z.t], DType::I64, device);
    let saved = attention(&q, &k, &v, &mask, x.masking).unwrap();
    assert_eq!((saved.out.dtype(), saved.lse.shape()), (dtype, &[z.n, z.hq, z.t][..]));
    let grads = attention_backward(&t(&x.g, z.hq), &q, &k, &v, &mask, x.masking, &saved).unwrap();
    assert_eq!((grads.grad_k.dtype(), grads.grad_k.shape()), (dtype, k.shape()));
    [values(&saved.out), values(&saved.lse), values(&grads.grad_q), values(&grads.grad_k), values(&grads.grad_v)]
}

const NAMES: [&str; 5] = ["out", "lse", "grad_q", "grad_k", "grad_v"];

#[test]
fn matches_pytorch_fixture() {
    for name in ["attention_gqa", "attention_padded", "attention_bidirectional", "attention_bidirectional_padded"] {
        let f = Fixture::load(name);
        let z = Dims { n: f.usize("n"), t: f.usize("t"), hq: f.usize("hq"), hkv: f.usize("hkv"), d: f.usize("d") };
        let masking = if f.bool("causal") { Masking::Causal } else { Masking::Bidirectional };
        let (q, k, v, g, mask) = (f.f64s("q"), f.f64s("k"), f.f64s("v"), f.f64s("grad_out"), f.i64s("mask"));
        let x = Inputs { q, k, v, g, mask, masking };
        let got = run(z, &x, DType::F32, Device::Cpu);
        for (name, got) in NAMES.iter().zip(&got) {
            assert_close(name, got, &f.f64s(name), 1e-5);
        }
    }
}

#[test]
fn random_awkward_shapes_every_dtype_and_finite_differences() {
    let mut rng = seed();
    let shapes = [
        Dims { n: 3, t: 17, hq: 14, hkv: 2, d: 64 }, // GQA ratio 7, an all-padding sequence
        Dims { n: 1, t: 1, hq: 2, hkv: 1, d: 8 },    // T = 1
        Dims { n: 2, t: 33, hq: 3, hkv: 3, d: 72 },  // no grouping, d not a multiple of a warp
        Dims { n: 4, t: 6, hq: 4, hkv: 2, d: 5 },
        Dims { n: 3, t: 150, hq: 2, hkv: 1, d: 4 }, // several query blocks
        Dims { n: 2, t: 41, hq: 4, hkv: 4, d: 72 }, // SigLIP-so400m's heads (d = 1152 / 16)
    ];
    for (z, masking) in shapes.into_iter().flat_map(|z| MASKINGS.map(|m| (z, m))) {
        let x = random_inputs(&mut rng, z, masking);
        for dtype in FLOATS {
            let r = |v: &[f64]| rounded(v, dtype);
            let (q, k, v, g) = (r(&x.q), r(&x.k), r(&x.v), r(&x.g));
            let (out, lse) = forward(z, &x, &q, &k, &v);
            let [dq, dk, dv] = backward(z, &x, &q, &k, &v, &g);
            let got = run(z, &x, dtype, Device::Cpu);
            for (name, (got, want)) in NAMES.iter().zip(got.iter().zip([out, lse, dq, dk, dv].iter())) {
                assert_close(&format!("{name} {dtype} {masking:?} {z:?}"), got, want, tol(dtype));
            }
            if dtype == DType::F32 && z.d < 64 {
                let loss = |q: &[f64], k: &[f64], v: &[f64]| dot(&forward(z, &x, q, k, v).0, &x.g);
                assert_fd("grad_q", &got[2], &finite_differences(&x.q, 25, |p| loss(p, &x.k, &x.v)));
                assert_fd("grad_k", &got[3], &finite_differences(&x.k, 25, |p| loss(&x.q, p, &x.v)));
                assert_fd("grad_v", &got[4], &finite_differences(&x.v, 25, |p| loss(&x.q, &x.k, p)));
            }
        }
    }
}

/// A NaN in one query shows in that query's output and logsumexp (and the gradients of what it read), while the
/// other queries keep finite values; a NaN in a key reaches only the queries that see it.
#[test]
fn a_nan_shows_where_it_is_read() {
    let mut rng = seed();
    let z = Dims { n: 1, t: 9, hq: 2, hkv: 1, d: 4 };
    let mut x = random_inputs(&mut rng, z, Masking::Causal);
    x.mask = vec![1; z.t];
    // Query 4 of head 1 is NaN: only its output row is.
    x.q[z.q_at(0, 4, 1)] = f64::NAN;
    let [out, lse, dq, dk, dv] = run(z, &x, DType::F32, Device::Cpu);
    for i in 0..z.t {
        for h in 0..z.hq {
            let nan = (i, h) == (4, 1);
            let row = &out[z.q_at(0, i, h)..z.q_at(0, i, h) + z.d];
            assert!(row.iter().all(|v| v.is_nan() == nan), "out of query {i} head {h}: {row:?}");
            assert_eq!(lse[h * z.t + i].is_nan(), nan, "lse of query {i} head {h}");
        }
    }
    // Keys and values 0..=4 were read by the NaN query: their gradients are NaN; the later values' are not (the
    // later keys' gradients are a product with the NaN query's row, as in any dense backward).
    for j in 0..z.t {
        let at = z.kv_at(0, j, 0)..z.kv_at(0, j, 0) + z.d;
        assert!(dv[at.clone()].iter().all(|v| v.is_nan() == (j <= 4)), "grad_v of key {j}: {:?}", &dv[at.clone()]);
        assert!(j > 4 || dk[at.clone()].iter().all(|v| v.is_nan()), "grad_k of key {j}: {:?}", &dk[at]);
    }
    assert!(dq[z.q_at(0, 4, 1)].is_nan() && dq[z.q_at(0, 3, 1)].is_finite());
    // A NaN in key 6: queries 0..6 do not see it (causal) and stay finite; 6.. are NaN.
    x = random_inputs(&mut rng, z, Masking::Causal);
    x.mask = vec![1; z.t];
    x.k[z.kv_at(0, 6, 0)] = f64::NAN;
    let [out, ..] = run(z, &x, DType::F32, Device::Cpu);
    for i in 0..z.t {
        let row = &out[z.q_at(0, i, 0)..z.q_at(0, i, 0) + z.d];
        assert!(row.iter().all(|v| v.is_nan() == (i >= 6)), "out of query {i}: {row:?}");
    }
}

#[test]
fn bad_input() {
    let t = |shape: &[usize]| tensor(&vec![0.0; shape.iter().product()], shape, DType::F32, Device::Cpu);
    let (q, k) = (t(&[1, 2, 4, 8]), t(&[1, 2, 2, 8]));
    let mask = ids(&[1, 1], &[1, 2], DType::I32, Device::Cpu);
    let e = attention(&q, &t(&[1, 2, 3, 8]), &t(&[1, 2, 3, 8]), &mask, Masking::Bidirectional).unwrap_err();
    assert!(
        matches!(&e, Error::Shape(m) if m.contains("query heads (4) must be a positive multiple of KV heads (3)")),
        "{e}"
    );
    let e = attention(&q, &k, &t(&[1, 2, 2, 4]), &mask, Masking::Bidirectional).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`v` has shape [1, 2, 2, 4], expected [1, 2, 2, 8]")), "{e}");
    let e = attention(&q, &k, &k, &t(&[1, 2]), Masking::Causal).unwrap_err();
    assert!(matches!(e, Error::DType { arg: "attention_mask", .. }), "{e}");
    let e = attention(&q, &k, &k, &ids(&[1, 1, 1], &[1, 3], DType::I32, Device::Cpu), Masking::Causal).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`attention_mask` has shape [1, 3]")), "{e}");
    let saved = attention(&q, &k, &k, &mask, Masking::Causal).unwrap();
    let bad_lse = unireward::ops::attention::AttentionOutput {
        out: saved.out.try_clone().unwrap(),
        lse: Tensor::zeros(&[1, 2, 4], DType::F32, Device::Cpu).unwrap(),
    };
    let e = attention_backward(&q, &q, &k, &k, &mask, Masking::Causal, &bad_lse).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`saved.lse` has shape [1, 2, 4], expected [1, 4, 2]")), "{e}");
    let e = attention_backward(&k, &q, &k, &k, &mask, Masking::Causal, &saved).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`grad_out`")), "{e}");
}

/// The `_into` variants over NaN-filled outputs give the allocating versions' bits, in every dtype on `device`,
/// with GQA, several tiles and query blocks, padding and an all-padding sequence, under either masking; on CUDA also
/// close to the CPU.
fn into_equals_allocating(device: Device) {
    let mut rng = seed();
    let z = Dims { n: 3, t: 70, hq: 6, hkv: 2, d: 40 };
    for (masking, dtype) in MASKINGS.into_iter().flat_map(|m| FLOATS.map(|d| (m, d))) {
        let x = random_inputs(&mut rng, z, masking);
        let t = |data: &[f64], heads| tensor(data, &[z.n, z.t, heads, z.d], dtype, device);
        let (q, k, v, g) = (t(&x.q, z.hq), t(&x.k, z.hkv), t(&x.v, z.hkv), t(&x.g, z.hq));
        let mask = ids(&x.mask, &[z.n, z.t], DType::I32, device);
        let mut saved = AttentionOutput {
            out: garbage(q.shape(), dtype, device),
            lse: garbage(&[z.n, z.hq, z.t], DType::F32, device),
        };
        attention_into(&q, &k, &v, &mask, masking, &mut saved.out, &mut saved.lse).unwrap();
        let want = attention(&q, &k, &v, &mask, masking).unwrap();
        assert_same("out", &saved.out, &want.out);
        assert_same("lse", &saved.lse, &want.lse);
        let (mut dq, mut dk, mut dv) =
            (garbage(q.shape(), dtype, device), garbage(k.shape(), dtype, device), garbage(v.shape(), dtype, device));
        attention_backward_into(&g, &q, &k, &v, &mask, masking, &saved, &mut dq, &mut dk, &mut dv).unwrap();
        let want = attention_backward(&g, &q, &k, &v, &mask, masking, &saved).unwrap();
        assert_same("grad_q", &dq, &want.grad_q);
        assert_same("grad_k", &dk, &want.grad_k);
        assert_same("grad_v", &dv, &want.grad_v);
        if device != Device::Cpu {
            let got = [&saved.out, &saved.lse, &dq, &dk, &dv].map(values);
            let tolerance = if dtype == DType::F32 { 1e-4 } else { 2e-2 };
            for (name, (c, g)) in NAMES.iter().zip(run(z, &x, dtype, Device::Cpu).iter().zip(&got)) {
                assert_close(&format!("{name} vs cpu, {dtype} {masking:?}"), g, c, tolerance);
            }
        }
    }
}

#[test]
fn into_overwrites_garbage_and_equals_allocating() {
    into_equals_allocating(Device::Cpu);
}

#[test]
fn into_refuses_bad_outputs() {
    let cpu = Device::Cpu;
    let t = |shape: &[usize]| tensor(&vec![0.5; shape.iter().product()], shape, DType::F32, cpu);
    let (q, k) = (t(&[1, 2, 4, 8]), t(&[1, 2, 2, 8]));
    let mask = ids(&[1, 1], &[1, 2], DType::I32, cpu);
    let (mut out, mut lse) = (garbage(&[1, 2, 4, 8], DType::F32, cpu), garbage(&[1, 4, 2], DType::F32, cpu));
    let e = attention_into(&q, &k, &k, &mask, Masking::Causal, &mut garbage(&[1, 2, 2, 8], DType::F32, cpu), &mut lse)
        .unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`out` has shape [1, 2, 2, 8], expected [1, 2, 4, 8]")), "{e}");
    let e = attention_into(&q, &k, &k, &mask, Masking::Causal, &mut out, &mut garbage(&[1, 4, 2], DType::BF16, cpu))
        .unwrap_err();
    assert!(matches!(e, Error::DType { arg: "lse", .. }), "{e}");
    let e = attention_into(&q, &k, &k, &mask, Masking::Causal, &mut out, &mut garbage(&[1, 2, 4], DType::F32, cpu))
        .unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`lse` has shape [1, 2, 4], expected [1, 4, 2]")), "{e}");
    let saved = attention(&q, &k, &k, &mask, Masking::Causal).unwrap();
    let (mut dq, mut dk, mut dv) =
        (garbage(q.shape(), DType::F32, cpu), garbage(k.shape(), DType::F32, cpu), garbage(k.shape(), DType::F32, cpu));
    let e = attention_backward_into(
        &q,
        &q,
        &k,
        &k,
        &mask,
        Masking::Causal,
        &saved,
        &mut dq,
        &mut garbage(q.shape(), DType::F32, cpu),
        &mut dv,
    )
    .unwrap_err();
    assert!(
        matches!(&e, Error::Shape(m) if m.contains("`grad_k` has shape [1, 2, 4, 8], expected [1, 2, 2, 8]")),
        "{e}"
    );
    let e = attention_backward_into(
        &q,
        &q,
        &k,
        &k,
        &mask,
        Masking::Causal,
        &saved,
        &mut garbage(q.shape(), DType::F16, cpu),
        &mut dk,
        &mut dv,
    )
    .unwrap_err();
    assert!(matches!(e, Error::DType { arg: "grad_q", .. }), "{e}");
    let e = attention_backward_into(
        &q,
        &q,
        &k,
        &k,
        &mask,
        Masking::Causal,
        &saved,
        &mut dq,
        &mut dk,
        &mut garbage(&[2, 8], DType::F32, cpu),
    )
    .unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`grad_v` has shape [2, 8]")), "{e}");
}

#[test]
#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
fn cuda_into_overwrites_garbage_and_refuses_a_cpu_output() {
    into_equals_allocating(Device::Cuda(0));
    let gpu = Device::Cuda(0);
    let t = |shape: &[usize]| tensor(&vec![0.5; shape.iter().product()], shape, DType::F32, gpu);
    let (q, k) = (t(&[1, 2, 4, 8]), t(&[1, 2, 2, 8]));
    let mask = ids(&[1, 1], &[1, 2], DType::I32, gpu);
    let mut out = garbage(&[1, 2, 4, 8], DType::F32, gpu);
    let e =
        attention_into(&q, &k, &k, &mask, Masking::Causal, &mut out, &mut garbage(&[1, 4, 2], DType::F32, Device::Cpu))
            .unwrap_err();
    assert!(matches!(&e, Error::Device(m) if m.contains("output `lse` is on cpu")), "{e}");
}

#[test]
#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
fn cuda_matches_cpu() {
    let mut rng = seed();
    let shapes = [
        Dims { n: 2, t: 512, hq: 14, hkv: 2, d: 64 },
        Dims { n: 3, t: 70, hq: 4, hkv: 1, d: 128 },
        Dims { n: 1, t: 1, hq: 2, hkv: 1, d: 8 },
        Dims { n: 3, t: 33, hq: 7, hkv: 1, d: 72 },
        Dims { n: 4, t: 6, hq: 4, hkv: 2, d: 5 },
        Dims { n: 2, t: 729, hq: 16, hkv: 16, d: 72 }, // SigLIP-so400m on one 384×384 image
    ];
    for (z, masking) in shapes.into_iter().flat_map(|z| MASKINGS.map(|m| (z, m))) {
        let x = random_inputs(&mut rng, z, masking);
        for dtype in FLOATS {
            let (cpu, cuda) = (run(z, &x, dtype, Device::Cpu), run(z, &x, dtype, Device::Cuda(0)));
            // No atomics: a second run gives the same bits.
            assert!(
                cuda.iter().zip(&run(z, &x, dtype, Device::Cuda(0))).all(|(a, b)| a == b),
                "{z:?} {masking:?} not deterministic"
            );
            let t = if dtype == DType::F32 { 1e-4 } else { 2e-2 };
            for (name, (c, g)) in NAMES.iter().zip(cpu.iter().zip(&cuda)) {
                assert_close(&format!("{name} {dtype} {masking:?} {z:?}"), g, c, t);
            }
        }
    }
}
