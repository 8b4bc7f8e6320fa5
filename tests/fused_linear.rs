//! The fused linear log-prob path against float64 references: PyTorch fixtures, an f64 Rust loop on fresh random
//! inputs, finite differences, and the materialised path (`sequence_logprobs` on `h·Wᵀ + b`); with per-token weights
//! (the weighted sums and their gradient) and the log collision probabilities against the same f64 loop and finite
//! differences.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use unireward::ops::fused_linear::{
    fused_linear_logprobs, fused_linear_logprobs_backward, fused_linear_logprobs_backward_into,
    fused_linear_logprobs_extended, fused_linear_weighted_logprobs_backward_into, ExtendedLogProbs, ExtraOutputs,
    FusedLinearConfig, FusedLinearGrads, FusedLinearGradsMut, LinearHead, WeightedUpstream,
};
use unireward::ops::logprobs::{sequence_logprobs, LogProbsConfig, SequenceLogProbs, TokenReduction};
use unireward::{DType, Device, Error, Tensor};

const IGNORE: i64 = -100;

/// A problem instance in f64, the layout of the fixtures.
#[derive(Clone, Deserialize)]
struct Case {
    n: usize,
    t: usize,
    h: usize,
    v: usize,
    reduction: String,
    has_bias: bool,
    hidden: Vec<f64>,
    weight: Vec<f64>,
    bias: Vec<f64>,
    labels: Vec<i64>,
    mask: Vec<i64>,
    grad_logps: Vec<f64>,
    /// Per-token weights `[N,T]` of the weighted sums (empty: none) and their upstream gradient `[N]`.
    #[serde(default)]
    token_weights: Vec<f64>,
    #[serde(default)]
    grad_weighted: Vec<f64>,
}

/// Expected outputs, from PyTorch or from [`reference`].
#[derive(Deserialize)]
struct Expected {
    logps: Vec<f64>,
    token_counts: Vec<f64>,
    entropy: Vec<f64>,
    mean_logits: Vec<f64>,
    grad_hidden: Vec<f64>,
    grad_weight: Vec<f64>,
    grad_bias: Vec<f64>,
    /// The weighted sums, when the case has token weights.
    #[serde(default)]
    weighted: Vec<f64>,
    /// Σ over counted tokens of log Σ_v p_v² (reduced like `logps`).
    #[serde(default)]
    log_collision: Vec<f64>,
}

/// The float64 reference: materialised logits, log-softmax, masked reduction and the analytic gradients.
fn reference(c: &Case) -> Expected {
    let (n, t, h, v) = (c.n, c.t, c.h, c.v);
    let mean = c.reduction == "mean";
    let mut e = Expected {
        logps: vec![0.0; n],
        token_counts: vec![0.0; n],
        entropy: vec![0.0; n],
        mean_logits: vec![0.0; n],
        grad_hidden: vec![0.0; n * t * h],
        grad_weight: vec![0.0; v * h],
        grad_bias: vec![0.0; if c.has_bias { v } else { 0 }],
        weighted: vec![0.0; if c.token_weights.is_empty() { 0 } else { n }],
        log_collision: vec![0.0; n],
    };
    let weighted = !c.token_weights.is_empty();
    let counted = |p: usize| c.labels[p] != IGNORE && c.mask[p] != 0;
    for p in 0..n * t {
        if counted(p) {
            e.token_counts[p / t] += 1.0;
        }
    }
    for p in (0..n * t).filter(|&p| counted(p)) {
        let s = p / t;
        let logits: Vec<f64> = (0..v)
            .map(|j| {
                let dot: f64 = (0..h).map(|k| c.hidden[p * h + k] * c.weight[j * h + k]).sum();
                dot + if c.has_bias { c.bias[j] } else { 0.0 }
            })
            .collect();
        let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + logits.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
        let probs: Vec<f64> = logits.iter().map(|x| (x - lse).exp()).collect();
        let label = c.labels[p] as usize;
        let count = e.token_counts[s];
        e.logps[s] += logits[label] - lse;
        e.log_collision[s] += probs.iter().map(|q| q * q).sum::<f64>().ln();
        let mut upstream = c.grad_logps[s];
        if weighted {
            e.weighted[s] += c.token_weights[p] * (logits[label] - lse);
            upstream += c.token_weights[p] * c.grad_weighted[s];
        }
        e.entropy[s] += -probs.iter().zip(&logits).map(|(q, x)| q * (x - lse)).sum::<f64>() / count;
        e.mean_logits[s] += logits.iter().sum::<f64>() / v as f64 / count;
        let scale = upstream / if mean { count } else { 1.0 };
        for (j, &prob) in probs.iter().enumerate() {
            let g = scale * (if j == label { 1.0 } else { 0.0 } - prob);
            for k in 0..h {
                e.grad_hidden[p * h + k] += g * c.weight[j * h + k];
                e.grad_weight[j * h + k] += g * c.hidden[p * h + k];
            }
            if c.has_bias {
                e.grad_bias[j] += g;
            }
        }
    }
    if mean {
        for s in 0..n {
            if e.token_counts[s] > 0.0 {
                e.logps[s] /= e.token_counts[s];
                e.log_collision[s] /= e.token_counts[s];
                if weighted {
                    e.weighted[s] /= e.token_counts[s];
                }
            }
        }
    }
    e
}

fn random_case(rng: &mut StdRng, (n, t, h, v): (usize, usize, usize, usize), has_bias: bool, mean: bool) -> Case {
    let mut normal =
        |len: usize, scale: f64| -> Vec<f64> { (0..len).map(|_| rng.gen_range(-1.0..1.0) * scale).collect() };
    let hidden = normal(n * t * h, 1.0);
    let weight = normal(v * h, 2.0 / (h as f64).sqrt());
    let bias = if has_bias { normal(v, 0.5) } else { vec![] };
    let grad_logps = normal(n, 1.0);
    let labels = (0..n * t).map(|p| if p % t == 0 { IGNORE } else { rng.gen_range(0..v as i64) }).collect();
    let mask = (0..n * t).map(|_| i64::from(rng.gen_bool(0.8))).collect();
    Case {
        n,
        t,
        h,
        v,
        reduction: if mean { "mean" } else { "sum" }.into(),
        has_bias,
        hidden,
        weight,
        bias,
        labels,
        mask,
        grad_logps,
        token_weights: vec![],
        grad_weighted: vec![],
    }
}

/// `c` with per-token weights (LD-DPO's 0/1 among them, and arbitrary ones) and an upstream gradient for their sums.
fn with_weights(rng: &mut StdRng, mut c: Case) -> Case {
    let choices = [0.0, 1.0, 0.5, -0.75, 2.0];
    c.token_weights = (0..c.n * c.t).map(|_| choices[rng.gen_range(0..choices.len())]).collect();
    c.grad_weighted = (0..c.n).map(|_| rng.gen_range(-1.0..1.0)).collect();
    c
}

/// The op's inputs as tensors of `dtype`.
struct Inputs {
    hidden: Tensor,
    weight: Tensor,
    bias: Option<Tensor>,
    labels: Tensor,
    mask: Tensor,
    grad_logps: Tensor,
    token_weights: Option<Tensor>,
    grad_weighted: Option<Tensor>,
}

impl Inputs {
    fn new(c: &Case, dtype: DType, device: Device) -> Inputs {
        let f = |x: &[f64], shape: &[usize]| {
            Tensor::from_f32(&x.iter().map(|&v| v as f32).collect::<Vec<_>>(), shape, dtype, device).unwrap()
        };
        Inputs {
            hidden: f(&c.hidden, &[c.n, c.t, c.h]),
            weight: f(&c.weight, &[c.v, c.h]),
            bias: c.has_bias.then(|| f(&c.bias, &[c.v])),
            labels: Tensor::from_slice(&c.labels, &[c.n, c.t], device).unwrap(),
            mask: Tensor::from_slice(&c.mask, &[c.n, c.t], device).unwrap(),
            grad_logps: f32s(&c.grad_logps, &[c.n], device),
            token_weights: (!c.token_weights.is_empty()).then(|| f32s(&c.token_weights, &[c.n, c.t], device)),
            grad_weighted: (!c.grad_weighted.is_empty()).then(|| f32s(&c.grad_weighted, &[c.n], device)),
        }
    }

    fn head(&self) -> LinearHead<'_> {
        LinearHead { hidden: &self.hidden, weight: &self.weight, bias: self.bias.as_ref() }
    }

    fn run(&self, cfg: &FusedLinearConfig) -> unireward::Result<(SequenceLogProbs, FusedLinearGrads)> {
        let out = fused_linear_logprobs(self.head(), &self.labels, Some(&self.mask), cfg)?;
        let grads =
            fused_linear_logprobs_backward(self.head(), &self.labels, Some(&self.mask), &out, &self.grad_logps, cfg)?;
        Ok((out, grads))
    }

    /// The extended forward (weighted sums and log collision probabilities) and the weighted backward (the case
    /// must have token weights): the outputs and the gradients.
    fn run_weighted(&self, cfg: &FusedLinearConfig) -> unireward::Result<(ExtendedLogProbs, FusedLinearGrads)> {
        let token_weights = self.token_weights.as_ref().expect("a weighted case");
        let extras = ExtraOutputs { token_weights: Some(token_weights), log_collision: true };
        let out = fused_linear_logprobs_extended(self.head(), &self.labels, Some(&self.mask), extras, cfg)?;
        let zeros_like = |t: &Tensor| Tensor::zeros(t.shape(), t.dtype(), t.device()).unwrap();
        let mut grads = FusedLinearGrads {
            grad_hidden: zeros_like(&self.hidden),
            grad_weight: zeros_like(&self.weight),
            grad_bias: self.bias.as_ref().map(zeros_like),
        };
        let upstream = WeightedUpstream {
            grad_logps: &self.grad_logps,
            token_weights,
            grad_weighted_logps: self.grad_weighted.as_ref().expect("a weighted case"),
        };
        let buffers = FusedLinearGradsMut {
            grad_hidden: &mut grads.grad_hidden,
            grad_weight: &mut grads.grad_weight,
            grad_bias: grads.grad_bias.as_mut(),
            accumulate: false,
        };
        fused_linear_weighted_logprobs_backward_into(
            self.head(),
            &self.labels,
            Some(&self.mask),
            &out.logprobs,
            upstream,
            cfg,
            buffers,
        )?;
        Ok((out, grads))
    }
}

fn f32s(x: &[f64], shape: &[usize], device: Device) -> Tensor {
    Tensor::from_f32(&x.iter().map(|&v| v as f32).collect::<Vec<_>>(), shape, DType::F32, device).unwrap()
}

fn config(c: &Case, chunk_tokens: Option<usize>) -> FusedLinearConfig {
    let reduction = if c.reduction == "mean" { TokenReduction::Mean } else { TokenReduction::Sum };
    FusedLinearConfig { logprobs: LogProbsConfig { reduction, ..Default::default() }, chunk_tokens }
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap().into_iter().map(f64::from).collect()
}

/// Every element within `rel` of the expected value, relative to the largest expected magnitude (floor 1).
fn assert_close(what: &str, got: &[f64], expected: &[f64], rel: f64) {
    assert_eq!(got.len(), expected.len(), "{what}: length");
    let scale = expected.iter().fold(1.0f64, |m, x| m.max(x.abs()));
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        assert!((g - e).abs() <= rel * scale, "{what}[{i}]: got {g}, expected {e} (tolerance {})", rel * scale);
    }
}

fn check(c: &Case, e: &Expected, dtype: DType, device: Device, chunk_tokens: Option<usize>, rel: f64) {
    let inputs = Inputs::new(c, dtype, device);
    let (out, grads) = if c.token_weights.is_empty() {
        inputs.run(&config(c, chunk_tokens)).unwrap()
    } else {
        let (out, grads) = inputs.run_weighted(&config(c, chunk_tokens)).unwrap();
        assert_close("weighted", &values(out.weighted_logps.as_ref().unwrap()), &e.weighted, rel);
        assert_close("log_collision", &values(out.log_collision.as_ref().unwrap()), &e.log_collision, rel);
        (out.logprobs, grads)
    };
    assert_close("logps", &values(&out.logps), &e.logps, rel);
    assert_close("token_counts", &values(&out.token_counts), &e.token_counts, 0.0);
    assert_close("entropy", &values(&out.entropy), &e.entropy, rel);
    assert_close("mean_logits", &values(&out.mean_logits), &e.mean_logits, rel);
    assert_close("grad_hidden", &values(&grads.grad_hidden), &e.grad_hidden, rel);
    assert_close("grad_weight", &values(&grads.grad_weight), &e.grad_weight, rel);
    match (&grads.grad_bias, c.has_bias) {
        (Some(gb), true) => assert_close("grad_bias", &values(gb), &e.grad_bias, rel),
        (None, false) => {}
        _ => panic!("grad_bias present iff the bias is"),
    }
    assert_eq!(grads.grad_hidden.dtype(), dtype);
    assert_eq!(grads.grad_weight.dtype(), dtype);
}

fn fixture(name: &str) -> (Case, Expected) {
    let path = format!("{}/tests/fixtures/fused_linear/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    (serde_json::from_str(&text).unwrap(), serde_json::from_str(&text).unwrap())
}

const FIXTURES: [&str; 4] = ["sum_bias", "mean_nobias", "single_token", "large_logits"];

#[test]
fn matches_pytorch_fixtures_in_f32() {
    for name in FIXTURES {
        let (c, e) = fixture(name);
        for chunk in [None, Some(1), Some(3)] {
            check(&c, &e, DType::F32, Device::Cpu, chunk, 1e-5);
        }
    }
}

#[test]
fn rust_reference_agrees_with_pytorch() {
    for name in FIXTURES {
        let (c, e) = fixture(name);
        let r = reference(&c);
        for (what, a, b) in [
            ("logps", &r.logps, &e.logps),
            ("grad_weight", &r.grad_weight, &e.grad_weight),
            ("grad_hidden", &r.grad_hidden, &e.grad_hidden),
        ] {
            assert_close(what, a, b, 1e-10);
        }
    }
}

#[test]
fn matches_pytorch_fixtures_in_half_precision() {
    for name in ["sum_bias", "mean_nobias", "single_token"] {
        let (c, e) = fixture(name);
        for dtype in [DType::BF16, DType::F16] {
            // Inputs are rounded to 8 (bf16) or 11 (f16) significant bits before any arithmetic.
            check(&c, &e, dtype, Device::Cpu, Some(2), 3e-2);
        }
    }
}

#[test]
fn random_inputs_match_the_f64_loop() {
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    for (dims, bias, mean) in
        [((2, 7, 5, 37), true, false), ((3, 1, 3, 1000), false, true), ((1, 9, 16, 129), true, true)]
    {
        let c = random_case(&mut rng, dims, bias, mean);
        let e = reference(&c);
        for chunk in [None, Some(1), Some(4)] {
            check(&c, &e, DType::F32, Device::Cpu, chunk, 2e-5);
        }
    }
}

#[test]
fn weighted_sums_log_collisions_and_gradients_match_the_f64_loop() {
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    for (dims, bias, mean) in
        [((2, 7, 5, 37), true, false), ((3, 1, 3, 1000), false, true), ((4, 9, 16, 129), true, true)]
    {
        let c = random_case(&mut rng, dims, bias, mean);
        let c = with_weights(&mut rng, c);
        let e = reference(&c);
        for chunk in [None, Some(1), Some(4)] {
            check(&c, &e, DType::F32, Device::Cpu, chunk, 2e-5);
        }
    }
}

/// A zero head gives uniform distributions: each token's log Σ_v p_v² is −log V.
#[test]
fn uniform_distributions_have_log_collision_minus_log_v() {
    let mut rng = StdRng::seed_from_u64(3);
    let c = random_case(&mut rng, (2, 4, 3, 17), false, false);
    let mut c = with_weights(&mut rng, c);
    c.weight.fill(0.0);
    let (out, _) = Inputs::new(&c, DType::F32, Device::Cpu).run_weighted(&config(&c, None)).unwrap();
    let counts = values(&out.logprobs.token_counts);
    let want: Vec<f64> = counts.iter().map(|n| -n * 17f64.ln()).collect();
    assert_close("log_collision", &values(out.log_collision.as_ref().unwrap()), &want, 1e-6);
}

/// With all weights 1 the weighted sums are the log-probs, and a weighted upstream gradient adds to the plain one.
#[test]
fn unit_weights_give_the_plain_sums_and_gradients() {
    let mut rng = StdRng::seed_from_u64(5);
    let c = random_case(&mut rng, (3, 6, 8, 51), true, false);
    let mut c = with_weights(&mut rng, c);
    c.token_weights.fill(1.0);
    let (out, grads) = Inputs::new(&c, DType::F32, Device::Cpu).run_weighted(&config(&c, Some(2))).unwrap();
    assert_eq!(values(out.weighted_logps.as_ref().unwrap()), values(&out.logprobs.logps));
    let mut plain = c.clone();
    plain.grad_logps.iter_mut().zip(&c.grad_weighted).for_each(|(g, w)| *g += w);
    let (_, plain_grads) = Inputs::new(&plain, DType::F32, Device::Cpu).run(&config(&plain, Some(2))).unwrap();
    assert_close("grad_weight", &values(&grads.grad_weight), &values(&plain_grads.grad_weight), 1e-6);
    assert_close("grad_hidden", &values(&grads.grad_hidden), &values(&plain_grads.grad_hidden), 1e-6);
}

#[test]
fn bad_token_weights_are_clear_errors() {
    let mut rng = StdRng::seed_from_u64(13);
    let c = random_case(&mut rng, (2, 3, 4, 10), false, false);
    let c = with_weights(&mut rng, c);
    let cfg = config(&c, None);
    let refused = |inputs: &Inputs, what: &str| {
        let err = inputs.run_weighted(&cfg).expect_err("bad token weights must be refused").to_string();
        assert!(err.contains(what), "{err}");
    };
    let mut bad = Inputs::new(&c, DType::F32, Device::Cpu);
    bad.token_weights = Some(Tensor::zeros(&[2, 4], DType::F32, Device::Cpu).unwrap());
    refused(&bad, "token_weights");
    bad.token_weights = Some(Tensor::zeros(&[2, 3], DType::I64, Device::Cpu).unwrap());
    refused(&bad, "token_weights");
    bad.token_weights = Some(Tensor::from_f32(&[0.0; 6], &[2, 3], DType::F32, Device::Cpu).unwrap());
    bad.grad_weighted = Some(Tensor::zeros(&[3], DType::F32, Device::Cpu).unwrap());
    refused(&bad, "grad_weighted_logps");
    // A NaN weight is refused where its token counts and never read where it does not.
    let counted = (0..c.n * c.t).find(|&p| c.labels[p] != IGNORE && c.mask[p] != 0).unwrap();
    let mut nan = c.clone();
    nan.token_weights[counted] = f64::NAN;
    refused(&Inputs::new(&nan, DType::F32, Device::Cpu), "`token_weights` is NaN");
    let uncounted = (0..c.n * c.t).find(|&p| c.labels[p] == IGNORE).unwrap();
    let mut ignored = c.clone();
    ignored.token_weights[uncounted] = f64::NAN;
    Inputs::new(&ignored, DType::F32, Device::Cpu).run_weighted(&cfg).unwrap();
}

#[test]
fn gradients_match_finite_differences() {
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let c = random_case(&mut rng, (2, 4, 6, 23), true, true);
    gradients_match_finite_differences_on(&mut rng, &c);
}

#[test]
fn weighted_gradients_match_finite_differences() {
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    for mean in [false, true] {
        let c = random_case(&mut rng, (2, 5, 6, 23), true, mean);
        let c = with_weights(&mut rng, c);
        gradients_match_finite_differences_on(&mut rng, &c);
    }
}

/// The objective `Σ g·logps (+ Σ g_w·weighted)` of `e` (the outputs for `c`).
fn objective_of(c: &Case, logps: &[f64], weighted: &[f64]) -> f64 {
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    dot(logps, &c.grad_logps) + dot(weighted, &c.grad_weighted)
}

/// The f64 reference's gradients against central differences of its objective, and the f32 op's largest hidden
/// gradient against a coarse difference of the op's own outputs.
fn gradients_match_finite_differences_on(rng: &mut StdRng, c: &Case) {
    let c = c.clone();
    let e = reference(&c);
    // The objective in f64, as a function of the inputs.
    let objective = |c: &Case| {
        let e = reference(c);
        objective_of(c, &e.logps, &e.weighted)
    };
    let step = 1e-6;
    let central = |mutate: &dyn Fn(&mut Case, f64)| {
        let (mut plus, mut minus) = (c.clone(), c.clone());
        mutate(&mut plus, step);
        mutate(&mut minus, -step);
        (objective(&plus) - objective(&minus)) / (2.0 * step)
    };
    for _ in 0..6 {
        let i = rng.gen_range(0..c.hidden.len());
        let fd = central(&|c, d| c.hidden[i] += d);
        assert!(
            (fd - e.grad_hidden[i]).abs() < 1e-6 * (1.0 + fd.abs()),
            "d hidden[{i}]: fd {fd} vs {}",
            e.grad_hidden[i]
        );
        let j = rng.gen_range(0..c.weight.len());
        let fd = central(&|c, d| c.weight[j] += d);
        assert!(
            (fd - e.grad_weight[j]).abs() < 1e-6 * (1.0 + fd.abs()),
            "d weight[{j}]: fd {fd} vs {}",
            e.grad_weight[j]
        );
        let k = rng.gen_range(0..c.v);
        let fd = central(&|c, d| c.bias[k] += d);
        assert!((fd - e.grad_bias[k]).abs() < 1e-6 * (1.0 + fd.abs()), "d bias[{k}]: fd {fd} vs {}", e.grad_bias[k]);
    }
    // And the f32 op itself, with a step its precision supports.
    let run = |c: &Case| {
        let inputs = Inputs::new(c, DType::F32, Device::Cpu);
        if c.token_weights.is_empty() {
            let (out, grads) = inputs.run(&config(c, Some(3))).unwrap();
            (objective_of(c, &values(&out.logps), &[]), grads)
        } else {
            let (out, grads) = inputs.run_weighted(&config(c, Some(3))).unwrap();
            (objective_of(c, &values(&out.logprobs.logps), &values(out.weighted_logps.as_ref().unwrap())), grads)
        }
    };
    let gh = values(&run(&c).1.grad_hidden);
    let objective_f32 = |c: &Case| run(c).0;
    let i = (0..c.hidden.len()).max_by(|&a, &b| gh[a].abs().total_cmp(&gh[b].abs())).unwrap();
    let (mut plus, mut minus) = (c.clone(), c.clone());
    plus.hidden[i] += 1e-2;
    minus.hidden[i] -= 1e-2;
    let fd = (objective_f32(&plus) - objective_f32(&minus)) / 2e-2;
    assert!((fd - gh[i]).abs() < 1e-2 * (1.0 + gh[i].abs()), "f32 d hidden[{i}]: fd {fd} vs {}", gh[i]);
}

#[test]
fn equals_the_materialised_path() {
    let mut rng = StdRng::seed_from_u64(7);
    let c = random_case(&mut rng, (2, 6, 8, 301), true, false);
    let inputs = Inputs::new(&c, DType::F32, Device::Cpu);
    let (fused, _) = inputs.run(&config(&c, Some(5))).unwrap();
    let e = reference(&c);
    // Materialise the logits in f64, round to f32, and run the unfused op.
    let logits: Vec<f32> = (0..c.n * c.t)
        .flat_map(|p| {
            let c = &c;
            (0..c.v).map(move |j| {
                ((0..c.h).map(|k| c.hidden[p * c.h + k] * c.weight[j * c.h + k]).sum::<f64>() + c.bias[j]) as f32
            })
        })
        .collect();
    let logits = Tensor::from_slice(&logits, &[c.n, c.t, c.v], Device::Cpu).unwrap();
    let plain = sequence_logprobs(&logits, &inputs.labels, Some(&inputs.mask), &LogProbsConfig::default()).unwrap();
    for (what, a, b) in [
        ("logps", &fused.logps, &plain.logps),
        ("entropy", &fused.entropy, &plain.entropy),
        ("mean_logits", &fused.mean_logits, &plain.mean_logits),
        ("lse", &fused.lse, &plain.lse),
    ] {
        assert_close(what, &values(a), &values(b), 1e-5);
    }
    assert_close("logps", &values(&fused.logps), &e.logps, 1e-5);
}

#[test]
fn fully_masked_sequences_give_zeros() {
    let mut rng = StdRng::seed_from_u64(3);
    let mut c = random_case(&mut rng, (3, 4, 4, 17), true, true);
    c.mask[4..8].iter_mut().for_each(|m| *m = 0);
    let (out, grads) = Inputs::new(&c, DType::F32, Device::Cpu).run(&config(&c, None)).unwrap();
    assert_eq!(values(&out.token_counts)[1], 0.0);
    assert_eq!(values(&out.logps)[1], 0.0);
    assert_eq!(values(&out.entropy)[1], 0.0);
    assert!(values(&grads.grad_hidden)[4 * 4..8 * 4].iter().all(|&g| g == 0.0));
}

fn expect_err(result: unireward::Result<(SequenceLogProbs, FusedLinearGrads)>, fragment: &str) -> Error {
    let err = result.err().unwrap_or_else(|| panic!("expected an error mentioning `{fragment}`"));
    assert!(err.to_string().contains(fragment), "error `{err}` does not mention `{fragment}`");
    err
}

#[test]
fn bad_input_is_a_clear_error() {
    let mut rng = StdRng::seed_from_u64(11);
    let c = random_case(&mut rng, (2, 3, 4, 10), true, false);
    let good = Inputs::new(&c, DType::F32, Device::Cpu);
    let cfg = config(&c, None);

    let mut bad = Inputs::new(&c, DType::F32, Device::Cpu);
    bad.weight = Tensor::zeros(&[10, 5], DType::F32, Device::Cpu).unwrap();
    assert!(matches!(expect_err(bad.run(&cfg), "hidden size"), Error::Shape(_)));

    let mut bad = Inputs::new(&c, DType::F32, Device::Cpu);
    bad.bias = Some(Tensor::zeros(&[9], DType::F32, Device::Cpu).unwrap());
    expect_err(bad.run(&cfg), "`bias`");

    let mut bad = Inputs::new(&c, DType::F32, Device::Cpu);
    let mut labels = c.labels.clone();
    labels[4] = 10;
    bad.labels = Tensor::from_slice(&labels, &[2, 3], Device::Cpu).unwrap();
    bad.mask = Tensor::from_slice(&[1i64; 6], &[2, 3], Device::Cpu).unwrap();
    assert!(matches!(expect_err(bad.run(&cfg), "sequence 1, token 1"), Error::InvalidArgument(_)));

    let mut bad = Inputs::new(&c, DType::F32, Device::Cpu);
    bad.hidden = Tensor::zeros(&[2, 3, 4], DType::I32, Device::Cpu).unwrap();
    assert!(matches!(expect_err(bad.run(&cfg), "hidden"), Error::DType { .. }));

    let mut bad = Inputs::new(&c, DType::F32, Device::Cpu);
    bad.labels = Tensor::zeros(&[2, 3], DType::F32, Device::Cpu).unwrap();
    expect_err(bad.run(&cfg), "labels");

    let mut bad = Inputs::new(&c, DType::F32, Device::Cpu);
    bad.hidden = Tensor::zeros(&[0, 3, 4], DType::F32, Device::Cpu).unwrap();
    bad.labels = Tensor::zeros(&[0, 3], DType::I64, Device::Cpu).unwrap();
    bad.mask = Tensor::zeros(&[0, 3], DType::I64, Device::Cpu).unwrap();
    expect_err(bad.run(&cfg), "empty");

    expect_err(good.run(&FusedLinearConfig { chunk_tokens: Some(0), ..cfg.clone() }), "chunk_tokens");

    let (out, _) = good.run(&cfg).unwrap();
    let wrong = Tensor::zeros(&[3], DType::F32, Device::Cpu).unwrap();
    let err =
        fused_linear_logprobs_backward(good.head(), &good.labels, Some(&good.mask), &out, &wrong, &cfg).unwrap_err();
    assert!(err.to_string().contains("grad_logps"), "{err}");

    if unireward::runtime::cuda::device_count() == 0 {
        let err = Tensor::zeros(&[2], DType::F32, Device::Cuda(0)).unwrap_err();
        assert!(matches!(err, Error::CudaUnavailable(_)), "{err}");
    }
}

/// Buffers filled with `values` (random, or NaN) in the inputs' dtypes and shapes.
fn buffers(inputs: &Inputs, rng: &mut StdRng, nan: bool) -> FusedLinearGrads {
    let mut fill = |like: &Tensor| {
        let v: Vec<f32> = (0..like.numel()).map(|_| if nan { f32::NAN } else { rng.gen_range(-1.0..1.0) }).collect();
        Tensor::from_f32(&v, like.shape(), like.dtype(), like.device()).unwrap()
    };
    FusedLinearGrads {
        grad_hidden: fill(&inputs.hidden),
        grad_weight: fill(&inputs.weight),
        grad_bias: inputs.bias.as_ref().map(fill),
    }
}

/// The `_into` backward overwrites NaN-filled buffers with the allocating backward's bits, and accumulating adds the
/// same gradients to what the weight's and bias's buffers held (the hidden states' gradient is always overwritten).
fn backward_into_overwrites_or_accumulates(device: Device) {
    let mut rng = StdRng::seed_from_u64(11);
    let c = random_case(&mut rng, (3, 9, 24, 301), true, false);
    for (dtype, rel) in [(DType::F32, 1e-6), (DType::BF16, 1e-2)] {
        let inputs = Inputs::new(&c, dtype, device);
        for chunk in [None, Some(4)] {
            let cfg = config(&c, chunk);
            let (saved, fresh) = inputs.run(&cfg).unwrap();
            let backward = |out: &mut FusedLinearGrads, accumulate: bool| {
                let out = FusedLinearGradsMut {
                    grad_hidden: &mut out.grad_hidden,
                    grad_weight: &mut out.grad_weight,
                    grad_bias: out.grad_bias.as_mut(),
                    accumulate,
                };
                let (labels, mask) = (&inputs.labels, Some(&inputs.mask));
                fused_linear_logprobs_backward_into(inputs.head(), labels, mask, &saved, &inputs.grad_logps, &cfg, out)
                    .unwrap();
            };
            let mut overwritten = buffers(&inputs, &mut rng, true);
            backward(&mut overwritten, false);
            let pairs = [
                (&overwritten.grad_hidden, &fresh.grad_hidden),
                (&overwritten.grad_weight, &fresh.grad_weight),
                (overwritten.grad_bias.as_ref().unwrap(), fresh.grad_bias.as_ref().unwrap()),
            ];
            for (got, want) in pairs {
                assert_eq!(values(got), values(want), "{dtype} chunk {chunk:?}: overwritten buffers");
            }
            let mut summed = buffers(&inputs, &mut rng, false);
            let prior = (values(&summed.grad_weight), values(summed.grad_bias.as_ref().unwrap()));
            backward(&mut summed, true);
            let plus = |a: &[f64], b: &Tensor| a.iter().zip(values(b)).map(|(x, y)| x + y).collect::<Vec<_>>();
            assert_close("hidden", &values(&summed.grad_hidden), &values(&fresh.grad_hidden), 0.0);
            assert_close("weight", &values(&summed.grad_weight), &plus(&prior.0, &fresh.grad_weight), rel);
            let bias = summed.grad_bias.as_ref().unwrap();
            assert_close("bias", &values(bias), &plus(&prior.1, fresh.grad_bias.as_ref().unwrap()), rel);
        }
    }
}

#[test]
fn backward_into_overwrites_or_accumulates_on_cpu() {
    backward_into_overwrites_or_accumulates(Device::Cpu);
}

#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
#[test]
fn backward_into_overwrites_or_accumulates_on_cuda() {
    backward_into_overwrites_or_accumulates(Device::Cuda(0));
}

#[test]
fn backward_into_refuses_mismatched_buffers() {
    let mut rng = StdRng::seed_from_u64(12);
    let c = random_case(&mut rng, (2, 3, 8, 17), true, false);
    let inputs = Inputs::new(&c, DType::F32, Device::Cpu);
    let cfg = config(&c, None);
    let (saved, _) = inputs.run(&cfg).unwrap();
    let mut out = buffers(&inputs, &mut rng, false);
    let before = values(&out.grad_weight);
    let mut short = Tensor::zeros(&[16, 8], DType::F32, Device::Cpu).unwrap();
    let bad = FusedLinearGradsMut {
        grad_hidden: &mut out.grad_hidden,
        grad_weight: &mut short,
        grad_bias: out.grad_bias.as_mut(),
        accumulate: false,
    };
    let (labels, mask) = (&inputs.labels, Some(&inputs.mask));
    let e = fused_linear_logprobs_backward_into(inputs.head(), labels, mask, &saved, &inputs.grad_logps, &cfg, bad)
        .unwrap_err();
    assert!(e.to_string().contains("grad_weight"), "{e}");
    let no_bias = FusedLinearGradsMut {
        grad_hidden: &mut out.grad_hidden,
        grad_weight: &mut out.grad_weight,
        grad_bias: None,
        accumulate: false,
    };
    let e = fused_linear_logprobs_backward_into(inputs.head(), labels, mask, &saved, &inputs.grad_logps, &cfg, no_bias)
        .unwrap_err();
    assert!(e.to_string().contains("grad_bias"), "{e}");
    assert_eq!(values(&out.grad_weight), before, "a refused call writes nothing");
}

#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
#[test]
fn cuda_matches_cpu() {
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    for (dims, bias, mean) in
        [((2, 7, 5, 37), true, false), ((3, 33, 64, 1000), false, true), ((1, 1, 8, 129), true, true)]
    {
        let c = random_case(&mut rng, dims, bias, mean);
        let e = reference(&c);
        for chunk in [None, Some(1), Some(8)] {
            check(&c, &e, DType::F32, Device::Cuda(0), chunk, 1e-4);
            check(&c, &e, DType::BF16, Device::Cuda(0), chunk, 5e-2);
            check(&c, &e, DType::F16, Device::Cuda(0), chunk, 3e-2);
        }
        let c = with_weights(&mut rng, c);
        let e = reference(&c);
        for chunk in [None, Some(1), Some(8)] {
            check(&c, &e, DType::F32, Device::Cuda(0), chunk, 1e-4);
            check(&c, &e, DType::BF16, Device::Cuda(0), chunk, 5e-2);
        }
    }
}

/// A NaN (or +∞) in one LM-head row puts a NaN logit in every token's row: every counted token's log-prob, every
/// sequence's, and the gradients become NaN, as PyTorch's log_softmax of the materialised logits gives.
#[test]
fn a_non_finite_head_row_makes_every_log_prob_nan() {
    let mut rng = StdRng::seed_from_u64(rand::random());
    for bad in [f64::NAN, f64::INFINITY] {
        let mut c = random_case(&mut rng, (2, 5, 4, 23), false, false);
        c.mask = vec![1; c.n * c.t];
        c.weight[7 * c.h + 1] = bad;
        if bad.is_infinite() {
            // +∞·h is ±∞ (or NaN at h = 0): make the row's logit +∞ for every token.
            c.hidden.iter_mut().for_each(|h| *h = h.abs() + 0.1);
        }
        for chunk in [None, Some(3)] {
            let (out, grads) = Inputs::new(&c, DType::F32, Device::Cpu).run(&config(&c, chunk)).unwrap();
            assert!(values(&out.logps).iter().all(|x| x.is_nan()), "{bad}: {:?}", values(&out.logps));
            assert!(values(&grads.grad_hidden).iter().any(|x| x.is_nan()), "{bad}: the hidden gradient");
        }
    }
}
