//! The DPO family: fixtures, finite differences, a plain f64 loop, bf16/f16, bad input, CUDA against CPU.

use rand::Rng;
use serde_json::Value;
use unireward::ops::preference::{dpo_loss, DpoConfig, DpoLossType, DpoOutput, PreferenceLogps};
use unireward::{DType, Device, Error, Tensor};

use crate::util::*;

/// The inputs of one case, as plain vectors.
#[derive(Clone, Debug)]
struct Case {
    policy_chosen: Vec<f32>,
    policy_rejected: Vec<f32>,
    reference: Option<(Vec<f32>, Vec<f32>)>,
    lengths: Option<(Vec<i64>, Vec<i64>)>,
}

/// The case as tensors of `dtype` on `device`.
struct Tensors {
    pc: Tensor,
    pr: Tensor,
    reference: Option<(Tensor, Tensor)>,
    lengths: Option<(Tensor, Tensor)>,
}

impl Tensors {
    fn new(case: &Case, dtype: DType, device: Device) -> Tensors {
        let n = case.policy_chosen.len();
        let t = |v: &[f32]| tensor(v, &[n], dtype, device);
        let ints = |v: &[i64]| Tensor::from_slice(v, &[n], device).expect("lengths");
        Tensors {
            pc: t(&case.policy_chosen),
            pr: t(&case.policy_rejected),
            reference: case.reference.as_ref().map(|(c, r)| (t(c), t(r))),
            lengths: case.lengths.as_ref().map(|(c, r)| (ints(c), ints(r))),
        }
    }

    fn logps(&self) -> PreferenceLogps<'_> {
        let mut l = PreferenceLogps::new(&self.pc, &self.pr);
        if let Some((c, r)) = &self.reference {
            l = l.with_reference(c, r);
        }
        if let Some((c, r)) = &self.lengths {
            l = l.with_lengths(c, r);
        }
        l
    }
}

fn run(case: &Case, cfg: &DpoConfig, dtype: DType, device: Device) -> DpoOutput {
    let t = Tensors::new(case, dtype, device);
    dpo_loss(&t.logps(), cfg).unwrap_or_else(|e| panic!("{}: {e}", cfg.loss_type.trl_name()))
}

fn parse(case: &Value) -> (Case, DpoConfig) {
    let c = &case["config"];
    let cfg = DpoConfig {
        loss_type: DpoLossType::from_trl_name(c["loss_type"].as_str().expect("loss type")).expect("known"),
        beta: c["beta"].as_f64().expect("beta") as f32,
        label_smoothing: c["label_smoothing"].as_f64().expect("ls") as f32,
        reference_free: c["reference_free"].as_bool().expect("bool"),
        rpo_alpha: c["rpo_alpha"].as_f64().map(|v| v as f32),
        simpo_gamma: c["simpo_gamma"].as_f64().expect("gamma") as f32,
        bco_delta: c["bco_delta"].as_f64().expect("delta") as f32,
        grad_output: c["grad_output"].as_f64().expect("go") as f32,
    };
    let i = &case["inputs"];
    let reference =
        (!i["reference_chosen"].is_null()).then(|| (f32s(&i["reference_chosen"]), f32s(&i["reference_rejected"])));
    let lengths = (!i["chosen_lengths"].is_null()).then(|| (i64s(&i["chosen_lengths"]), i64s(&i["rejected_lengths"])));
    let case = Case {
        policy_chosen: f32s(&i["policy_chosen"]),
        policy_rejected: f32s(&i["policy_rejected"]),
        reference,
        lengths,
    };
    (case, cfg)
}

fn check_against_fixture(name: &str, out: &DpoOutput, expected: &Value, rtol: f64) {
    assert_close(&format!("{name} loss"), out.loss as f64, expected["loss"].as_f64().expect("loss"), rtol, 1e-7);
    assert_all_close(
        &format!("{name} grad chosen"),
        &values(&out.grad_policy_chosen),
        &f64s(&expected["grad_policy_chosen"]),
        rtol,
    );
    assert_all_close(
        &format!("{name} grad rejected"),
        &values(&out.grad_policy_rejected),
        &f64s(&expected["grad_policy_rejected"]),
        rtol,
    );
    let m = &expected["metrics"];
    let metrics = [
        ("rewards_chosen", Some(out.metrics.rewards_chosen)),
        ("rewards_rejected", Some(out.metrics.rewards_rejected)),
        ("rewards_accuracies", Some(out.metrics.rewards_accuracies)),
        ("rewards_margins", Some(out.metrics.rewards_margins)),
        ("logps_chosen", Some(out.metrics.logps_chosen)),
        ("logps_rejected", Some(out.metrics.logps_rejected)),
        ("nll_loss", out.metrics.nll_loss),
        ("log_odds_ratio", out.metrics.log_odds_ratio),
        ("log_odds_chosen", out.metrics.log_odds_chosen),
    ];
    for (key, got) in metrics {
        match (got, m[key].as_f64()) {
            (Some(g), Some(w)) => assert_close(&format!("{name} {key}"), g as f64, w, rtol, 1e-6),
            (None, None) => {}
            (g, w) => panic!("{name} {key}: got {g:?}, want {w:?}"),
        }
    }
}

#[test]
fn matches_trl_reference_in_f32() {
    let fixture = fixture("dpo.json");
    let cases = fixture["cases"].as_array().expect("cases");
    let mut covered = std::collections::HashSet::new();
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let (inputs, cfg) = parse(case);
        covered.insert(cfg.loss_type);
        let out = run(&inputs, &cfg, DType::F32, Device::Cpu);
        check_against_fixture(name, &out, &case["expected"], 1e-5);
    }
    assert_eq!(covered.len(), DpoLossType::ALL.len(), "every loss type has a fixture");
}

/// bf16 and f16 inputs give, within 1e-2, what f32 inputs holding the same (rounded) values give.
#[test]
fn half_precision_inputs_match_f32_on_the_same_values() {
    let fixture = fixture("dpo.json");
    for case in fixture["cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        let (inputs, cfg) = parse(case);
        for dtype in [DType::BF16, DType::F16] {
            let r = |v: &[f32]| rounded(v, dtype);
            let rounded_case = Case {
                policy_chosen: r(&inputs.policy_chosen),
                policy_rejected: r(&inputs.policy_rejected),
                reference: inputs.reference.as_ref().map(|(c, rr)| (r(c), r(rr))),
                lengths: inputs.lengths.clone(),
            };
            let want = run(&rounded_case, &cfg, DType::F32, Device::Cpu);
            let got = run(&rounded_case, &cfg, dtype, Device::Cpu);
            assert_eq!(got.grad_policy_chosen.dtype(), dtype);
            let what = format!("{name} {dtype}");
            assert_close(&format!("{what} loss"), got.loss as f64, want.loss as f64, 1e-6, 1e-7);
            let w = |t: &Tensor| values(t).iter().map(|&v| v as f64).collect::<Vec<_>>();
            assert_all_close(
                &format!("{what} grad chosen"),
                &values(&got.grad_policy_chosen),
                &w(&want.grad_policy_chosen),
                1e-2,
            );
            assert_all_close(
                &format!("{what} grad rejected"),
                &values(&got.grad_policy_rejected),
                &w(&want.grad_policy_rejected),
                1e-2,
            );
            assert_eq!(got.metrics, want.metrics, "{what} metrics");
        }
    }
}

/// Random log-probs of P pairs: sums of `len` tokens at 0.3–3 nats each, references nearby.
fn random_case(rng: &mut impl Rng, pairs: usize, reference: bool, lengths: bool) -> Case {
    let lc: Vec<i64> = (0..pairs).map(|_| rng.gen_range(1..40)).collect();
    let lr: Vec<i64> = (0..pairs).map(|_| rng.gen_range(1..40)).collect();
    let sums = |l: &[i64], rng: &mut dyn rand::RngCore| -> Vec<f32> {
        l.iter().map(|&n| -(n as f32) * rng.gen_range(0.3f32..3.0)).collect()
    };
    let pc = sums(&lc, rng);
    let pr = sums(&lr, rng);
    let near = |v: &[f32], rng: &mut dyn rand::RngCore| -> Vec<f32> {
        v.iter().map(|&x| x + rng.gen_range(-2.0f32..2.0)).collect()
    };
    let refs = reference.then(|| (near(&pc, rng), near(&pr, rng)));
    Case { policy_chosen: pc, policy_rejected: pr, reference: refs, lengths: lengths.then_some((lc, lr)) }
}

fn configs() -> Vec<(DpoConfig, bool)> {
    let mut out = Vec::new();
    for loss_type in DpoLossType::ALL {
        let base = DpoConfig { loss_type, beta: 0.4, bco_delta: 0.2, simpo_gamma: 0.7, ..Default::default() };
        out.push((base, loss_type.uses_reference()));
        if loss_type.uses_reference() {
            out.push((DpoConfig { reference_free: true, ..base }, false));
        }
        out.push((
            DpoConfig { label_smoothing: 0.15, rpo_alpha: Some(0.3), grad_output: 1.7, ..base },
            loss_type.uses_reference(),
        ));
    }
    out
}

/// Central differences of the loss at steps 2^-5 and 2^-6 (exact in f32 at these magnitudes), combined by
/// Richardson extrapolation (error O(h⁴): ORPO near log-prob 0 is strongly curved); the tolerance allows for the
/// f32 rounding of the loss itself.
#[test]
fn gradients_match_finite_differences() {
    let mut rng = rng("dpo gradients_match_finite_differences");
    for (cfg, reference) in configs() {
        let case = random_case(&mut rng, 5, reference, true);
        let out = run(&case, &cfg, DType::F32, Device::Cpu);
        let h = 1.0f32 / 32.0;
        let noise = 3.0 * 4.0 * f32::EPSILON as f64 * out.loss.abs() as f64 / h as f64;
        for (side, grad) in [(0, &out.grad_policy_chosen), (1, &out.grad_policy_rejected)] {
            let grad = values(grad);
            let scale = grad.iter().fold(0.0f32, |m, g| m.max(g.abs())) as f64;
            for i in 0..case.policy_chosen.len() {
                let loss_at = |d: f32| {
                    let mut c = case.clone();
                    let v = if side == 0 { &mut c.policy_chosen } else { &mut c.policy_rejected };
                    v[i] += d;
                    run(&c, &cfg, DType::F32, Device::Cpu).loss as f64
                };
                if cfg.loss_type == DpoLossType::Hinge && near_hinge_kink(&case, &cfg, i, h) {
                    continue;
                }
                let central = |h: f32| (loss_at(h) - loss_at(-h)) / (2.0 * h as f64);
                let fd = cfg.grad_output as f64 * (4.0 * central(h / 2.0) - central(h)) / 3.0;
                let what = format!("{} side {side} pair {i} ({cfg:?})", cfg.loss_type.trl_name());
                assert_close(&what, grad[i] as f64, fd, 2e-3, 2e-3 * scale + noise + 1e-6);
            }
        }
    }
}

/// Whether moving pair `i`'s log-probs by `h` can cross the hinge's kink at βz = 1 (no derivative there).
fn near_hinge_kink(case: &Case, cfg: &DpoConfig, i: usize, h: f32) -> bool {
    let (c, r) = (case.policy_chosen[i] as f64, case.policy_rejected[i] as f64);
    let (rc, rr) = case.reference.as_ref().map_or((0.0, 0.0), |(a, b)| (a[i] as f64, b[i] as f64));
    let beta = cfg.beta as f64;
    (1.0 - beta * ((c - rc) - (r - rr))).abs() <= 2.0 * beta * h as f64
}

/// A plain f64 loop of TRL's sigmoid loss with label smoothing and RPO, on fresh random inputs.
#[test]
fn sigmoid_with_rpo_matches_a_plain_f64_loop() {
    let mut rng = rng("dpo sigmoid_with_rpo_matches_a_plain_f64_loop");
    let pairs = 777;
    let case = random_case(&mut rng, pairs, true, true);
    let cfg = DpoConfig { beta: 0.3, label_smoothing: 0.1, rpo_alpha: Some(0.25), ..Default::default() };
    let out = run(&case, &cfg, DType::F32, Device::Cpu);
    let log_sigmoid = |x: f64| x.min(0.0) - (-x.abs()).exp().ln_1p();
    let (rc, rr) = case.reference.as_ref().expect("reference");
    let (lc, _) = case.lengths.as_ref().expect("lengths");
    let (beta, eps) = (0.3f64, 0.1f32 as f64);
    let mut loss = 0.0;
    let mut grad_c = Vec::new();
    for i in 0..pairs {
        let z = (case.policy_chosen[i] as f64 - rc[i] as f64) - (case.policy_rejected[i] as f64 - rr[i] as f64);
        loss += -(1.0 - eps) * log_sigmoid(beta * z) - eps * log_sigmoid(-beta * z);
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        grad_c.push(beta * (-(1.0 - eps) * sig(-beta * z) + eps * sig(beta * z)) / pairs as f64);
    }
    let chosen_sum: f64 = case.policy_chosen.iter().map(|&v| v as f64).sum();
    let tokens: f64 = lc.iter().map(|&v| v as f64).sum();
    loss = loss / pairs as f64 + 0.25 * (-chosen_sum / tokens);
    for g in &mut grad_c {
        *g -= 0.25 / tokens;
    }
    assert_close("loss", out.loss as f64, loss, 1e-5, 0.0);
    assert_all_close("grad chosen", &values(&out.grad_policy_chosen), &grad_c, 1e-5);
    assert_close("nll", out.metrics.nll_loss.expect("nll") as f64, -chosen_sum / tokens, 1e-5, 0.0);

    // Token counts may be i32 as well as i64.
    let t = Tensors::new(&case, DType::F32, Device::Cpu);
    let (lc32, lr32): (Vec<i32>, Vec<i32>) = lc.iter().map(|&v| (v as i32, 1)).unzip();
    let lc32 = Tensor::from_slice(&lc32, &[pairs], Device::Cpu).expect("i32");
    let lr32 = Tensor::from_slice(&lr32, &[pairs], Device::Cpu).expect("i32");
    let (rc, rr) = t.reference.as_ref().expect("reference");
    let inputs = PreferenceLogps::new(&t.pc, &t.pr).with_reference(rc, rr).with_lengths(&lc32, &lr32);
    let out32 = dpo_loss(&inputs, &cfg).expect("i32 lengths");
    assert_eq!(out32.loss, out.loss);
    assert_eq!(values(&out32.grad_policy_chosen), values(&out.grad_policy_chosen));
}

/// Large batches are summed in fixed chunks: the result does not depend on the thread pool.
#[test]
fn large_batch_is_deterministic() {
    let mut rng = rng("dpo large_batch_is_deterministic");
    let case = random_case(&mut rng, 100_003, true, true);
    let cfg = DpoConfig { loss_type: DpoLossType::Ipo, ..Default::default() };
    let a = run(&case, &cfg, DType::F32, Device::Cpu);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("pool");
    let b = pool.install(|| run(&case, &cfg, DType::F32, Device::Cpu));
    assert_eq!(a.loss.to_bits(), b.loss.to_bits());
    assert_eq!(a.metrics, b.metrics);
    assert_eq!(values(&a.grad_policy_chosen), values(&b.grad_policy_chosen));
}

/// Reference log-probs given to a loss that does not use them (SimPO, ORPO, reference-free mode) are ignored.
#[test]
fn unused_references_are_ignored() {
    let mut rng = rng("dpo unused_references_are_ignored");
    let with = random_case(&mut rng, 9, true, true);
    let without = Case { reference: None, ..with.clone() };
    for cfg in [
        DpoConfig { loss_type: DpoLossType::Simpo, ..Default::default() },
        DpoConfig { loss_type: DpoLossType::Orpo, ..Default::default() },
        DpoConfig { reference_free: true, ..Default::default() },
    ] {
        let (a, b) = (run(&with, &cfg, DType::F32, Device::Cpu), run(&without, &cfg, DType::F32, Device::Cpu));
        assert_eq!(a.loss, b.loss);
        assert_eq!(a.metrics, b.metrics);
        assert_eq!(values(&a.grad_policy_chosen), values(&b.grad_policy_chosen));
    }
}

#[test]
fn trl_names_round_trip() {
    for t in DpoLossType::ALL {
        assert_eq!(DpoLossType::from_trl_name(t.trl_name()).expect("known"), t);
    }
    let err = DpoLossType::from_trl_name("aot").expect_err("unknown");
    assert!(err.to_string().contains("unknown DPO loss type `aot`"), "{err}");
}

fn expect_err(inputs: &PreferenceLogps, cfg: &DpoConfig, needle: &str) -> Error {
    let err = dpo_loss(inputs, cfg).expect_err(needle);
    assert!(err.to_string().contains(needle), "`{err}` should mention `{needle}`");
    err
}

#[test]
fn bad_input_is_a_clear_error() {
    let cpu = Device::Cpu;
    let v3 = tensor(&[-1.0, -2.0, -3.0], &[3], DType::F32, cpu);
    let v2 = tensor(&[-1.0, -2.0], &[2], DType::F32, cpu);
    let b3 = tensor(&[-1.0, -2.0, -3.0], &[3], DType::BF16, cpu);
    let lens = Tensor::from_slice(&[3i64, 4, 5], &[3], cpu).expect("lens");
    let zero_len = Tensor::from_slice(&[3i32, 0, 5], &[3], cpu).expect("lens");
    let float_len = tensor(&[3.0, 4.0, 5.0], &[3], DType::F32, cpu);
    let ints = Tensor::from_slice(&[1i32, 2, 3], &[3], cpu).expect("ints");
    let empty = tensor(&[], &[0], DType::F32, cpu);
    let matrix = tensor(&[-1.0; 6], &[3, 2], DType::F32, cpu);
    let cfg = DpoConfig::default();
    let free = DpoConfig { reference_free: true, ..cfg };

    let e = expect_err(
        &PreferenceLogps::new(&v3, &v2).with_reference(&v3, &v3),
        &cfg,
        "`policy_rejected` has shape [2], expected [3]",
    );
    assert!(matches!(e, Error::Shape(_)));
    let e = expect_err(&PreferenceLogps::new(&v3, &v3), &cfg, "needs `reference_chosen` and `reference_rejected`");
    assert!(matches!(e, Error::InvalidArgument(_)));
    let only_one = PreferenceLogps { reference_chosen: Some(&v3), ..PreferenceLogps::new(&v3, &v3) };
    expect_err(&only_one, &cfg, "needs `reference_chosen` and `reference_rejected`");
    expect_err(&PreferenceLogps::new(&v3, &v3).with_reference(&v3, &v2), &free, "`reference_rejected` has shape [2]");
    let simpo = DpoConfig { loss_type: DpoLossType::Simpo, ..cfg };
    expect_err(&PreferenceLogps::new(&v3, &v3), &simpo, "`chosen_lengths` is required: the simpo loss averages");
    let ipo = DpoConfig { loss_type: DpoLossType::Ipo, ..cfg };
    let mut only_chosen = PreferenceLogps::new(&v3, &v3).with_reference(&v3, &v3);
    only_chosen.chosen_lengths = Some(&lens);
    expect_err(&only_chosen, &ipo, "`rejected_lengths` is required: the ipo loss averages");
    let orpo = DpoConfig { loss_type: DpoLossType::Orpo, ..cfg };
    expect_err(&PreferenceLogps::new(&v3, &v3), &orpo, "`chosen_lengths` is required");
    let rpo = DpoConfig { rpo_alpha: Some(1.0), ..free };
    expect_err(&PreferenceLogps::new(&v3, &v3), &rpo, "the RPO NLL term averages over the chosen tokens");
    expect_err(&PreferenceLogps::new(&v3, &v3).with_lengths(&zero_len, &lens), &rpo, "`chosen_lengths`[1] is 0");
    let e = expect_err(
        &PreferenceLogps::new(&v3, &v3).with_lengths(&float_len, &lens),
        &rpo,
        "`chosen_lengths` has dtype f32",
    );
    assert!(matches!(e, Error::DType { .. }));

    for beta in [f32::NAN, f32::INFINITY, -0.1, 0.0] {
        let bad = DpoConfig { beta, ..free };
        expect_err(&PreferenceLogps::new(&v3, &v3), &bad, "`beta` must be");
    }
    for ls in [0.5, -0.01, 0.7, f32::NAN] {
        let bad = DpoConfig { label_smoothing: ls, ..free };
        expect_err(&PreferenceLogps::new(&v3, &v3), &bad, "`label_smoothing` must be");
    }
    expect_err(&PreferenceLogps::new(&v3, &v3), &DpoConfig { simpo_gamma: f32::NAN, ..free }, "`simpo_gamma`");
    expect_err(&PreferenceLogps::new(&v3, &v3), &DpoConfig { rpo_alpha: Some(-1.0), ..free }, "`rpo_alpha`");
    let e = expect_err(&PreferenceLogps::new(&empty, &empty), &free, "`policy_chosen` is empty");
    assert!(matches!(e, Error::Shape(_)));
    let e = expect_err(&PreferenceLogps::new(&ints, &ints), &free, "`policy_chosen` has dtype i32");
    assert!(matches!(e, Error::DType { .. }));
    expect_err(&PreferenceLogps::new(&v3, &b3), &free, "`policy_rejected` has dtype bf16, expected f32");
    expect_err(&PreferenceLogps::new(&matrix, &matrix), &free, "`policy_chosen` must have rank 1");
    let nan = tensor(&[-1.0, f32::NAN, -3.0], &[3], DType::F32, cpu);
    expect_err(&PreferenceLogps::new(&nan, &v3), &free, "contain NaN or infinity");
    let certain = tensor(&[0.0, -2.0, -3.0], &[3], DType::F32, cpu);
    expect_err(
        &PreferenceLogps::new(&certain, &v3).with_lengths(&lens, &lens),
        &orpo,
        "ORPO needs probabilities below 1",
    );
}

#[test]
fn bad_device_is_a_clear_error_without_cuda() {
    if unireward::runtime::cuda::is_available() {
        return;
    }
    let err = Tensor::zeros(&[3], DType::F32, Device::Cuda(0)).expect_err("no CUDA here");
    assert!(matches!(err, Error::CudaUnavailable(_)), "{err}");
}

#[test]
#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
fn cuda_matches_cpu() {
    let gpu = cuda();
    let mut rng = rng("dpo cuda_matches_cpu");
    for (cfg, reference) in configs() {
        for pairs in [1, 37, 5000] {
            let case = random_case(&mut rng, pairs, reference, true);
            for dtype in FLOAT_DTYPES {
                let want = run(&case, &cfg, dtype, Device::Cpu);
                let got = run(&case, &cfg, dtype, gpu);
                let what = format!("{} {dtype} P={pairs}", cfg.loss_type.trl_name());
                assert_close(&format!("{what} loss"), got.loss as f64, want.loss as f64, 1e-5, 1e-7);
                let w = |t: &Tensor| values(t).iter().map(|&v| v as f64).collect::<Vec<_>>();
                let rtol = if dtype == DType::F32 { 1e-5 } else { 1e-2 };
                assert_all_close(
                    &format!("{what} grad chosen"),
                    &values(&got.grad_policy_chosen),
                    &w(&want.grad_policy_chosen),
                    rtol,
                );
                assert_all_close(
                    &format!("{what} grad rejected"),
                    &values(&got.grad_policy_rejected),
                    &w(&want.grad_policy_rejected),
                    rtol,
                );
                let (g, m) = (got.metrics, want.metrics);
                for (k, a, b) in [
                    ("rewards_chosen", g.rewards_chosen, m.rewards_chosen),
                    ("rewards_accuracies", g.rewards_accuracies, m.rewards_accuracies),
                    ("logps_rejected", g.logps_rejected, m.logps_rejected),
                    ("nll", g.nll_loss.unwrap_or(0.0), m.nll_loss.unwrap_or(0.0)),
                    ("log_odds_chosen", g.log_odds_chosen.unwrap_or(0.0), m.log_odds_chosen.unwrap_or(0.0)),
                ] {
                    assert_close(&format!("{what} {k}"), a as f64, b as f64, 1e-5, 1e-6);
                }
            }
        }
    }
}

#[test]
#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
fn device_mismatch_is_an_error() {
    let gpu = cuda();
    let on_cpu = tensor(&[-1.0, -2.0], &[2], DType::F32, Device::Cpu);
    let on_gpu = tensor(&[-1.0, -2.0], &[2], DType::F32, gpu);
    let inputs = PreferenceLogps::new(&on_cpu, &on_cpu).with_reference(&on_gpu, &on_gpu);
    let err = dpo_loss(&inputs, &DpoConfig::default()).expect_err("mixed devices");
    assert!(matches!(err, Error::Device(_)), "{err}");
    assert!(err.to_string().contains("`reference_chosen` is on cuda:0, but `policy_chosen` is on cpu"), "{err}");
}
