//! The reward-model heads against float64 references: PyTorch fixtures, f64 Rust loops on fresh random inputs,
//! finite differences, awkward shapes, bad input, and CUDA against the CPU.

use half::{bf16, f16};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use unireward::ops::heads::{
    scalar_reward, scalar_reward_backward, verdict_head, verdict_head_backward, ScalarHead, ScalarHeadGrads, Verdict,
    VerdictClasses, VerdictGrads,
};
use unireward::{DType, Device, Error, Tensor};

// ------------------------------------------------------------------------------------------------------ helpers

fn fixture<T: for<'de> Deserialize<'de>>(name: &str) -> T {
    let path = format!("{}/tests/fixtures/heads/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn seeded() -> StdRng {
    let seed: u64 = rand::random();
    println!("seed {seed}");
    StdRng::seed_from_u64(seed)
}

fn uniform(rng: &mut StdRng, len: usize, scale: f64) -> Vec<f64> {
    (0..len).map(|_| rng.gen_range(-1.0..1.0) * scale).collect()
}

/// `x` rounded to what a tensor of `dtype` holds, back in f64.
fn rounded(x: &[f64], dtype: DType) -> Vec<f64> {
    x.iter()
        .map(|&v| match dtype {
            DType::BF16 => bf16::from_f32(v as f32).to_f64(),
            DType::F16 => f16::from_f32(v as f32).to_f64(),
            _ => v as f32 as f64,
        })
        .collect()
}

fn tensor(x: &[f64], shape: &[usize], dtype: DType, device: Device) -> Tensor {
    Tensor::from_f32(&x.iter().map(|&v| v as f32).collect::<Vec<_>>(), shape, dtype, device).unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap().into_iter().map(f64::from).collect()
}

/// Every element within `rel` of the expected value, relative to the largest expected magnitude (floor 1).
/// Infinities must match exactly.
fn assert_close(what: &str, got: &[f64], expected: &[f64], rel: f64) {
    assert_eq!(got.len(), expected.len(), "{what}: length");
    let scale = expected.iter().filter(|x| x.is_finite()).fold(1.0f64, |m, x| m.max(x.abs()));
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        let ok = if e.is_finite() { (g - e).abs() <= rel * scale } else { g == e };
        assert!(ok, "{what}[{i}]: got {g}, expected {e} (tolerance {})", rel * scale);
    }
}

/// An `InvalidArgument` error mentioning `fragment`.
fn invalid<T: std::fmt::Debug>(result: unireward::Result<T>, fragment: &str) {
    assert!(matches!(expect_err(result, fragment), Error::InvalidArgument(_)));
}

fn expect_err<T: std::fmt::Debug>(result: unireward::Result<T>, fragment: &str) -> Error {
    let err = result.expect_err(&format!("expected an error mentioning `{fragment}`"));
    assert!(err.to_string().contains(fragment), "error `{err}` does not mention `{fragment}`");
    err
}

/// Central difference of `f` at `x[i]`.
fn central<C: Clone>(c: &C, step: f64, mutate: impl Fn(&mut C, f64), f: impl Fn(&C) -> f64) -> f64 {
    let (mut plus, mut minus) = (c.clone(), c.clone());
    mutate(&mut plus, step);
    mutate(&mut minus, -step);
    (f(&plus) - f(&minus)) / (2.0 * step)
}

const GPU: Device = Device::Cuda(0);

// -------------------------------------------------------------------------------------------------- scalar head

#[derive(Clone, Deserialize)]
struct ScalarCase {
    n: usize,
    t: usize,
    h: usize,
    c: usize,
    has_bias: bool,
    hidden: Vec<f64>,
    ends: Vec<i64>,
    weight: Vec<f64>,
    bias: Vec<f64>,
    grad: Vec<f64>,
}

#[derive(Deserialize)]
struct ScalarExpected {
    rewards: Vec<f64>,
    grad_hidden: Vec<f64>,
    grad_weight: Vec<f64>,
    grad_bias: Vec<f64>,
}

fn scalar_reference(c: &ScalarCase) -> ScalarExpected {
    let (n, t, h, k) = (c.n, c.t, c.h, c.c);
    let mut e = ScalarExpected {
        rewards: vec![0.0; n * k],
        grad_hidden: vec![0.0; n * t * h],
        grad_weight: vec![0.0; k * h],
        grad_bias: vec![0.0; if c.has_bias { k } else { 0 }],
    };
    for s in 0..n {
        let row = (s * t + c.ends[s] as usize) * h;
        for j in 0..k {
            let dot: f64 = (0..h).map(|i| c.hidden[row + i] * c.weight[j * h + i]).sum();
            e.rewards[s * k + j] = dot + if c.has_bias { c.bias[j] } else { 0.0 };
            let g = c.grad[s * k + j];
            for i in 0..h {
                e.grad_hidden[row + i] += g * c.weight[j * h + i];
                e.grad_weight[j * h + i] += g * c.hidden[row + i];
            }
            if c.has_bias {
                e.grad_bias[j] += g;
            }
        }
    }
    e
}

fn random_scalar(rng: &mut StdRng, (n, t, h, c): (usize, usize, usize, usize), has_bias: bool) -> ScalarCase {
    let mut ends: Vec<i64> = (0..n).map(|_| rng.gen_range(0..t as i64)).collect();
    ends[0] = 0;
    ends[n - 1] = t as i64 - 1;
    ScalarCase {
        n,
        t,
        h,
        c,
        has_bias,
        hidden: uniform(rng, n * t * h, 1.0),
        ends,
        weight: uniform(rng, c * h, 2.0 / (h as f64).sqrt()),
        bias: if has_bias { uniform(rng, c, 0.5) } else { vec![] },
        grad: uniform(rng, n * c, 1.0),
    }
}

impl ScalarCase {
    /// The case with its float inputs rounded to `dtype` (what the op actually sees).
    fn rounded(&self, dtype: DType) -> ScalarCase {
        ScalarCase {
            hidden: rounded(&self.hidden, dtype),
            weight: rounded(&self.weight, dtype),
            bias: rounded(&self.bias, dtype),
            grad: rounded(&self.grad, DType::F32),
            ..self.clone()
        }
    }
}

struct ScalarInputs {
    hidden: Tensor,
    ends: Tensor,
    weight: Tensor,
    bias: Option<Tensor>,
    grad: Tensor,
}

impl ScalarInputs {
    fn new(c: &ScalarCase, dtype: DType, device: Device) -> Self {
        ScalarInputs {
            hidden: tensor(&c.hidden, &[c.n, c.t, c.h], dtype, device),
            ends: Tensor::from_slice(&c.ends, &[c.n], device).unwrap(),
            weight: tensor(&c.weight, &[c.c, c.h], dtype, device),
            bias: c.has_bias.then(|| tensor(&c.bias, &[c.c], dtype, device)),
            grad: tensor(&c.grad, &[c.n, c.c], DType::F32, device),
        }
    }

    fn head(&self) -> ScalarHead<'_> {
        ScalarHead { hidden: &self.hidden, ends: &self.ends, weight: &self.weight, bias: self.bias.as_ref() }
    }

    fn run(&self) -> unireward::Result<(Tensor, ScalarHeadGrads)> {
        Ok((scalar_reward(self.head())?, scalar_reward_backward(self.head(), &self.grad)?))
    }
}

fn check_scalar(c: &ScalarCase, e: &ScalarExpected, dtype: DType, device: Device, rel: f64) {
    let inputs = ScalarInputs::new(c, dtype, device);
    let (rewards, grads) = inputs.run().unwrap();
    assert_eq!((rewards.shape(), rewards.dtype(), rewards.device()), (&[c.n, c.c][..], DType::F32, device));
    assert_close("rewards", &values(&rewards), &e.rewards, rel);
    assert_close("grad_hidden", &values(&grads.grad_hidden), &e.grad_hidden, rel);
    assert_close("grad_weight", &values(&grads.grad_weight), &e.grad_weight, rel);
    assert_eq!(grads.grad_hidden.dtype(), dtype);
    assert_eq!(grads.grad_weight.dtype(), dtype);
    match (&grads.grad_bias, c.has_bias) {
        (Some(gb), true) => {
            assert_close("grad_bias", &values(gb), &e.grad_bias, rel);
            assert_eq!(gb.dtype(), dtype);
        }
        (None, false) => {}
        _ => panic!("grad_bias present iff the bias is"),
    }
}

const SCALAR_FIXTURES: [&str; 3] = ["scalar_bt", "scalar_multi", "scalar_t1"];

#[test]
fn scalar_matches_pytorch_fixtures() {
    for name in SCALAR_FIXTURES {
        let (c, e): (ScalarCase, ScalarExpected) = (fixture(name), fixture(name));
        check_scalar(&c, &e, DType::F32, Device::Cpu, 1e-5);
        // i32 end positions read the same rows.
        let mut inputs = ScalarInputs::new(&c, DType::F32, Device::Cpu);
        inputs.ends = inputs.ends.to_dtype(DType::I32).unwrap();
        assert_close("rewards (i32 ends)", &values(&inputs.run().unwrap().0), &e.rewards, 1e-5);
    }
}

#[test]
fn scalar_rust_reference_agrees_with_pytorch() {
    for name in SCALAR_FIXTURES {
        let (c, e): (ScalarCase, ScalarExpected) = (fixture(name), fixture(name));
        let r = scalar_reference(&c);
        assert_close("rewards", &r.rewards, &e.rewards, 1e-12);
        assert_close("grad_hidden", &r.grad_hidden, &e.grad_hidden, 1e-12);
        assert_close("grad_weight", &r.grad_weight, &e.grad_weight, 1e-12);
        assert_close("grad_bias", &r.grad_bias, &e.grad_bias, 1e-12);
    }
}

#[test]
fn scalar_random_inputs_match_the_f64_loop() {
    let mut rng = seeded();
    // T = 1, C = 1 and C > 1, H not a multiple of anything, and a batch large enough to split across threads.
    for (dims, bias) in [((3, 1, 7, 1), true), ((5, 9, 33, 4), false), ((300, 4, 64, 2), true), ((1, 2, 1, 1), false)] {
        let c = random_scalar(&mut rng, dims, bias);
        check_scalar(&c, &scalar_reference(&c), DType::F32, Device::Cpu, 1e-5);
    }
}

#[test]
fn scalar_half_precision_within_1e_2() {
    let mut rng = seeded();
    for dtype in [DType::BF16, DType::F16] {
        let c = random_scalar(&mut rng, (6, 5, 40, 3), true).rounded(dtype);
        check_scalar(&c, &scalar_reference(&c), dtype, Device::Cpu, 1e-2);
    }
}

#[test]
fn scalar_gradients_match_finite_differences() {
    let mut rng = seeded();
    let c = random_scalar(&mut rng, (3, 4, 6, 2), true);
    let e = scalar_reference(&c);
    // A non-linear objective so that the check also sees the upstream gradient: Σ grad·r + Σ r²/2.
    let objective = |c: &ScalarCase| {
        let r = scalar_reference(c).rewards;
        r.iter().zip(&c.grad).map(|(r, g)| g * r + r * r / 2.0).sum::<f64>()
    };
    let mut upstream = c.clone();
    upstream.grad = c.grad.iter().zip(&e.rewards).map(|(g, r)| g + r).collect();
    let e = scalar_reference(&upstream);
    for _ in 0..8 {
        let i = rng.gen_range(0..c.hidden.len());
        let fd = central(&c, 1e-6, |c, d| c.hidden[i] += d, objective);
        assert!((fd - e.grad_hidden[i]).abs() < 1e-6 * (1.0 + fd.abs()), "d hidden[{i}]: {fd} vs {}", e.grad_hidden[i]);
        let j = rng.gen_range(0..c.weight.len());
        let fd = central(&c, 1e-6, |c, d| c.weight[j] += d, objective);
        assert!((fd - e.grad_weight[j]).abs() < 1e-6 * (1.0 + fd.abs()), "d weight[{j}]: {fd} vs {}", e.grad_weight[j]);
        let k = rng.gen_range(0..c.c);
        let fd = central(&c, 1e-6, |c, d| c.bias[k] += d, objective);
        assert!((fd - e.grad_bias[k]).abs() < 1e-6 * (1.0 + fd.abs()), "d bias[{k}]: {fd} vs {}", e.grad_bias[k]);
    }
    // And the f32 op itself: the objective is linear in each input, so a large step is exact up to rounding.
    let (_, grads) = ScalarInputs::new(&c, DType::F32, Device::Cpu).run().unwrap();
    let gw = values(&grads.grad_weight);
    let op_objective = |c: &ScalarCase| {
        let r = values(&ScalarInputs::new(c, DType::F32, Device::Cpu).run().unwrap().0);
        r.iter().zip(&c.grad).map(|(r, g)| g * r).sum::<f64>()
    };
    for (j, &g) in gw.iter().enumerate() {
        let fd = central(&c, 1e-2, |c, d| c.weight[j] += d, op_objective);
        assert!((fd - g).abs() < 1e-3 * (1.0 + g.abs()), "f32 d weight[{j}]: {fd} vs {g}");
    }
}

#[test]
fn scalar_bad_input_is_a_clear_error() {
    let mut rng = StdRng::seed_from_u64(5);
    let c = random_scalar(&mut rng, (3, 4, 5, 2), true);
    let cpu = Device::Cpu;
    let with = |f: &dyn Fn(&mut ScalarInputs)| {
        let mut inputs = ScalarInputs::new(&c, DType::F32, cpu);
        f(&mut inputs);
        inputs.run()
    };
    for (end, what) in [(4i64, "sequence 1 has no token 4 (T = 4)"), (-1, "`ends[1]` = -1")] {
        let err = expect_err(with(&|i| i.ends = Tensor::from_slice(&[0i64, end, 3], &[3], cpu).unwrap()), what);
        assert!(matches!(err, Error::InvalidArgument(_)));
    }
    let err = expect_err(with(&|i| i.weight = Tensor::zeros(&[2, 6], DType::F32, cpu).unwrap()), "hidden size 5");
    assert!(matches!(err, Error::Shape(_)));
    expect_err(with(&|i| i.bias = Some(Tensor::zeros(&[3], DType::F32, cpu).unwrap())), "`bias`");
    let err = expect_err(with(&|i| i.weight = Tensor::zeros(&[2, 5], DType::BF16, cpu).unwrap()), "dtype of `hidden`");
    assert!(matches!(err, Error::DType { arg: "weight", .. }));
    expect_err(with(&|i| i.bias = Some(Tensor::zeros(&[2], DType::F16, cpu).unwrap())), "`bias`");
    expect_err(with(&|i| i.hidden = Tensor::zeros(&[3, 4, 5], DType::I32, cpu).unwrap()), "hidden");
    expect_err(with(&|i| i.hidden = Tensor::zeros(&[12, 5], DType::F32, cpu).unwrap()), "rank 3");
    expect_err(with(&|i| i.ends = Tensor::zeros(&[3], DType::F32, cpu).unwrap()), "ends");
    expect_err(with(&|i| i.ends = Tensor::zeros(&[2], DType::I64, cpu).unwrap()), "`ends`");
    expect_err(with(&|i| i.grad = Tensor::zeros(&[3, 1], DType::F32, cpu).unwrap()), "grad_rewards");
    expect_err(with(&|i| i.grad = Tensor::zeros(&[3, 2], DType::BF16, cpu).unwrap()), "grad_rewards");
    let err = expect_err(
        with(&|i| {
            i.hidden = Tensor::zeros(&[0, 4, 5], DType::F32, cpu).unwrap();
            i.ends = Tensor::zeros(&[0], DType::I64, cpu).unwrap();
        }),
        "empty",
    );
    assert!(matches!(err, Error::Shape(_)));
}

#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
#[test]
fn scalar_cuda_matches_cpu() {
    let mut rng = seeded();
    for (dims, bias) in [((3, 1, 7, 1), true), ((70, 9, 300, 4), false), ((1, 5, 1100, 2), true)] {
        let c = random_scalar(&mut rng, dims, bias);
        check_scalar(&c, &scalar_reference(&c), DType::F32, GPU, 1e-5);
        for dtype in [DType::BF16, DType::F16] {
            let r = c.rounded(dtype);
            check_scalar(&r, &scalar_reference(&r), dtype, GPU, 1e-2);
        }
        // Reductions run in a fixed order: a second run gives the same bits.
        let inputs = ScalarInputs::new(&c, DType::F32, GPU);
        let bits = |(r, g): (Tensor, ScalarHeadGrads)| {
            [r, g.grad_hidden, g.grad_weight].iter().map(|t| t.to_vec::<f32>().unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(bits(inputs.run().unwrap()), bits(inputs.run().unwrap()));
    }
}

// ------------------------------------------------------------------------------------------------- verdict head

#[derive(Clone, Deserialize)]
struct VerdictCase {
    b: usize,
    v: usize,
    offsets: Vec<usize>,
    ids: Vec<u32>,
    values: Vec<f32>,
    logits: Vec<f64>,
    grad_log_probs: Vec<f64>,
    grad_expected: Vec<f64>,
}

#[derive(Deserialize)]
struct VerdictExpected {
    log_probs: Vec<f64>,
    probs: Vec<f64>,
    expected: Vec<f64>,
    grad_logits: Vec<f64>,
}

fn lse64(xs: impl Iterator<Item = f64> + Clone) -> f64 {
    let m = xs.clone().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + xs.map(|x| (x - m).exp()).sum::<f64>().ln()
}

impl VerdictCase {
    fn k(&self) -> usize {
        self.offsets.len() - 1
    }

    fn class(&self, k: usize) -> &[u32] {
        &self.ids[self.offsets[k]..self.offsets[k + 1]]
    }

    fn classes(&self) -> VerdictClasses {
        let sets: Vec<&[u32]> = (0..self.k()).map(|k| self.class(k)).collect();
        let classes = VerdictClasses::from_sets(&sets).unwrap();
        if self.values.is_empty() {
            classes
        } else {
            classes.with_values(&self.values).unwrap()
        }
    }

    fn rounded(&self, dtype: DType) -> VerdictCase {
        VerdictCase { logits: rounded(&self.logits, dtype), ..self.clone() }
    }
}

/// The f64 reference: per-class and union logsumexps, then the analytic gradient
/// `d x_i = g_k·w_i − q_i·Σ g + g_E·q_i·(value_k − E)`, checked itself by finite differences below.
fn verdict_reference(c: &VerdictCase) -> VerdictExpected {
    let (b, v, k) = (c.b, c.v, c.k());
    let mut e = VerdictExpected {
        log_probs: vec![0.0; b * k],
        probs: vec![0.0; b * k],
        expected: vec![0.0; if c.values.is_empty() { 0 } else { b }],
        grad_logits: vec![0.0; b * v],
    };
    for r in 0..b {
        let x = |id: u32| c.logits[r * v + id as usize];
        let class_lse: Vec<f64> = (0..k).map(|j| lse64(c.class(j).iter().map(|&id| x(id)))).collect();
        let union = lse64(c.ids.iter().map(|&id| x(id)));
        let g_sum: f64 = (0..k).map(|j| c.grad_log_probs[r * k + j]).sum();
        let mut expected = 0.0;
        for (j, &l) in class_lse.iter().enumerate() {
            e.log_probs[r * k + j] = l - union;
            e.probs[r * k + j] = (l - union).exp();
            expected += e.probs[r * k + j] * c.values.get(j).map_or(0.0, |&v| v as f64);
        }
        if !c.values.is_empty() {
            e.expected[r] = expected;
        }
        let g_e = c.grad_expected.get(r).copied().unwrap_or(0.0);
        for (j, &l) in class_lse.iter().enumerate() {
            for &id in c.class(j) {
                let (w, q) = ((x(id) - l).exp(), (x(id) - union).exp());
                let value = c.values.get(j).map_or(0.0, |&v| v as f64);
                e.grad_logits[r * v + id as usize] =
                    c.grad_log_probs[r * k + j] * w - q * g_sum + g_e * q * (value - expected);
            }
        }
    }
    e
}

/// B rows of V logits (scale `scale`), the given classes, values and random upstream gradients.
fn random_verdict(
    rng: &mut StdRng,
    b: usize,
    v: usize,
    sets: &[&[u32]],
    values: Option<&[f32]>,
    scale: f64,
) -> VerdictCase {
    let mut offsets = vec![0];
    sets.iter().for_each(|s| offsets.push(offsets[offsets.len() - 1] + s.len()));
    VerdictCase {
        b,
        v,
        offsets,
        ids: sets.concat(),
        values: values.map_or(vec![], <[f32]>::to_vec),
        logits: uniform(rng, b * v, scale),
        grad_log_probs: uniform(rng, b * sets.len(), 1.0),
        grad_expected: if values.is_some() { uniform(rng, b, 1.0) } else { vec![] },
    }
}

fn run_verdict(c: &VerdictCase, dtype: DType, device: Device) -> (Verdict, Tensor) {
    let classes = c.classes();
    let logits = tensor(&c.logits, &[c.b, c.v], dtype, device);
    let out = verdict_head(&logits, &classes).unwrap();
    let g_lp = tensor(&c.grad_log_probs, &[c.b, c.k()], DType::F32, device);
    let g_e = (!c.values.is_empty()).then(|| tensor(&c.grad_expected, &[c.b], DType::F32, device));
    let grads = VerdictGrads { log_probs: Some(&g_lp), expected_score: g_e.as_ref() };
    let grad = verdict_head_backward(&logits, &classes, grads).unwrap();
    (out, grad)
}

fn check_verdict(c: &VerdictCase, e: &VerdictExpected, dtype: DType, device: Device, rel: f64) {
    let (out, grad) = run_verdict(c, dtype, device);
    for t in [&out.probs, &out.log_probs] {
        assert_eq!((t.shape(), t.dtype(), t.device()), (&[c.b, c.k()][..], DType::F32, device));
    }
    assert_close("log_probs", &values(&out.log_probs), &e.log_probs, rel);
    assert_close("probs", &values(&out.probs), &e.probs, rel);
    match &out.expected_score {
        Some(s) => assert_close("expected_score", &values(s), &e.expected, rel),
        None => assert!(c.values.is_empty(), "expected_score missing"),
    }
    assert_eq!((grad.shape(), grad.dtype()), (&[c.b, c.v][..], dtype));
    assert_close("grad_logits", &values(&grad), &e.grad_logits, rel);
}

const VERDICT_FIXTURES: [&str; 5] =
    ["verdict_pair", "verdict_scores", "verdict_large", "verdict_k1", "verdict_many_ids"];

#[test]
fn verdict_matches_pytorch_fixtures() {
    for name in VERDICT_FIXTURES {
        let (c, e): (VerdictCase, VerdictExpected) = (fixture(name), fixture(name));
        check_verdict(&c, &e, DType::F32, Device::Cpu, 1e-5);
    }
}

#[test]
fn verdict_rust_reference_agrees_with_pytorch() {
    for name in VERDICT_FIXTURES {
        let (c, e): (VerdictCase, VerdictExpected) = (fixture(name), fixture(name));
        let r = verdict_reference(&c);
        assert_close("log_probs", &r.log_probs, &e.log_probs, 1e-12);
        assert_close("expected", &r.expected, &e.expected, 1e-12);
        assert_close("grad_logits", &r.grad_logits, &e.grad_logits, 1e-12);
    }
}

#[test]
fn verdict_random_inputs_match_the_f64_loop() {
    let mut rng = seeded();
    let ten: Vec<f32> = (1..=10).map(|v| v as f32).collect();
    let scale_ids: Vec<Vec<u32>> = (0..10).map(|k| vec![500 + k, 900 + k]).collect();
    let scale_sets: Vec<&[u32]> = scale_ids.iter().map(Vec::as_slice).collect();
    let many: Vec<u32> = (0..1000).step_by(3).collect();
    let cases = [
        // V not a multiple of any block size, three classes of a few ids.
        random_verdict(&mut rng, 17, 1001, &[&[3, 1000], &[4], &[5, 6, 7]], None, 4.0),
        // A 10-value score scale.
        random_verdict(&mut rng, 9, 1000, &scale_sets, Some(&ten), 4.0),
        // One class with many ids, one with a single id; logits of magnitude 1e4.
        random_verdict(&mut rng, 3, 1000, &[&many, &[1]], Some(&[0.0, 1.0]), 1e4),
        // K = 1, and a batch large enough to split across threads.
        random_verdict(&mut rng, 5000, 20, &[&[2, 9, 19]], None, 2.0),
    ];
    for c in &cases {
        // Inputs rounded to f32 as the op sees them, so 1e4-sized logits compare exactly.
        let c = c.rounded(DType::F32);
        check_verdict(&c, &verdict_reference(&c), DType::F32, Device::Cpu, 1e-5);
    }
}

#[test]
fn verdict_half_precision_within_1e_2() {
    let mut rng = seeded();
    let five: Vec<f32> = (1..=5).map(|v| v as f32).collect();
    let c = random_verdict(&mut rng, 8, 333, &[&[1, 2], &[30], &[40, 41], &[300], &[332]], Some(&five), 5.0);
    for dtype in [DType::BF16, DType::F16] {
        let r = c.rounded(dtype);
        check_verdict(&r, &verdict_reference(&r), dtype, Device::Cpu, 1e-2);
    }
}

#[test]
fn verdict_gradients_match_finite_differences() {
    let mut rng = seeded();
    let c = random_verdict(&mut rng, 3, 12, &[&[0, 5], &[3], &[7, 8, 11]], Some(&[1.0, 2.5, 4.0]), 2.0);
    let e = verdict_reference(&c);
    let objective = |c: &VerdictCase| {
        let r = verdict_reference(c);
        let lp: f64 = r.log_probs.iter().zip(&c.grad_log_probs).map(|(l, g)| l * g).sum();
        lp + r.expected.iter().zip(&c.grad_expected).map(|(s, g)| s * g).sum::<f64>()
    };
    for i in 0..c.logits.len() {
        let fd = central(&c, 1e-6, |c, d| c.logits[i] += d, objective);
        assert!((fd - e.grad_logits[i]).abs() < 1e-7 * (1.0 + fd.abs()), "d logits[{i}]: {fd} vs {}", e.grad_logits[i]);
    }
    // The f32 op, with a step its precision supports.
    let (_, grad) = run_verdict(&c, DType::F32, Device::Cpu);
    let grad = values(&grad);
    let op_objective = |c: &VerdictCase| {
        let (out, _) = run_verdict(c, DType::F32, Device::Cpu);
        let lp: f64 = values(&out.log_probs).iter().zip(&c.grad_log_probs).map(|(l, g)| l * g).sum();
        lp + values(&out.expected_score.unwrap()).iter().zip(&c.grad_expected).map(|(s, g)| s * g).sum::<f64>()
    };
    for (i, &g) in grad.iter().enumerate() {
        let fd = central(&c, 1e-2, |c, d| c.logits[i] += d, op_objective);
        assert!((fd - g).abs() < 2e-3 * (1.0 + g.abs()), "f32 d logits[{i}]: {fd} vs {g}");
    }
}

#[test]
fn verdict_each_upstream_gradient_alone() {
    let mut rng = seeded();
    let c = random_verdict(&mut rng, 4, 30, &[&[0], &[10, 20], &[29]], Some(&[1.0, 2.0, 3.0]), 3.0);
    let classes = c.classes();
    let logits = tensor(&c.logits, &[c.b, c.v], DType::F32, Device::Cpu);
    let g_lp = tensor(&c.grad_log_probs, &[c.b, 3], DType::F32, Device::Cpu);
    let g_e = tensor(&c.grad_expected, &[c.b], DType::F32, Device::Cpu);
    for (with_lp, with_e) in [(true, false), (false, true)] {
        let mut only = c.clone();
        if !with_lp {
            only.grad_log_probs.iter_mut().for_each(|g| *g = 0.0);
        }
        if !with_e {
            only.grad_expected.iter_mut().for_each(|g| *g = 0.0);
        }
        let grads = VerdictGrads { log_probs: with_lp.then_some(&g_lp), expected_score: with_e.then_some(&g_e) };
        let grad = verdict_head_backward(&logits, &classes, grads).unwrap();
        assert_close("grad_logits", &values(&grad), &verdict_reference(&only).grad_logits, 1e-5);
    }
}

#[test]
fn verdict_documented_edge_cases() {
    let cpu = Device::Cpu;
    // K = 1: p = 1, log p = 0, the expected score is the class value, and nothing has a gradient.
    let classes = VerdictClasses::from_sets(&[&[1, 3]]).unwrap().with_values(&[7.0]).unwrap();
    let logits = Tensor::from_slice(&[0.5f32, -2.0, 9.0, 1e4, 3.0, 1.0, -1e4, 0.0], &[2, 4], cpu).unwrap();
    let out = verdict_head(&logits, &classes).unwrap();
    assert_eq!(values(&out.probs), [1.0, 1.0]);
    assert_eq!(values(&out.log_probs), [0.0, 0.0]);
    assert_eq!(values(&out.expected_score.unwrap()), [7.0, 7.0]);
    let g = Tensor::from_slice(&[1.0f32, -2.0], &[2, 1], cpu).unwrap();
    let ge = Tensor::from_slice(&[1.0f32, 1.0], &[2], cpu).unwrap();
    let grad =
        verdict_head_backward(&logits, &classes, VerdictGrads { log_probs: Some(&g), expected_score: Some(&ge) })
            .unwrap();
    assert!(values(&grad).iter().all(|&x| x == 0.0));

    // A class whose tokens are all −∞ (masked) has p = 0 and log p = −∞; the gradient stays finite.
    let classes = VerdictClasses::from_sets(&[&[0], &[1, 2], &[3]]).unwrap();
    let inf = f32::NEG_INFINITY;
    let logits = Tensor::from_slice(&[1.0f32, inf, inf, 2.0], &[1, 4], cpu).unwrap();
    let out = verdict_head(&logits, &classes).unwrap();
    let lp = values(&out.log_probs);
    assert_eq!(lp[1], f64::NEG_INFINITY);
    assert_eq!(values(&out.probs)[1], 0.0);
    assert!((values(&out.probs).iter().sum::<f64>() - 1.0).abs() < 1e-6);
    let g = Tensor::from_slice(&[1.0f32, 1.0, -1.0], &[1, 3], cpu).unwrap();
    let grad =
        verdict_head_backward(&logits, &classes, VerdictGrads { log_probs: Some(&g), expected_score: None }).unwrap();
    let grad = values(&grad);
    assert!(grad.iter().all(|x| x.is_finite()), "{grad:?}");
    assert_eq!((grad[1], grad[2]), (0.0, 0.0));

    // CSR tensors build the same classes as the sets.
    let offsets = Tensor::from_slice(&[0i32, 1, 3, 4], &[4], cpu).unwrap();
    let ids = Tensor::from_slice(&[0i64, 1, 2, 3], &[4], cpu).unwrap();
    assert_eq!(VerdictClasses::from_csr(&offsets, &ids).unwrap(), classes);
    assert_eq!(classes.num_classes(), 3);
    assert_eq!(classes.class(1), &[1, 2]);
}

#[test]
fn verdict_bad_input_is_a_clear_error() {
    let cpu = Device::Cpu;
    invalid(VerdictClasses::from_sets(&[&[1, 2], &[3, 2]]), "token id 2 appears in classes 0 and 1");
    invalid(VerdictClasses::from_sets(&[&[1, 4, 1]]), "token id 1 appears twice in class 0");
    invalid(VerdictClasses::from_sets(&[&[1], &[]]), "verdict class 1 has no token ids");
    invalid(VerdictClasses::from_sets(&[]), "at least one class");
    let csr = |offsets: &[i64], ids: &[i64]| {
        VerdictClasses::from_csr(
            &Tensor::from_slice(offsets, &[offsets.len()], cpu).unwrap(),
            &Tensor::from_slice(ids, &[ids.len()], cpu).unwrap(),
        )
    };
    invalid(csr(&[0, 2, 1, 3], &[1, 2, 3]), "decreases at class 1");
    invalid(csr(&[0, 2], &[1, 2, 3]), "end at the number of token ids (3)");
    invalid(csr(&[0, 1], &[-5]), "`token_ids[0]` = -5");
    let floats = Tensor::zeros(&[2], DType::F32, cpu).unwrap();
    expect_err(VerdictClasses::from_csr(&floats, &floats), "class_offsets");
    let classes = VerdictClasses::from_sets(&[&[1], &[2, 3]]).unwrap();
    assert!(matches!(expect_err(classes.clone().with_values(&[1.0]), "1 entries for 2 classes"), Error::Shape(_)));
    invalid(classes.clone().with_values(&[1.0, f32::NAN]), "values[1]");

    let logits = Tensor::zeros(&[2, 4], DType::F32, cpu).unwrap();
    let far = VerdictClasses::from_sets(&[&[1], &[4]]).unwrap();
    invalid(verdict_head(&logits, &far), "token id 4 of verdict class 1 is outside the vocabulary [0, 4)");
    expect_err(verdict_head(&Tensor::zeros(&[2, 4], DType::I64, cpu).unwrap(), &classes), "logits");
    expect_err(verdict_head(&Tensor::zeros(&[8], DType::F32, cpu).unwrap(), &classes), "rank 2");
    let err = expect_err(verdict_head(&Tensor::zeros(&[0, 4], DType::F32, cpu).unwrap(), &classes), "empty");
    assert!(matches!(err, Error::Shape(_)));

    let backward = |g: Option<&Tensor>, ge: Option<&Tensor>| {
        verdict_head_backward(&logits, &classes, VerdictGrads { log_probs: g, expected_score: ge })
    };
    expect_err(backward(None, None), "needs `grads.log_probs`");
    expect_err(backward(Some(&Tensor::zeros(&[2, 3], DType::F32, cpu).unwrap()), None), "grads.log_probs");
    expect_err(backward(Some(&Tensor::zeros(&[2, 2], DType::BF16, cpu).unwrap()), None), "grads.log_probs");
    let ge = Tensor::zeros(&[2], DType::F32, cpu).unwrap();
    expect_err(backward(None, Some(&ge)), "no values");
}

#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
#[test]
fn verdict_cuda_matches_cpu() {
    let mut rng = seeded();
    let ten: Vec<f32> = (1..=10).map(|v| v as f32).collect();
    let scale_ids: Vec<Vec<u32>> = (0..10).map(|k| vec![500 + k, 900 + k]).collect();
    let scale_sets: Vec<&[u32]> = scale_ids.iter().map(Vec::as_slice).collect();
    let many: Vec<u32> = (0..1000).step_by(3).collect();
    let cases = [
        random_verdict(&mut rng, 17, 1001, &[&[3, 1000], &[4], &[5, 6, 7]], None, 4.0),
        random_verdict(&mut rng, 9, 1000, &scale_sets, Some(&ten), 4.0),
        random_verdict(&mut rng, 3, 1000, &[&many, &[1]], Some(&[0.0, 1.0]), 1e4),
        random_verdict(&mut rng, 300, 20, &[&[2, 9, 19]], None, 2.0),
    ];
    for c in &cases {
        for (dtype, rel) in [(DType::F32, 1e-5), (DType::BF16, 1e-2), (DType::F16, 1e-2)] {
            let r = c.rounded(dtype);
            check_verdict(&r, &verdict_reference(&r), dtype, GPU, rel);
        }
        let bits =
            |(out, grad): (Verdict, Tensor)| (out.log_probs.to_vec::<f32>().unwrap(), grad.to_vec::<f32>().unwrap());
        assert_eq!(bits(run_verdict(c, DType::F32, GPU)), bits(run_verdict(c, DType::F32, GPU)));
    }
    let logits = Tensor::zeros(&[2, 4], DType::F32, GPU).unwrap();
    let far = VerdictClasses::from_sets(&[&[1], &[4]]).unwrap();
    expect_err(verdict_head(&logits, &far), "outside the vocabulary");
}

/// A NaN or +∞ among a row's listed logits makes every class's log-prob, probability and the expected score NaN
/// (PyTorch's log_softmax over the listed logits), and the row's gradient NaN; a −∞ is a zero-probability token;
/// unlisted logits are never read.
#[test]
fn nan_and_infinite_listed_logits_make_the_row_nan() {
    let classes = VerdictClasses::from_sets(&[&[0], &[1, 2], &[3]]).unwrap().with_values(&[1.0, 2.0, 3.0]).unwrap();
    let v = 6;
    let mut x = [0.5f64, -0.25, 1.0, 0.0, 2.0, -1.0].repeat(5);
    x[1] = f64::NAN; // row 0: a listed logit
    x[v + 3] = f64::INFINITY; // row 1: a listed logit, alone in its class
    x[2 * v] = f64::NEG_INFINITY; // row 2: finite
    x[3 * v + 5] = f64::NAN; // row 3: an unlisted logit, never read
    let logits = tensor(&x, &[5, v], DType::F32, Device::Cpu);
    let out = verdict_head(&logits, &classes).unwrap();
    let (log_probs, probs, expected) =
        (values(&out.log_probs), values(&out.probs), values(out.expected_score.as_ref().unwrap()));
    for row in 0..5 {
        let nan = row < 2;
        let lp = &log_probs[row * 3..][..3];
        assert!(lp.iter().chain(&probs[row * 3..][..3]).all(|p| p.is_nan() == nan), "row {row}: {lp:?}");
        assert_eq!(expected[row].is_nan(), nan, "row {row}");
    }
    assert_eq!(probs[2 * 3], 0.0, "a class of one −∞ logit has probability 0");
    let g = tensor(&[1.0; 15], &[5, 3], DType::F32, Device::Cpu);
    let ge = tensor(&[1.0; 5], &[5], DType::F32, Device::Cpu);
    let grad = values(
        &verdict_head_backward(&logits, &classes, VerdictGrads { log_probs: Some(&g), expected_score: Some(&ge) })
            .unwrap(),
    );
    for row in 0..5 {
        let listed = &grad[row * v..][..4];
        assert!(listed.iter().all(|d| d.is_nan() == (row < 2)), "row {row}: {listed:?}");
    }
}

#[test]
fn class_values_must_be_one_per_class() {
    let classes = VerdictClasses::from_sets(&[&[0], &[1]]).unwrap();
    for values in [&[1.0f32][..], &[1.0, 2.0, 3.0]] {
        let err = classes.clone().with_values(values).unwrap_err().to_string();
        assert!(err.contains(&format!("{} entries for 2 classes", values.len())), "{err}");
    }
}
