//! The DPO family: fixtures, finite differences, a plain f64 loop, bf16/f16, bad input, CUDA against CPU.

use rand::Rng;
use serde_json::Value;
use unireward::ops::preference::{
    dpo_loss, BcoDelta, DpoConfig, DpoLossType, DpoOutput, FDivergence, LossMixture, PreferenceLogps,
};
use unireward::{DType, Device, Error, Tensor};

use crate::util::*;

/// The inputs of one case, as plain vectors.
#[derive(Clone, Debug)]
struct Case {
    policy_chosen: Vec<f32>,
    policy_rejected: Vec<f32>,
    reference: Option<(Vec<f32>, Vec<f32>)>,
    lengths: Option<(Vec<i64>, Vec<i64>)>,
    /// LD-DPO's verbose parts.
    verbose: Option<(Vec<f32>, Vec<f32>)>,
    pair_weights: Option<Vec<f32>>,
}

/// The case as tensors of `dtype` on `device`.
struct Tensors {
    pc: Tensor,
    pr: Tensor,
    reference: Option<(Tensor, Tensor)>,
    lengths: Option<(Tensor, Tensor)>,
    verbose: Option<(Tensor, Tensor)>,
    pair_weights: Option<Tensor>,
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
            verbose: case.verbose.as_ref().map(|(c, r)| (t(c), t(r))),
            pair_weights: case.pair_weights.as_deref().map(t),
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
        if let Some((c, r)) = &self.verbose {
            l = l.with_verbose(c, r);
        }
        if let Some(w) = &self.pair_weights {
            l = l.with_pair_weights(w);
        }
        l
    }
}

fn run(case: &Case, cfg: &DpoConfig, dtype: DType, device: Device) -> DpoOutput {
    let t = Tensors::new(case, dtype, device);
    dpo_loss(&t.logps(), cfg).unwrap_or_else(|e| panic!("{}: {e}", name_of(cfg)))
}

/// The loss types of a config, TRL's names joined by `+`.
fn name_of(cfg: &DpoConfig) -> String {
    cfg.losses().terms().iter().map(|(t, _)| t.trl_name()).collect::<Vec<_>>().join("+")
}

fn parse(case: &Value) -> (Case, DpoConfig) {
    let c = &case["config"];
    let f = |key: &str| c[key].as_f64().unwrap_or_else(|| panic!("{key}")) as f32;
    let types: Vec<DpoLossType> = c["loss_type"]
        .as_array()
        .expect("loss types")
        .iter()
        .map(|t| DpoLossType::from_trl_name(t.as_str().expect("name")).expect("known"))
        .collect();
    let weights = f32s(&c["loss_weights"]);
    let terms: Vec<_> = types.iter().copied().zip(weights).collect();
    let loss_mixture = (terms.len() > 1 || terms[0].1 != 1.0).then(|| LossMixture::new(&terms).expect("mixture"));
    let f_divergence = match c["f_divergence_type"].as_str().expect("f-divergence") {
        "js_divergence" => FDivergence::JsDivergence,
        "alpha_divergence" => FDivergence::AlphaDivergence(f("f_alpha_divergence_coef")),
        _ => FDivergence::ReverseKl,
    };
    let bco_delta = match c["bco"].as_array() {
        Some(b) if b[0].as_str() == Some("fixed") => BcoDelta::Fixed(b[1].as_f64().expect("delta") as f32),
        Some(b) => {
            BcoDelta::Running { mean: b[0].as_f64().expect("mean") as f32, count: b[1].as_f64().expect("count") as f32 }
        }
        None => BcoDelta::default(),
    };
    let cfg = DpoConfig {
        loss_type: types[0],
        loss_mixture,
        beta: f("beta"),
        label_smoothing: f("label_smoothing"),
        reference_free: c["reference_free"].as_bool().expect("bool"),
        f_divergence,
        rpo_alpha: c["rpo_alpha"].as_f64().map(|v| v as f32),
        ld_alpha: c["ld_alpha"].as_f64().map(|v| v as f32),
        // The fixtures' pair weights are given as inputs, which the op uses with or without the trainer's flag.
        use_weighting: false,
        simpo_gamma: f("simpo_gamma"),
        discopop_tau: f("discopop_tau"),
        bco_delta,
        grad_output: f("grad_output"),
    };
    let i = &case["inputs"];
    let pair = |c: &str, r: &str| (!i[c].is_null()).then(|| (f32s(&i[c]), f32s(&i[r])));
    let lengths = (!i["chosen_lengths"].is_null()).then(|| (i64s(&i["chosen_lengths"]), i64s(&i["rejected_lengths"])));
    let case = Case {
        policy_chosen: f32s(&i["policy_chosen"]),
        policy_rejected: f32s(&i["policy_rejected"]),
        reference: pair("reference_chosen", "reference_rejected"),
        lengths,
        verbose: pair("policy_chosen_verbose", "policy_rejected_verbose"),
        pair_weights: (!i["pair_weights"].is_null()).then(|| f32s(&i["pair_weights"])),
    };
    (case, cfg)
}

fn check_against_fixture(name: &str, out: &DpoOutput, expected: &Value, rtol: f64) {
    assert_close(&format!("{name} loss"), out.loss as f64, expected["loss"].as_f64().expect("loss"), rtol, 1e-7);
    assert_all_close(&format!("{name} losses"), &values(&out.losses), &f64s(&expected["losses"]), rtol);
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
    for (key, got) in [
        ("grad_policy_chosen_verbose", &out.grad_policy_chosen_verbose),
        ("grad_policy_rejected_verbose", &out.grad_policy_rejected_verbose),
    ] {
        match (got, expected[key].is_null()) {
            (Some(g), false) => assert_all_close(&format!("{name} {key}"), &values(g), &f64s(&expected[key]), rtol),
            (None, true) => {}
            (g, _) => panic!("{name} {key}: got {g:?}, want {}", expected[key]),
        }
    }
    if let Some(b) = expected["bco"].as_array() {
        match out.bco_delta {
            BcoDelta::Running { mean, count } => {
                assert_close(&format!("{name} bco mean"), mean as f64, b[0].as_f64().expect("mean"), rtol, 1e-7);
                assert_eq!(count as f64, b[1].as_f64().expect("count"), "{name} bco count");
            }
            BcoDelta::Fixed(delta) => assert_eq!(delta, b[1].as_f64().expect("delta") as f32, "{name} fixed"),
        }
    }
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
        covered.extend(cfg.losses().terms().iter().map(|&(t, _)| t));
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
        if name == "sigmoid_alpha_capped" {
            continue; // TRL's cap_exp bound is the dtype's (bf16's and f16's are below f32's)
        }
        for dtype in [DType::BF16, DType::F16] {
            let r = |v: &[f32]| rounded(v, dtype);
            let rounded_case = Case {
                policy_chosen: r(&inputs.policy_chosen),
                policy_rejected: r(&inputs.policy_rejected),
                reference: inputs.reference.as_ref().map(|(c, rr)| (r(c), r(rr))),
                lengths: inputs.lengths.clone(),
                verbose: inputs.verbose.as_ref().map(|(c, rr)| (r(c), r(rr))),
                pair_weights: inputs.pair_weights.as_deref().map(r),
            };
            let want = run(&rounded_case, &cfg, DType::F32, Device::Cpu);
            let got = run(&rounded_case, &cfg, dtype, Device::Cpu);
            assert_eq!(got.grad_policy_chosen.dtype(), dtype);
            let what = format!("{name} {dtype}");
            assert_close(&format!("{what} loss"), got.loss as f64, want.loss as f64, 1e-6, 1e-7);
            // Gradients below the dtype's smallest subnormal (f16: 2^-24) round to 0 there.
            let floor = if dtype == DType::F16 { 2f64.powi(-24) } else { 0.0 };
            for (side, g, w) in [
                ("chosen", &got.grad_policy_chosen, &want.grad_policy_chosen),
                ("rejected", &got.grad_policy_rejected, &want.grad_policy_rejected),
            ] {
                let (g, w) = (values(g), values(w));
                let scale = w.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64));
                for (i, (&g, &w)) in g.iter().zip(&w).enumerate() {
                    let what = format!("{what} grad {side}[{i}]");
                    assert_close(&what, g as f64, w as f64, 1e-2, 1e-2 * scale + floor);
                }
            }
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
    Case {
        policy_chosen: pc,
        policy_rejected: pr,
        reference: refs,
        lengths: lengths.then_some((lc, lr)),
        verbose: None,
        pair_weights: None,
    }
}

/// What a config's random case carries besides the policy log-probs and lengths.
#[derive(Clone, Copy, Debug)]
struct Extras {
    reference: bool,
    weights: bool,
}

/// [`random_case`] with LD-DPO's verbose parts (a share of each sum) when `cfg` has `ld_alpha`, and WPO weights.
fn case_for(rng: &mut impl Rng, pairs: usize, cfg: &DpoConfig, extras: Extras) -> Case {
    let mut case = random_case(rng, pairs, extras.reference, true);
    if cfg.ld_alpha.is_some() {
        let part = |v: &[f32], rng: &mut dyn rand::RngCore| -> Vec<f32> {
            v.iter().map(|&x| x * rng.gen_range(0.0f32..0.8)).collect()
        };
        case.verbose = Some((part(&case.policy_chosen, rng), part(&case.policy_rejected, rng)));
    }
    if extras.weights {
        case.pair_weights = Some((0..pairs).map(|_| rng.gen_range(0.1f32..1.0)).collect());
    }
    case
}

/// Every loss type plain, TRL-reference-free (with and without reference log-probs) and with smoothing, RPO and an
/// upstream gradient; then f-divergences, mixtures, WPO weights and LD-DPO. BCO's δ is fixed: TRL's running mean
/// is a constant of the gradient (detached), so finite differences must not move it.
fn configs() -> Vec<(DpoConfig, Extras)> {
    let (plain, free, weighted) = (
        Extras { reference: true, weights: false },
        Extras { reference: false, weights: false },
        Extras { reference: true, weights: true },
    );
    let mut out = Vec::new();
    for loss_type in DpoLossType::ALL {
        let base = DpoConfig {
            loss_type,
            beta: 0.4,
            bco_delta: BcoDelta::Fixed(0.2),
            simpo_gamma: 0.7,
            discopop_tau: 0.3,
            ..Default::default()
        };
        let uses_reference = Extras { reference: loss_type.uses_reference(), weights: false };
        out.push((base, uses_reference));
        if loss_type.uses_reference() {
            out.push((DpoConfig { reference_free: true, ..base }, plain));
            out.push((DpoConfig { reference_free: true, ..base }, free));
        }
        out.push((DpoConfig { label_smoothing: 0.15, rpo_alpha: Some(0.3), grad_output: 1.7, ..base }, uses_reference));
    }
    let base = DpoConfig { beta: 0.3, bco_delta: BcoDelta::Fixed(-0.1), ..Default::default() };
    for f_divergence in [FDivergence::JsDivergence, FDivergence::AlphaDivergence(0.6), FDivergence::ForwardKl] {
        for loss_type in [DpoLossType::Sigmoid, DpoLossType::Ipo, DpoLossType::ExoPair, DpoLossType::Robust] {
            out.push((DpoConfig { loss_type, f_divergence, beta: 0.05, ..base }, plain));
        }
        out.push((DpoConfig { f_divergence, beta: 0.05, reference_free: true, ..base }, plain));
    }
    let mixture = |terms: &[(DpoLossType, f32)]| Some(LossMixture::new(terms).expect("mixture"));
    out.push((
        DpoConfig {
            loss_mixture: mixture(&[(DpoLossType::Sigmoid, 0.8), (DpoLossType::BcoPair, 0.2), (DpoLossType::Aot, 0.5)]),
            rpo_alpha: Some(0.5),
            ..base
        },
        weighted,
    ));
    out.push((
        DpoConfig { loss_mixture: mixture(&[(DpoLossType::Ipo, 1.0), (DpoLossType::AotPair, 0.7)]), ..base },
        plain,
    ));
    for loss_type in [DpoLossType::Sigmoid, DpoLossType::AotPair, DpoLossType::Discopop] {
        out.push((DpoConfig { loss_type, rpo_alpha: Some(0.2), ..base }, weighted));
    }
    for loss_type in [DpoLossType::Sigmoid, DpoLossType::Ipo, DpoLossType::NcaPair] {
        out.push((DpoConfig { loss_type, ld_alpha: Some(0.4), rpo_alpha: Some(0.3), ..base }, plain));
    }
    out
}

/// Central differences of the loss at steps 2^-5 and 2^-6 (exact in f32 at these magnitudes), combined by
/// Richardson extrapolation (error O(h⁴): ORPO near log-prob 0 is strongly curved); the tolerance allows for the
/// f32 rounding of the loss itself. Every differentiated input: the policy log-probs and LD-DPO's verbose parts.
#[test]
fn gradients_match_finite_differences() {
    let mut rng = rng("dpo gradients_match_finite_differences");
    for (cfg, extras) in configs() {
        let case = case_for(&mut rng, 5, &cfg, extras);
        let out = run(&case, &cfg, DType::F32, Device::Cpu);
        let h = 1.0f32 / 32.0;
        // Richardson's combination turns an evaluation's error of k ulps into about 3k·ulp/h. k is a few ulps
        // for an ordinary loss, up to ~16 for the f-divergences' reference-free losses of ~1e11 (e^30 of a raw
        // log-prob, rounded to f32 in the per-pair terms): allowed for at 16.
        let noise = 3.0 * 16.0 * f32::EPSILON as f64 * out.loss.abs() as f64 / h as f64;
        let grads = [
            Some(&out.grad_policy_chosen),
            Some(&out.grad_policy_rejected),
            out.grad_policy_chosen_verbose.as_ref(),
            out.grad_policy_rejected_verbose.as_ref(),
        ];
        for (side, grad) in grads.into_iter().enumerate() {
            let Some(grad) = grad else { continue };
            let grad = values(grad);
            let scale = grad.iter().fold(0.0f32, |m, g| m.max(g.abs())) as f64;
            for i in 0..case.policy_chosen.len() {
                let moved = |d: f32| {
                    let mut c = case.clone();
                    let v = match side {
                        0 => &mut c.policy_chosen,
                        1 => &mut c.policy_rejected,
                        2 => &mut c.verbose.as_mut().expect("verbose").0,
                        _ => &mut c.verbose.as_mut().expect("verbose").1,
                    };
                    v[i] += d;
                    c
                };
                let kinked = [moved(-h), moved(h)].iter().any(|c| !same_sort_orders(&case, c, &cfg))
                    || (cfg.losses().contains(DpoLossType::Hinge) && near_hinge_kink(&case, &cfg, i, h))
                    || near_exp_cap(&case, &cfg, i, h);
                if kinked {
                    continue;
                }
                let loss_at = |d: f32| run(&moved(d), &cfg, DType::F32, Device::Cpu).loss as f64;
                let central = |h: f32| (loss_at(h) - loss_at(-h)) / (2.0 * h as f64);
                let fd = cfg.grad_output as f64 * (4.0 * central(h / 2.0) - central(h)) / 3.0;
                let what = format!("{} side {side} pair {i} ({cfg:?})", name_of(&cfg));
                assert_close(&what, grad[i] as f64, fd, 2e-3, 2e-3 * scale + noise + 1e-6);
            }
        }
    }
}

/// Whether AOT's sort orders (of `c - r` and of each side's log-ratios) are the same for both cases (a change of
/// order is a kink of the AOT losses). Cases of configs without AOT always agree.
fn same_sort_orders(a: &Case, b: &Case, cfg: &DpoConfig) -> bool {
    if !cfg.losses().terms().iter().any(|(t, _)| t.sorts_the_batch()) {
        return true;
    }
    let keys = |case: &Case| -> Vec<Vec<usize>> {
        let n = case.policy_chosen.len();
        let (rc, rr) = case.reference.clone().unwrap_or((vec![0.0; n], vec![0.0; n]));
        let (lc, lr) = case.lengths.clone().expect("lengths");
        let norm = cfg.losses().length_normalised();
        let scaled = |v: f32, l: i64| if norm { v as f64 / l as f64 } else { v as f64 };
        let c: Vec<f64> = (0..n).map(|i| scaled(case.policy_chosen[i], lc[i])).collect();
        let r: Vec<f64> = (0..n).map(|i| scaled(case.policy_rejected[i], lr[i])).collect();
        let a: Vec<f64> = (0..n).map(|i| c[i] - scaled(rc[i], lc[i])).collect();
        let b: Vec<f64> = (0..n).map(|i| r[i] - scaled(rr[i], lr[i])).collect();
        let d: Vec<f64> = (0..n).map(|i| c[i] - r[i]).collect();
        [a, b, d]
            .iter()
            .map(|v| {
                let mut order: Vec<usize> = (0..n).collect();
                order.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
                order
            })
            .collect()
    };
    keys(a) == keys(b)
}

/// Whether moving pair `i`'s log-probs by `h` can cross the hinge's kink at βz = 1 (no derivative there).
fn near_hinge_kink(case: &Case, cfg: &DpoConfig, i: usize, h: f32) -> bool {
    let (a, b) = free_log_ratios(case, cfg, i);
    let beta = cfg.beta as f64;
    (1.0 - beta * (a - b)).abs() <= 2.0 * beta * h as f64
}

/// Pair `i`'s log-ratios of the chosen and the rejected answer, the reference left out under `reference_free`.
fn free_log_ratios(case: &Case, cfg: &DpoConfig, i: usize) -> (f64, f64) {
    let (c, r) = (case.policy_chosen[i] as f64, case.policy_rejected[i] as f64);
    let (rc, rr) = match &case.reference {
        Some((a, b)) if !cfg.reference_free => (a[i] as f64, b[i] as f64),
        _ => (0.0, 0.0),
    };
    (c - rc, r - rr)
}

/// Whether an α-divergence exponent `-α·log-ratio` of pair `i` is within the steps `±h` of TRL's `cap_exp` bound
/// (log of f32's largest value): the capped side has no gradient, so the loss has a kink there.
fn near_exp_cap(case: &Case, cfg: &DpoConfig, i: usize, h: f32) -> bool {
    let alpha = match cfg.f_divergence {
        FDivergence::AlphaDivergence(alpha) => alpha as f64,
        FDivergence::ForwardKl => 1.0,
        _ => return false,
    };
    let cap = ((f32::MAX as f64).ln() * 1e4).floor() / 1e4;
    let (a, b) = free_log_ratios(case, cfg, i);
    [a, b].iter().any(|x| (-alpha * x - cap).abs() <= 2.0 * alpha.abs() * h as f64)
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

/// Reference log-probs given to a loss that does not use them (SimPO, ORPO) are ignored.
#[test]
fn unused_references_are_ignored() {
    let mut rng = rng("dpo unused_references_are_ignored");
    let with = random_case(&mut rng, 9, true, true);
    let without = Case { reference: None, ..with.clone() };
    for cfg in [
        DpoConfig { loss_type: DpoLossType::Simpo, ..Default::default() },
        DpoConfig { loss_type: DpoLossType::Orpo, ..Default::default() },
    ] {
        let (a, b) = (run(&with, &cfg, DType::F32, Device::Cpu), run(&without, &cfg, DType::F32, Device::Cpu));
        assert_eq!(a.loss, b.loss);
        assert_eq!(a.metrics, b.metrics);
        assert_eq!(values(&a.grad_policy_chosen), values(&b.grad_policy_chosen));
    }
}

/// TRL updates BCO's running mean with the batch before using it: a trainer that carries `bco_delta` from one
/// output to the next config gets, at each step, δ = the mean of the batch means so far (TRL's RunningMoments).
#[test]
fn bco_running_mean_is_updated_before_use() {
    let mut rng = rng("dpo bco_running_mean_is_updated_before_use");
    let mut cfg = DpoConfig { loss_type: DpoLossType::BcoPair, beta: 0.3, ..Default::default() };
    let mut batch_means = Vec::new();
    for step in 0..3 {
        let case = random_case(&mut rng, 11, true, false);
        let out = run(&case, &cfg, DType::F32, Device::Cpu);
        let (rc, rr) = case.reference.as_ref().expect("reference");
        let rewards: f64 = (0..11)
            .map(|i| (case.policy_chosen[i] as f64 - rc[i] as f64) + (case.policy_rejected[i] as f64 - rr[i] as f64))
            .sum::<f64>()
            * 0.3
            / 22.0;
        batch_means.push(rewards);
        let delta = batch_means.iter().sum::<f64>() / batch_means.len() as f64;
        // The same loss with δ fixed at the updated mean.
        let fixed = run(&case, &DpoConfig { bco_delta: BcoDelta::Fixed(delta as f32), ..cfg }, DType::F32, Device::Cpu);
        assert_close(&format!("step {step} loss"), out.loss as f64, fixed.loss as f64, 1e-6, 1e-7);
        let BcoDelta::Running { mean, count } = out.bco_delta else { panic!("running") };
        assert_close(&format!("step {step} mean"), mean as f64, delta, 1e-6, 1e-7);
        assert_eq!(count, step as f32 + 1.0);
        cfg.bco_delta = out.bco_delta;
    }
}

/// WPO: pair weights multiply each pair's loss and the RPO term, as TRL's `losses * policy_weights` does; all-one
/// weights change nothing.
#[test]
fn pair_weights_scale_each_pair() {
    let mut rng = rng("dpo pair_weights_scale_each_pair");
    let cfg = DpoConfig { beta: 0.2, rpo_alpha: Some(0.5), ..Default::default() };
    let plain = random_case(&mut rng, 7, true, true);
    let ones = Case { pair_weights: Some(vec![1.0; 7]), ..plain.clone() };
    let (a, b) = (run(&plain, &cfg, DType::F32, Device::Cpu), run(&ones, &cfg, DType::F32, Device::Cpu));
    assert_eq!(a.loss, b.loss);
    assert_eq!(values(&a.grad_policy_chosen), values(&b.grad_policy_chosen));
    let w: Vec<f32> = (0..7).map(|i| 0.1 * (i + 1) as f32).collect();
    let weighted = run(&Case { pair_weights: Some(w.clone()), ..plain.clone() }, &cfg, DType::F32, Device::Cpu);
    let nll = a.metrics.nll_loss.expect("nll") as f64;
    let losses = values(&a.losses);
    let want: f64 = (0..7).map(|i| w[i] as f64 * (losses[i] as f64 + 0.5 * nll)).sum::<f64>() / 7.0;
    assert_close("weighted loss", weighted.loss as f64, want, 1e-5, 1e-7);
}

#[test]
fn trl_names_round_trip() {
    for t in DpoLossType::ALL {
        assert_eq!(DpoLossType::from_trl_name(t.trl_name()).expect("known"), t);
    }
    assert_eq!(DpoLossType::from_trl_name("aot_unpaired").expect("TRL v0.28's name"), DpoLossType::AotPair);
    let err = DpoLossType::from_trl_name("kto_pair").expect_err("unknown");
    assert!(err.to_string().contains("unknown DPO loss type `kto_pair`"), "{err}");
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
    // The loss is finite there; the message names the log-odds, not the loss, as what is infinite.
    let e =
        expect_err(&PreferenceLogps::new(&certain, &v3).with_lengths(&lens, &lens), &orpo, "ORPO's log-odds ratio is");
    assert!(e.to_string().contains("has no finite gradient"), "{e}");

    let ld = DpoConfig { ld_alpha: Some(0.5), ..free };
    expect_err(&PreferenceLogps::new(&v3, &v3), &ld, "`ld_alpha` needs `policy_chosen_verbose`");
    expect_err(&PreferenceLogps::new(&v3, &v3).with_verbose(&v3, &v3), &free, "set `ld_alpha` to use them");
    expect_err(&PreferenceLogps::new(&v3, &v3).with_verbose(&v3, &v2), &ld, "`policy_rejected_verbose` has shape");
    expect_err(&PreferenceLogps::new(&v3, &v3), &DpoConfig { discopop_tau: 0.0, ..free }, "`discopop_tau` must be");
    let alpha0 = DpoConfig { f_divergence: FDivergence::AlphaDivergence(0.0), ..free };
    expect_err(&PreferenceLogps::new(&v3, &v3), &alpha0, "`f_alpha_divergence_coef` must not be 0");
    let simpo_js = DpoConfig { f_divergence: FDivergence::JsDivergence, ..simpo };
    expect_err(&PreferenceLogps::new(&v3, &v3).with_lengths(&lens, &lens), &simpo_js, "takes no f-divergence");
    let nan_weights = tensor(&[1.0, f32::NAN, 1.0], &[3], DType::F32, cpu);
    expect_err(&PreferenceLogps::new(&v3, &v3).with_pair_weights(&nan_weights), &free, "`pair_weights`[1] is NaN");
    expect_err(&PreferenceLogps::new(&v3, &v3).with_pair_weights(&v2), &free, "`pair_weights` has shape [2]");
    let running = DpoConfig { bco_delta: BcoDelta::Running { mean: 0.0, count: -1.0 }, ..free };
    expect_err(&PreferenceLogps::new(&v3, &v3), &running, "`bco_count` must not be negative");
    let both = [(DpoLossType::Sigmoid, 1.0), (DpoLossType::Sigmoid, 0.5)];
    assert!(LossMixture::new(&both).expect_err("twice").to_string().contains("listed twice"));
    let cross = [(DpoLossType::Sigmoid, 1.0), (DpoLossType::Simpo, 0.5)];
    assert!(LossMixture::new(&cross).expect_err("simpo").to_string().contains("cannot be mixed"));
    assert!(LossMixture::new(&[]).is_err());
    let nan_weight = [(DpoLossType::Sigmoid, f32::NAN)];
    assert!(LossMixture::new(&nan_weight).expect_err("nan").to_string().contains("must be finite"));
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
    for (cfg, extras) in configs() {
        for pairs in [1, 37, 5000] {
            let case = case_for(&mut rng, pairs, &cfg, extras);
            for dtype in FLOAT_DTYPES {
                let want = run(&case, &cfg, dtype, Device::Cpu);
                let got = run(&case, &cfg, dtype, gpu);
                let what = format!("{} {dtype} P={pairs}", name_of(&cfg));
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
                assert_all_close(&format!("{what} losses"), &values(&got.losses), &w(&want.losses), 1e-5);
                if let (Some(g), Some(c)) = (&got.grad_policy_chosen_verbose, &want.grad_policy_chosen_verbose) {
                    assert_all_close(&format!("{what} grad chosen verbose"), &values(g), &w(c), rtol);
                }
                assert_eq!(got.bco_delta, want.bco_delta, "{what} bco");
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
