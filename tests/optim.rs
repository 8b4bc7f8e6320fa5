//! The optimizer against float64 references: PyTorch's AdamW + clip_grad_norm_ + transformers' schedules (fixtures),
//! an f64 Rust loop of the same formulas on fresh random inputs that cross chunk boundaries, the bf16/f16 master
//! weights, frozen and per-group parameters, accumulation against one big batch, clipping, bad input, and CUDA
//! against the CPU.

use half::{bf16, f16};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use unireward::train::optim::{AdamW, AdamWConfig, ParamGroup, Schedule, ScheduleKind, StepReport};
use unireward::{DType, Device, Error, Tensor};

// ------------------------------------------------------------------------------------------------------ helpers

fn seeded() -> StdRng {
    let seed: u64 = rand::random();
    println!("seed {seed}");
    StdRng::seed_from_u64(seed)
}

/// Values rounded through `dtype` (what a tensor of that dtype holds).
fn rounded(x: &[f64], dtype: DType) -> Vec<f64> {
    x.iter()
        .map(|&v| match dtype {
            DType::BF16 => f64::from(bf16::from_f32(v as f32).to_f32()),
            DType::F16 => f64::from(f16::from_f32(v as f32).to_f32()),
            _ => f64::from(v as f32),
        })
        .collect()
}

fn tensor(x: &[f64], shape: &[usize], dtype: DType, device: Device) -> Tensor {
    let v: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    Tensor::from_f32(&v, shape, dtype, device).unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_f32_cow().unwrap().iter().map(|&v| f64::from(v)).collect()
}

/// Elementwise |got − want| ≤ rel · max(|want|, floor).
fn assert_close(what: &str, got: &[f64], want: &[f64], rel: f64, floor: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0.0f64, 0usize);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs() / w.abs().max(floor);
        // A NaN error counts as the worst.
        if err.is_nan() || err > worst.0 {
            worst = (err, i);
        }
    }
    let (err, i) = worst;
    println!("{what}: max relative error {err:.2e}");
    assert!(err <= rel, "{what}[{i}]: got {}, want {} (relative error {err:.2e} > {rel:.0e})", got[i], want[i]);
}

fn expect_err<T: std::fmt::Debug>(result: unireward::Result<T>, fragment: &str) -> Error {
    let e = result.expect_err(&format!("expected an error mentioning `{fragment}`"));
    assert!(e.to_string().contains(fragment), "error `{e}` does not mention `{fragment}`");
    e
}

// ------------------------------------------------------------------------------------------ cases and reference

/// Parameters, 10 steps of gradients and the optimizer's settings.
#[derive(Clone)]
struct Case {
    names: Vec<String>,
    shapes: Vec<Vec<usize>>,
    initial: Vec<Vec<f64>>,
    /// `grads[step][param]`.
    grads: Vec<Vec<Vec<f64>>>,
    config: AdamWConfig,
    groups: Vec<ParamGroup>,
}

#[derive(Deserialize)]
struct FixtureConfig {
    lr: f64,
    betas: [f64; 2],
    eps: f64,
    weight_decay: f64,
    max_grad_norm: Option<f64>,
    schedule: String,
    warmup_ratio: f64,
    total_steps: usize,
    bias_lr: f64,
}

#[derive(Deserialize)]
struct Fixture {
    config: FixtureConfig,
    names: Vec<String>,
    shapes: Vec<Vec<usize>>,
    initial: Vec<Vec<f64>>,
    grads: Vec<Vec<Vec<f64>>>,
    expected: Vec<Vec<f64>>,
    norms: Vec<f64>,
    lrs: Vec<f64>,
}

/// The fixtures' groups: `frozen.*` frozen, biases with their own learning rate and no weight decay.
fn fixture_groups(bias_lr: f64) -> Vec<ParamGroup> {
    vec![
        ParamGroup::new("frozen", &["frozen."]).frozen(),
        ParamGroup::new("no_decay", &["bias"]).lr(bias_lr).weight_decay(0.0),
    ]
}

fn fixture(name: &str) -> (Case, Fixture) {
    let path = format!("{}/tests/fixtures/optim/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let f: Fixture = serde_json::from_str(&text).unwrap();
    let c = &f.config;
    let kind = match c.schedule.as_str() {
        "cosine" => ScheduleKind::Cosine,
        "linear" => ScheduleKind::Linear,
        other => panic!("schedule {other}"),
    };
    let config = AdamWConfig {
        lr: c.lr,
        betas: (c.betas[0], c.betas[1]),
        eps: c.eps,
        weight_decay: c.weight_decay,
        max_grad_norm: c.max_grad_norm,
        error_if_nonfinite: false,
        schedule: Schedule::with_warmup_ratio(kind, c.total_steps, c.warmup_ratio).unwrap(),
    };
    let case = Case {
        names: f.names.clone(),
        shapes: f.shapes.clone(),
        initial: f.initial.clone(),
        grads: f.grads.clone(),
        config,
        groups: fixture_groups(c.bias_lr),
    };
    (case, f)
}

/// What the f64 reference computes: final parameters, and per step the clipping norm and the default group's lr.
struct Reference {
    params: Vec<Vec<f64>>,
    norms: Vec<f64>,
    lrs: Vec<f64>,
}

/// `torch.optim.AdamW` (foreach=False) + `clip_grad_norm_` + the schedule, in f64, over `case`.
fn reference(case: &Case) -> Reference {
    let cfg = &case.config;
    let group = |name: &str| case.groups.iter().find(|g| g.patterns.iter().any(|p| name.contains(p.as_str())));
    let mut params = case.initial.clone();
    let mut m: Vec<Vec<f64>> = params.iter().map(|p| vec![0.0; p.len()]).collect();
    let mut v = m.clone();
    let (mut norms, mut lrs) = (Vec::new(), Vec::new());
    for (step, grads) in case.grads.iter().enumerate() {
        let trainable: Vec<usize> =
            (0..params.len()).filter(|&k| !group(&case.names[k]).is_some_and(|g| g.frozen)).collect();
        let mut coef = 1.0;
        if let Some(max) = cfg.max_grad_norm {
            let norm = trainable.iter().flat_map(|&k| &grads[k]).map(|g| g * g).sum::<f64>().sqrt();
            norms.push(norm);
            coef = (max / (norm + 1e-6)).min(1.0);
        }
        let factor = cfg.schedule.factor(step as u64);
        lrs.push(cfg.lr * factor);
        let t = (step + 1) as i32;
        let (bc1, bc2) = (1.0 - cfg.betas.0.powi(t), 1.0 - cfg.betas.1.powi(t));
        for &k in &trainable {
            let g = group(&case.names[k]);
            let lr = g.and_then(|g| g.lr).unwrap_or(cfg.lr) * factor;
            let wd = g.and_then(|g| g.weight_decay).unwrap_or(cfg.weight_decay);
            for i in 0..params[k].len() {
                let grad = grads[k][i] * coef;
                params[k][i] *= 1.0 - lr * wd;
                m[k][i] = cfg.betas.0 * m[k][i] + (1.0 - cfg.betas.0) * grad;
                v[k][i] = cfg.betas.1 * v[k][i] + (1.0 - cfg.betas.1) * grad * grad;
                params[k][i] -= lr / bc1 * m[k][i] / (v[k][i].sqrt() / bc2.sqrt() + cfg.eps);
            }
        }
    }
    Reference { params, norms, lrs }
}

/// The optimizer's run of `case` with parameters and gradients in `dtype` on `device`.
struct Run {
    params: Vec<Tensor>,
    reports: Vec<StepReport>,
    opt: AdamW,
}

fn run(case: &Case, dtype: DType, device: Device) -> Run {
    let mut params: Vec<Tensor> =
        case.initial.iter().zip(&case.shapes).map(|(x, s)| tensor(x, s, dtype, device)).collect();
    let named: Vec<(String, &Tensor)> = case.names.iter().cloned().zip(params.iter()).collect();
    let mut opt = AdamW::new(&named, case.groups.clone(), case.config.clone()).unwrap();
    let mut reports = Vec::new();
    for grads in &case.grads {
        let grads: Vec<Tensor> = grads.iter().zip(&case.shapes).map(|(g, s)| tensor(g, s, dtype, device)).collect();
        let named_grads: Vec<(String, &Tensor)> = case.names.iter().cloned().zip(grads.iter()).collect();
        let mut named: Vec<(String, &mut Tensor)> = case.names.iter().cloned().zip(params.iter_mut()).collect();
        reports.push(opt.step(&mut named, &named_grads).unwrap());
    }
    Run { params, reports, opt }
}

/// A case of fresh random parameters with shapes that cross the 32768-element chunks, a frozen one and two groups.
fn random_case(rng: &mut StdRng, config: AdamWConfig) -> Case {
    let shapes: Vec<(&str, Vec<usize>)> = vec![
        ("layer.weight", vec![3, 23_000]),
        ("layer.bias", vec![32_768]),
        ("frozen.embed", vec![5, 7]),
        ("norm.weight", vec![1]),
        ("head.weight", vec![31, 17]),
    ];
    let draw = |rng: &mut StdRng, n: usize, scale: f64| -> Vec<f64> {
        rounded(&(0..n).map(|_| rng.gen_range(-1.0..1.0) * scale).collect::<Vec<_>>(), DType::F32)
    };
    let initial = shapes.iter().map(|(_, s)| draw(rng, s.iter().product(), 1.0)).collect();
    let grads = (0..10)
        .map(|k| shapes.iter().map(|(_, s)| draw(rng, s.iter().product(), 0.01 * 4f64.powi(k % 3))).collect())
        .collect();
    Case {
        names: shapes.iter().map(|(n, _)| n.to_string()).collect(),
        shapes: shapes.into_iter().map(|(_, s)| s).collect(),
        initial,
        grads,
        config,
        groups: fixture_groups(3e-3),
    }
}

fn cosine_clip_config() -> AdamWConfig {
    AdamWConfig {
        lr: 1e-2,
        weight_decay: 0.05,
        max_grad_norm: Some(2.0),
        schedule: Schedule::with_warmup_ratio(ScheduleKind::Cosine, 10, 0.03).unwrap(),
        ..AdamWConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------------------- tests

/// Final parameters within 1e-6 relative, measured against the tensor's largest magnitude: an element that passes
/// near zero carries the f32 rounding of the larger values it had (half an ulp of |p| per step), as PyTorch's own f32
/// AdamW does, which is not relative to its own small final size.
const PARAM_REL: f64 = 1e-6;

/// A tensor's values judged on the scale of its largest, and never below [`STEP_SCALE`]: a one-element tensor drawn
/// near zero (or stepped across it) is judged on the size of the steps that brought it there, which is what the
/// rounding of each step's update scales with.
fn assert_params_close(what: &str, got: &[f64], want: &[f64]) {
    let scale = want.iter().fold(STEP_SCALE, |m, w| m.max(w.abs()));
    assert_close(what, got, want, PARAM_REL, scale);
}

/// Below every case's movement over its steps (learning rates 1e-3 to 1e-1, up to ten steps).
const STEP_SCALE: f64 = 1e-3;

#[test]
fn ten_steps_match_pytorch_adamw_clip_and_schedule() {
    for name in ["cosine_clip", "linear_noclip"] {
        let (case, f) = fixture(name);
        let r = run(&case, DType::F32, Device::Cpu);
        for (k, name) in case.names.iter().enumerate() {
            let got = values(&r.params[k]);
            if name.starts_with("frozen.") {
                assert_eq!(got, f.initial[k], "{name}: a frozen parameter changed");
            } else {
                assert_params_close(name, &got, &f.expected[k]);
            }
        }
        let lrs: Vec<f64> = r.reports.iter().map(|s| s.lr).collect();
        assert_close("learning rates", &lrs, &f.lrs, 1e-12, 1e-12);
        let norms: Vec<f64> = r.reports.iter().filter_map(|s| s.grad_norm).collect();
        assert_close("clipping norms", &norms, &f.norms, 1e-12, 0.0);
        assert_eq!(r.reports.last().unwrap().step, 10);
    }
}

#[test]
fn the_f64_reference_loop_agrees_with_pytorch() {
    for name in ["cosine_clip", "linear_noclip"] {
        let (case, f) = fixture(name);
        let r = reference(&case);
        for (k, name) in case.names.iter().enumerate() {
            assert_close(name, &r.params[k], &f.expected[k], 1e-12, 1e-12);
        }
        assert_close("lrs", &r.lrs, &f.lrs, 1e-12, 1e-12);
        assert_close("norms", &r.norms, &f.norms, 1e-12, 0.0);
    }
}

#[test]
fn random_inputs_across_chunks_match_the_f64_loop() {
    let mut rng = seeded();
    let case = random_case(&mut rng, cosine_clip_config());
    let want = reference(&case);
    let r = run(&case, DType::F32, Device::Cpu);
    for (k, name) in case.names.iter().enumerate() {
        assert_params_close(name, &values(&r.params[k]), &want.params[k]);
    }
    let norms: Vec<f64> = r.reports.iter().filter_map(|s| s.grad_norm).collect();
    assert_close("norms", &norms, &want.norms, 1e-12, 0.0);
    assert!(r.reports.iter().any(|s| s.clip_coef < 1.0) && r.reports.iter().any(|s| s.clip_coef == 1.0));
    let frozen: usize = case.shapes[2].iter().product();
    let all: usize = case.shapes.iter().map(|s| s.iter().product::<usize>()).sum();
    assert_eq!(r.opt.trainable_numel(), all - frozen, "a frozen parameter has no optimizer state");
}

#[test]
fn half_parameters_step_fp32_masters_and_store_them_rounded() {
    let mut rng = seeded();
    for dtype in [DType::BF16, DType::F16] {
        let mut case = random_case(&mut rng, cosine_clip_config());
        case.initial = case.initial.iter().map(|x| rounded(x, dtype)).collect();
        case.grads = case.grads.iter().map(|s| s.iter().map(|g| rounded(g, dtype)).collect()).collect();
        let want = reference(&case);
        let r = run(&case, dtype, Device::Cpu);
        let state = r.opt.state();
        let masters = values(state.master);
        let layout = r.opt.state_layout();
        for (k, entry) in layout.iter().enumerate() {
            let param = values(&r.params[k]);
            let Some(at) = entry.master_offset else {
                assert_eq!(param, case.initial[k], "{}: frozen parameters have no master and do not move", entry.name);
                continue;
            };
            let master = &masters[at..at + entry.numel];
            assert_params_close(&format!("{dtype} master {}", entry.name), master, &want.params[k]);
            let stored = rounded(master, dtype);
            let first_mismatch = param.iter().zip(&stored).position(|(p, s)| p != s);
            assert_eq!(first_mismatch, None, "{}: the {dtype} parameter is its master rounded to nearest", entry.name);
        }
    }
}

#[test]
fn per_group_learning_rate_and_frozen_groups() {
    let mut rng = seeded();
    let mut case = random_case(&mut rng, AdamWConfig { weight_decay: 0.5, ..AdamWConfig::default() });
    // Biases get lr 0 (so no update at all, weight decay included); NaN gradients of the frozen parameter are never
    // read.
    case.groups = vec![
        ParamGroup::new("frozen", &["frozen."]).frozen(),
        ParamGroup::new("still", &["bias"]).lr(0.0),
        ParamGroup::new("fast", &["head."]).lr(0.1).weight_decay(0.0),
    ];
    for grads in &mut case.grads {
        grads[2].iter_mut().for_each(|g| *g = f64::NAN);
    }
    let want = reference(&case);
    let r = run(&case, DType::F32, Device::Cpu);
    assert_eq!(values(&r.params[1]), case.initial[1], "lr 0: bit for bit unchanged");
    assert_eq!(values(&r.params[2]), case.initial[2], "frozen: bit for bit unchanged");
    for k in [0, 3, 4] {
        assert_params_close(&case.names[k], &values(&r.params[k]), &want.params[k]);
    }
}

/// Least squares `0.5·|W x + b − y|²` averaged over samples: the gradient of the mean over `samples`.
fn least_squares_grads(w: &[f64], b: &[f64], samples: &[(Vec<f64>, Vec<f64>)]) -> (Vec<f64>, Vec<f64>) {
    let (rows, cols) = (b.len(), w.len() / b.len());
    let (mut gw, mut gb) = (vec![0.0; w.len()], vec![0.0; rows]);
    let n = samples.len() as f64;
    for (x, y) in samples {
        for r in 0..rows {
            let residual = (0..cols).map(|c| w[r * cols + c] * x[c]).sum::<f64>() + b[r] - y[r];
            gb[r] += residual / n;
            (0..cols).for_each(|c| gw[r * cols + c] += residual * x[c] / n);
        }
    }
    (rounded(&gw, DType::F32), rounded(&gb, DType::F32))
}

#[test]
fn accumulated_micro_batches_equal_one_big_batch() {
    let mut rng = seeded();
    let (rows, cols) = (5, 9);
    let mut draw =
        |n: usize| -> Vec<f64> { rounded(&(0..n).map(|_| rng.gen_range(-1.0..1.0)).collect::<Vec<_>>(), DType::F32) };
    let samples: Vec<(Vec<f64>, Vec<f64>)> = (0..7).map(|_| (draw(cols), draw(rows))).collect();
    let (w0, b0) = (draw(rows * cols), draw(rows));
    let names = ["w".to_string(), "b".to_string()];
    let config = AdamWConfig { max_grad_norm: Some(0.5), lr: 0.05, ..AdamWConfig::default() };
    let make = || -> (Vec<Tensor>, AdamW) {
        let params =
            vec![tensor(&w0, &[rows, cols], DType::F32, Device::Cpu), tensor(&b0, &[rows], DType::F32, Device::Cpu)];
        let named: Vec<(String, &Tensor)> = names.iter().cloned().zip(params.iter()).collect();
        let opt = AdamW::new(&named, vec![], config.clone()).unwrap();
        (params, opt)
    };
    let (mut big, mut big_opt) = make();
    let (mut micro, mut micro_opt) = make();
    for _ in 0..3 {
        let (gw, gb) = least_squares_grads(&values(&big[0]), &values(&big[1]), &samples);
        let grads =
            [tensor(&gw, &[rows, cols], DType::F32, Device::Cpu), tensor(&gb, &[rows], DType::F32, Device::Cpu)];
        let named_grads: Vec<(String, &Tensor)> = names.iter().cloned().zip(grads.iter()).collect();
        let mut named: Vec<(String, &mut Tensor)> = names.iter().cloned().zip(big.iter_mut()).collect();
        let big_report = big_opt.step(&mut named, &named_grads).unwrap();

        // Micro-batches of 3, 1 and 3 samples, each gradient the mean over its own samples, weighted by its size.
        let (w, b) = (values(&micro[0]), values(&micro[1]));
        for part in [&samples[0..3], &samples[3..4], &samples[4..7]] {
            let (gw, gb) = least_squares_grads(&w, &b, part);
            let grads =
                [tensor(&gw, &[rows, cols], DType::F32, Device::Cpu), tensor(&gb, &[rows], DType::F32, Device::Cpu)];
            let named_grads: Vec<(String, &Tensor)> = names.iter().cloned().zip(grads.iter()).collect();
            micro_opt.accumulate(&named_grads, part.len() as f64).unwrap();
        }
        let mut named: Vec<(String, &mut Tensor)> = names.iter().cloned().zip(micro.iter_mut()).collect();
        let micro_report = micro_opt.step_accumulated(&mut named).unwrap();
        let (a, b) = (big_report.grad_norm.unwrap(), micro_report.grad_norm.unwrap());
        assert!((a - b).abs() <= 1e-6 * a, "norm of the accumulated gradient {b} vs the big batch's {a}");
        assert!(big_report.clip_coef < 1.0, "clipping is active");
    }
    // The two gradients differ by their f32 rounding (about 1e-7 of their scale), and Adam divides each element by
    // its own running RMS: an element whose gradient is near zero turns that into a relative change of its update
    // (measured up to 6e-5 of lr). So the parameters are judged on what the three steps can move them, 3·lr.
    let moved = 3.0 * config.lr;
    for k in 0..2 {
        let (got, want) = (values(&micro[k]), values(&big[k]));
        let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0, f64::max);
        assert!(worst <= 1e-3 * moved, "{}: parameters differ by {worst:e}, over 1e-3 of {moved}", names[k]);
    }
    let mut named: Vec<(String, &mut Tensor)> = names.iter().cloned().zip(micro.iter_mut()).collect();
    expect_err(micro_opt.step_accumulated(&mut named), "no accumulated gradients");
}

/// Every step of `case` (params and gradients in `dtype` on `device`) fed as micro-batches of random weights in two
/// ways: [`AdamW::step_with_last_micro_batch`] after accumulating all but the last, and `accumulate` of every one
/// then `step_accumulated`. Steps alternate between one micro-batch and three (the same gradients three times with
/// other weights, so the mean is the step's gradient). The two runs must agree bit for bit (parameters, moments,
/// masters, reports); the first never allocates the accumulator while its steps are of one micro-batch.
fn last_micro_batch_equals_accumulating_it(case: &Case, dtype: DType, device: Device, rng: &mut StdRng) {
    let make = || {
        let params: Vec<Tensor> =
            case.initial.iter().zip(&case.shapes).map(|(x, s)| tensor(x, s, dtype, device)).collect();
        let named: Vec<(String, &Tensor)> = case.names.iter().cloned().zip(params.iter()).collect();
        let opt = AdamW::new(&named, case.groups.clone(), case.config.clone()).unwrap();
        (params, opt)
    };
    let ((mut direct, mut direct_opt), (mut accumulated, mut accumulated_opt)) = (make(), make());
    for (k, grads) in case.grads.iter().enumerate() {
        let grads: Vec<Tensor> = grads.iter().zip(&case.shapes).map(|(g, s)| tensor(g, s, dtype, device)).collect();
        let named_grads: Vec<(String, &Tensor)> = case.names.iter().cloned().zip(grads.iter()).collect();
        let micro_batches = if k % 2 == 0 { 1 } else { 3 };
        let weights: Vec<f64> = (0..micro_batches).map(|_| rng.gen_range(0.3..50.0)).collect();
        for &w in &weights[..micro_batches - 1] {
            direct_opt.accumulate(&named_grads, w).unwrap();
        }
        let mut named: Vec<(String, &mut Tensor)> = case.names.iter().cloned().zip(direct.iter_mut()).collect();
        let last = weights[micro_batches - 1];
        let direct_report = direct_opt.step_with_last_micro_batch(&mut named, &named_grads, last).unwrap();
        if k == 0 {
            assert_eq!(direct_opt.accumulator_numel(), 0, "a step of one micro-batch allocated the accumulator");
        }
        for &w in &weights {
            accumulated_opt.accumulate(&named_grads, w).unwrap();
        }
        let mut named: Vec<(String, &mut Tensor)> = case.names.iter().cloned().zip(accumulated.iter_mut()).collect();
        let accumulated_report = accumulated_opt.step_accumulated(&mut named).unwrap();
        assert_eq!(direct_report, accumulated_report, "{dtype} step {k}: reports");
    }
    let bits = |t: &Tensor| {
        t.to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap().iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    };
    for (k, name) in case.names.iter().enumerate() {
        assert_eq!(bits(&direct[k]), bits(&accumulated[k]), "{dtype} {name}: parameters");
    }
    let (a, b) = (direct_opt.state(), accumulated_opt.state());
    for (what, x, y) in
        [("exp_avg", a.exp_avg, b.exp_avg), ("exp_avg_sq", a.exp_avg_sq, b.exp_avg_sq), ("master", a.master, b.master)]
    {
        assert_eq!(bits(x), bits(y), "{dtype} {what}");
    }
    assert!(accumulated_opt.accumulator_numel() > 0);
}

#[test]
fn the_last_micro_batch_steps_as_if_accumulated_bit_for_bit_and_one_needs_no_accumulator() {
    let mut rng = seeded();
    let mut case = random_case(&mut rng, cosine_clip_config());
    case.grads.truncate(4);
    for dtype in [DType::F32, DType::BF16] {
        last_micro_batch_equals_accumulating_it(&case, dtype, Device::Cpu, &mut rng);
    }
    // Clipping active on some steps (norms from 0.01 to 0.16 per element against a max of 2 over ~100k elements).
    let reports = run(&case, DType::F32, Device::Cpu).reports;
    assert!(reports.iter().any(|r| r.clip_coef < 1.0) && reports.iter().any(|r| r.clip_coef == 1.0));

    // A bad weight is refused before anything is written.
    let (mut params, mut opt) = {
        let params: Vec<Tensor> =
            case.initial.iter().zip(&case.shapes).map(|(x, s)| tensor(x, s, DType::F32, Device::Cpu)).collect();
        let named: Vec<(String, &Tensor)> = case.names.iter().cloned().zip(params.iter()).collect();
        let opt = AdamW::new(&named, case.groups.clone(), case.config.clone()).unwrap();
        (params, opt)
    };
    let grads: Vec<Tensor> =
        case.grads[0].iter().zip(&case.shapes).map(|(g, s)| tensor(g, s, DType::F32, Device::Cpu)).collect();
    let named_grads: Vec<(String, &Tensor)> = case.names.iter().cloned().zip(grads.iter()).collect();
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let mut named: Vec<(String, &mut Tensor)> = case.names.iter().cloned().zip(params.iter_mut()).collect();
        expect_err(opt.step_with_last_micro_batch(&mut named, &named_grads, bad), "`weight` must be finite and > 0");
    }
    assert_eq!(opt.steps_done(), 0);
    assert_eq!(values(&params[0]), case.initial[0]);
}

#[test]
fn a_nonfinite_norm_is_refused_when_asked_and_reaches_the_parameters_otherwise() {
    let mut rng = seeded();
    let config = AdamWConfig { max_grad_norm: Some(1.0), error_if_nonfinite: true, ..AdamWConfig::default() };
    let mut case = random_case(&mut rng, config);
    case.grads.truncate(1);
    for (bad, error_if_nonfinite) in [(f64::INFINITY, true), (f64::NAN, true), (f64::NAN, false)] {
        case.grads[0][4][7] = bad;
        let mut params: Vec<Tensor> =
            case.initial.iter().zip(&case.shapes).map(|(x, s)| tensor(x, s, DType::F32, Device::Cpu)).collect();
        let grads: Vec<Tensor> =
            case.grads[0].iter().zip(&case.shapes).map(|(g, s)| tensor(g, s, DType::F32, Device::Cpu)).collect();
        let named_grads: Vec<(String, &Tensor)> = case.names.iter().cloned().zip(grads.iter()).collect();
        let config = AdamWConfig { error_if_nonfinite, ..case.config.clone() };
        let named: Vec<(String, &Tensor)> = case.names.iter().cloned().zip(params.iter()).collect();
        let mut opt = AdamW::new(&named, case.groups.clone(), config).unwrap();
        let mut named: Vec<(String, &mut Tensor)> = case.names.iter().cloned().zip(params.iter_mut()).collect();
        let result = opt.step(&mut named, &named_grads);
        drop(named);
        if error_if_nonfinite {
            expect_err(result, &format!("total norm of the gradients is {bad}"));
            assert_eq!(opt.steps_done(), 0);
            assert!(values(opt.state().exp_avg).iter().all(|&m| m == 0.0), "no moment written");
            for (k, p) in params.iter().enumerate() {
                assert_eq!(values(p), case.initial[k], "nothing written");
            }
        } else {
            assert!(result.unwrap().grad_norm.unwrap().is_nan());
            for k in [0, 1, 3, 4] {
                assert!(values(&params[k]).iter().all(|v| v.is_nan()), "a NaN norm makes every trainable value NaN");
            }
            assert_eq!(values(&params[2]), case.initial[2], "the frozen parameter stays");
        }
    }
}

#[test]
fn schedules_follow_transformers() {
    let cosine = Schedule::with_warmup_ratio(ScheduleKind::Cosine, 100, 0.03).unwrap();
    assert_eq!(cosine.warmup_steps, 3);
    let expect = |s: &Schedule, step: u64, want: f64| {
        let got = s.factor(step);
        assert!((got - want).abs() < 1e-15, "{s:?} at {step}: {got} vs {want}");
    };
    expect(&cosine, 0, 0.0);
    expect(&cosine, 2, 2.0 / 3.0);
    expect(&cosine, 3, 1.0);
    expect(&cosine, 3 + 97 / 2, 0.5 * (1.0 + (std::f64::consts::PI * 48.0 / 97.0).cos()));
    expect(&cosine, 100, 0.0);
    let linear = Schedule { kind: ScheduleKind::Linear, warmup_steps: 0, total_steps: 10 };
    expect(&linear, 0, 1.0);
    expect(&linear, 4, 0.6);
    expect(&linear, 12, 0.0);
    let constant = Schedule { kind: ScheduleKind::Constant, warmup_steps: 4, total_steps: 0 };
    expect(&constant, 1, 0.25);
    expect(&constant, 1000, 1.0);
    expect_err(Schedule::with_warmup_ratio(ScheduleKind::Cosine, 10, 1.5), "warmup_ratio");
}

#[test]
fn bad_input_is_a_clear_error_and_writes_nothing() {
    let p = || tensor(&[0.5, -1.0, 2.0, 0.25, 1.5, -0.75], &[2, 3], DType::F32, Device::Cpu);
    let (mut w, mut b) = (p(), tensor(&[0.1, 0.2], &[2], DType::F32, Device::Cpu));
    let names = ["w".to_string(), "b".to_string()];
    let new = |config: AdamWConfig, groups: Vec<ParamGroup>, w: &Tensor, b: &Tensor| {
        AdamW::new(&[(names[0].clone(), w), (names[1].clone(), b)], groups, config)
    };
    // Hyper-parameters, named as torch names them.
    let base = AdamWConfig::default;
    expect_err(new(AdamWConfig { lr: -1e-3, ..base() }, vec![], &w, &b), "`lr` must be finite and >= 0");
    expect_err(new(AdamWConfig { lr: f64::NAN, ..base() }, vec![], &w, &b), "`lr`");
    expect_err(new(AdamWConfig { betas: (1.0, 0.999), ..base() }, vec![], &w, &b), "`betas.0` must be in [0, 1)");
    expect_err(new(AdamWConfig { betas: (0.9, -0.1), ..base() }, vec![], &w, &b), "`betas.1`");
    expect_err(new(AdamWConfig { eps: -1.0, ..base() }, vec![], &w, &b), "`eps`");
    expect_err(new(AdamWConfig { weight_decay: -0.1, ..base() }, vec![], &w, &b), "`weight_decay`");
    expect_err(new(AdamWConfig { max_grad_norm: Some(0.0), ..base() }, vec![], &w, &b), "`max_grad_norm`");
    let no_total = Schedule { kind: ScheduleKind::Cosine, warmup_steps: 0, total_steps: 0 };
    expect_err(new(AdamWConfig { schedule: no_total, ..base() }, vec![], &w, &b), "total_steps");
    expect_err(new(base(), vec![ParamGroup::new("g", &["w"]).lr(-1.0)], &w, &b), "groups[g].lr");
    expect_err(new(base(), vec![ParamGroup::new("g", &[])], &w, &b), "non-empty name patterns");
    // Parameters.
    expect_err(AdamW::new(&[], vec![], base()), "nothing to optimize");
    expect_err(AdamW::new(&[(names[0].clone(), &w), (names[0].clone(), &b)], vec![], base()), "listed twice");
    let ids = Tensor::from_slice(&[1i64, 2], &[2], Device::Cpu).unwrap();
    expect_err(AdamW::new(&[(names[0].clone(), &ids)], vec![], base()), "f32, bf16 or f16 for `w`");

    // A step's lists: every failure leaves parameters, moments and the step count as they were.
    let mut opt = new(AdamWConfig { max_grad_norm: Some(1.0), ..base() }, vec![], &w, &b).unwrap();
    let (gw, gb) = (p(), tensor(&[1.0, 1.0], &[2], DType::F32, Device::Cpu));
    let wrong_shape = tensor(&[1.0; 6], &[3, 2], DType::F32, Device::Cpu);
    let wrong_dtype = tensor(&[0.5, -1.0, 2.0, 0.25, 1.5, -0.75], &[2, 3], DType::BF16, Device::Cpu);
    let int_grad = Tensor::from_slice(&[1i32; 6], &[2, 3], Device::Cpu).unwrap();
    /// The gradients given, whether `b` is left out of the parameters, and what the error says.
    type BadStep<'a> = (Vec<(String, &'a Tensor)>, bool, &'a str);
    let cases: Vec<BadStep> = vec![
        (vec![("w".into(), &gw)], false, "`b` has no gradient"),
        (vec![("w".into(), &wrong_shape), ("b".into(), &gb)], false, "gradient `w` has shape [3, 2]"),
        (vec![("w".into(), &int_grad), ("b".into(), &gb)], false, "f32, bf16 or f16 for `w`"),
        (vec![("w".into(), &gw), ("b".into(), &gb), ("x".into(), &gb)], false, "names `x`"),
        (vec![("w".into(), &gw), ("w".into(), &gw), ("b".into(), &gb)], false, "gradient `w` is listed twice"),
        (vec![("w".into(), &gw), ("b".into(), &gb)], true, "trainable parameter `b` is missing"),
    ];
    let before = (values(&w), values(&b));
    for (grads, drop_b, fragment) in cases {
        let mut params: Vec<(String, &mut Tensor)> = vec![("w".into(), &mut w)];
        if !drop_b {
            params.push(("b".into(), &mut b));
        }
        expect_err(opt.step(&mut params, &grads), fragment);
    }
    let mut w16 = wrong_dtype;
    let mut params: Vec<(String, &mut Tensor)> = vec![("w".into(), &mut w16), ("b".into(), &mut b)];
    expect_err(opt.step(&mut params, &[("w".into(), &gw), ("b".into(), &gb)]), "optimizer was built for [2, 3] f32");
    expect_err(opt.accumulate(&[("w".into(), &gw), ("b".into(), &gb)], 0.0), "`weight` must be finite and > 0");
    assert_eq!((values(&w), values(&b)), before);
    assert_eq!(opt.steps_done(), 0);
    assert!(values(opt.state().exp_avg).iter().all(|&m| m == 0.0));
    let bad_state = Tensor::zeros(&[3], DType::F32, Device::Cpu).unwrap();
    let s = opt.state();
    let (m, v, master) =
        (s.exp_avg.try_clone().unwrap(), s.exp_avg_sq.try_clone().unwrap(), s.master.try_clone().unwrap());
    expect_err(opt.load_state(5, &bad_state, &v, &master), "state `exp_avg` is [3] f32");
    opt.load_state(5, &m, &v, &master).unwrap();
    assert_eq!(opt.steps_done(), 5);
}

/// One step of `config` (no clipping, constant schedule) on `(param, grad)` in f64: what a first AdamW step does.
fn first_step(p: &[f64], g: &[f64], config: &AdamWConfig, lr: f64, wd: f64) -> Vec<f64> {
    let (b1, b2) = config.betas;
    p.iter()
        .zip(g)
        .map(|(&p, &g)| {
            let (m, v) = ((1.0 - b1) * g, (1.0 - b2) * g * g);
            p * (1.0 - lr * wd) - lr / (1.0 - b1) * m / (v.sqrt() / (1.0 - b2).sqrt() + config.eps)
        })
        .collect()
}

#[test]
fn steps_a_qwen2_and_a_llava_model_in_place_through_their_named_parameters() {
    use unireward::model::llava::{LlavaBatch, LlavaOnevisionModel};
    use unireward::model::{ForwardOptions, Qwen2Model};
    use unireward::ops::fused_linear::FusedLinearConfig;
    let dir = |d: &str| std::path::PathBuf::from(format!("{}/tests/fixtures/{d}", env!("CARGO_MANIFEST_DIR")));
    let config = AdamWConfig { lr: 1e-2, ..AdamWConfig::default() };
    let ids = Tensor::from_slice(&[5i64, 9, 2, 7, 11, 4, 8, 0], &[2, 4], Device::Cpu).unwrap();
    let mask = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 1, 1, 0], &[2, 4], Device::Cpu).unwrap();

    // Qwen2: the norms frozen, everything else one step from the model's own gradients.
    let mut model = Qwen2Model::load(&dir("qwen2/gqa_untied"), DType::F32, Device::Cpu).unwrap();
    let pass = model.forward(&ids, &mask, ForwardOptions::default()).unwrap();
    let loss = model.causal_lm_loss(&pass, &ids, &FusedLinearConfig::default()).unwrap();
    let grads = model.backward(pass, loss.grads).unwrap();
    let before: Vec<(String, Vec<f64>)> = model.weights.named().into_iter().map(|(n, t)| (n, values(t))).collect();
    let groups = vec![ParamGroup::new("norms", &["norm"]).frozen()];
    let mut opt = AdamW::new(&model.weights.named(), groups, config.clone()).unwrap();
    opt.step(&mut model.weights.named_mut(), &grads.weights.named()).unwrap();
    let named_grads = grads.weights.named();
    for ((name, p0), ((after_name, p1), (grad_name, g))) in
        before.iter().zip(model.weights.named().into_iter().zip(&named_grads))
    {
        assert_eq!((name, name), (&after_name, grad_name), "named, named_mut and the gradients' names agree");
        let p1 = values(p1);
        if name.contains("norm") {
            assert_eq!(&p1, p0, "{name}: frozen");
        } else {
            assert_params_close(name, &p1, &first_step(p0, &values(g), &config, config.lr, config.weight_decay));
        }
    }

    // LLaVA-OneVision (text-only batch): parameters and gradients listed under the same names, in the same order.
    let mut llava = LlavaOnevisionModel::load(&dir("llava/hf"), DType::F32, Device::Cpu).unwrap();
    let batch = LlavaBatch { ids: &ids, mask: &mask, media: &[] };
    let pass = llava.forward(&batch, ForwardOptions::default()).unwrap();
    let mut grads = llava.zero_gradients().unwrap();
    let loss = llava.causal_lm_loss_into(&pass, &FusedLinearConfig::default(), &mut grads).unwrap();
    llava.backward_into(pass, loss.grads, &mut grads).unwrap();
    let names: Vec<String> = llava.named_parameters().into_iter().map(|(n, _)| n).collect();
    let grad_names: Vec<String> = llava.named_gradients(&grads).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, grad_names);
    let before: Vec<Vec<f64>> = llava.named_parameters().into_iter().map(|(_, t)| values(t)).collect();
    let groups = vec![ParamGroup::new("vision", &["vision_tower."]).frozen()];
    let mut opt = AdamW::new(&llava.named_parameters(), groups, config.clone()).unwrap();
    let named_grads = llava.named_gradients(&grads);
    opt.step(&mut llava.named_parameters_mut(), &named_grads).unwrap();
    for (((name, p1), p0), (_, g)) in llava.named_parameters().into_iter().zip(&before).zip(&named_grads) {
        let p1 = values(p1);
        if name.contains("vision_tower.") {
            assert_eq!(&p1, p0, "{name}: frozen");
        } else {
            assert_params_close(&name, &p1, &first_step(p0, &values(g), &config, config.lr, config.weight_decay));
        }
    }
}

#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
#[test]
fn cuda_matches_cpu() {
    const GPU: Device = Device::Cuda(0);
    let mut rng = seeded();
    let case = random_case(&mut rng, cosine_clip_config());
    let want = reference(&case);
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let mut c = case.clone();
        c.initial = c.initial.iter().map(|x| rounded(x, dtype)).collect();
        c.grads = c.grads.iter().map(|s| s.iter().map(|g| rounded(g, dtype)).collect()).collect();
        let (cpu, gpu) = (run(&c, dtype, Device::Cpu), run(&c, dtype, GPU));
        let (cpu_m, gpu_m) = (values(cpu.opt.state().exp_avg), values(gpu.opt.state().exp_avg));
        assert_close(&format!("{dtype} exp_avg"), &gpu_m, &cpu_m, 1e-5, 1e-6);
        for (k, name) in c.names.iter().enumerate() {
            let (g, cpu_p) = (values(&gpu.params[k]), values(&cpu.params[k]));
            if dtype == DType::F32 {
                assert_params_close(&format!("cuda {name}"), &g, &want.params[k]);
            }
            let ulp = if dtype == DType::F32 { 1e-6 } else { 1e-2 };
            assert_close(&format!("cuda {dtype} {name} vs cpu"), &g, &cpu_p, ulp, 1.0);
        }
        let norms = |r: &Run| r.reports.iter().filter_map(|s| s.grad_norm).collect::<Vec<_>>();
        assert_close(&format!("{dtype} norms"), &norms(&gpu), &norms(&cpu), 1e-5, 0.0);
    }
    // Accumulation on the device, and a parameter on the wrong device.
    let params = [tensor(&case.initial[4], &case.shapes[4], DType::F32, GPU)];
    let names = [case.names[4].clone()];
    let named: Vec<(String, &Tensor)> = names.iter().cloned().zip(params.iter()).collect();
    let mut opt = AdamW::new(&named, vec![], case.config.clone()).unwrap();
    let g_cpu = tensor(&case.grads[0][4], &case.shapes[4], DType::F32, Device::Cpu);
    expect_err(opt.accumulate(&[(names[0].clone(), &g_cpu)], 1.0), "is on cpu, the parameters on cuda:0");
    let g = tensor(&case.grads[0][4], &case.shapes[4], DType::BF16, GPU);
    opt.accumulate(&[(names[0].clone(), &g)], 1.0).unwrap();
    opt.accumulate(&[(names[0].clone(), &g)], 3.0).unwrap();
    let mut p = params;
    let mut named: Vec<(String, &mut Tensor)> = names.iter().cloned().zip(p.iter_mut()).collect();
    let report = opt.step_accumulated(&mut named).unwrap();
    let want_norm = rounded(&case.grads[0][4], DType::BF16).iter().map(|g| g * g).sum::<f64>().sqrt();
    assert!((report.grad_norm.unwrap() - want_norm).abs() <= 1e-5 * want_norm);
    // The last micro-batch stepped directly, as on the CPU.
    let mut short = case.clone();
    short.grads.truncate(4);
    for dtype in [DType::F32, DType::BF16] {
        last_micro_batch_equals_accumulating_it(&short, dtype, GPU, &mut rng);
    }
}
