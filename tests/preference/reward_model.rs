//! Reward-model losses: fixtures, finite differences, bf16/f16, bad input, CUDA against CPU.

use rand::Rng;
use serde_json::Value;
use unireward::ops::preference::{
    bradley_terry_loss, kwise_loss, BradleyTerryConfig, BradleyTerryOutput, KwiseConfig, KwiseMethod, KwiseOutput,
};
use unireward::{DType, Device, Error, Tensor};

use crate::util::*;

fn bt(
    rc: &[f32],
    rr: &[f32],
    margin: Option<&[f32]>,
    coef: Option<f32>,
    dtype: DType,
    device: Device,
) -> BradleyTerryOutput {
    let n = rc.len();
    let t = |v: &[f32]| tensor(v, &[n], dtype, device);
    let (c, r, m) = (t(rc), t(rr), margin.map(t));
    let cfg = BradleyTerryConfig { center_rewards_coefficient: coef, ..Default::default() };
    bradley_terry_loss(&c, &r, m.as_ref(), &cfg).expect("bradley-terry")
}

fn kw(
    rewards: &[f32],
    groups: usize,
    k: usize,
    order: Option<&[i64]>,
    method: KwiseMethod,
    dtype: DType,
    device: Device,
) -> KwiseOutput {
    let r = tensor(rewards, &[groups, k], dtype, device);
    let o = order.map(|o| Tensor::from_slice(o, &[groups, k], device).expect("order"));
    kwise_loss(&r, o.as_ref(), &KwiseConfig { method, grad_output: 1.0 }).expect("k-wise")
}

fn method_of(case: &Value) -> KwiseMethod {
    match case["method"].as_str().expect("method") {
        "all_pairs" => KwiseMethod::AllPairs,
        _ => KwiseMethod::PlackettLuce,
    }
}

#[test]
fn bradley_terry_matches_trl_reference() {
    let fixture = fixture("reward_model.json");
    for case in fixture["bradley_terry"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        let i = &case["inputs"];
        let margin = (!i["margin"].is_null()).then(|| f32s(&i["margin"]));
        let coef = case["center_rewards_coefficient"].as_f64().map(|v| v as f32);
        let e = &case["expected"];
        let (rc, rr) = (f32s(&i["rewards_chosen"]), f32s(&i["rewards_rejected"]));
        let out = bt(&rc, &rr, margin.as_deref(), coef, DType::F32, Device::Cpu);
        assert_close(&format!("{name} loss"), out.loss as f64, e["loss"].as_f64().expect("loss"), 1e-5, 1e-7);
        assert_all_close(&format!("{name} grad chosen"), &values(&out.grad_chosen), &f64s(&e["grad_chosen"]), 1e-5);
        assert_all_close(
            &format!("{name} grad rejected"),
            &values(&out.grad_rejected),
            &f64s(&e["grad_rejected"]),
            1e-5,
        );
        assert_close(
            &format!("{name} accuracy"),
            out.metrics.accuracy as f64,
            e["accuracy"].as_f64().expect("acc"),
            1e-6,
            0.0,
        );
        for dtype in [DType::BF16, DType::F16] {
            let (c16, r16) = (rounded(&rc, dtype), rounded(&rr, dtype));
            let m16 = margin.as_deref().map(|m| rounded(m, dtype));
            let want = bt(&c16, &r16, m16.as_deref(), coef, DType::F32, Device::Cpu);
            let got = bt(&c16, &r16, m16.as_deref(), coef, dtype, Device::Cpu);
            assert_eq!(got.loss, want.loss, "{name} {dtype}: same values, same f64 math");
            let w: Vec<f64> = values(&want.grad_chosen).iter().map(|&v| v as f64).collect();
            assert_all_close(&format!("{name} {dtype} grad"), &values(&got.grad_chosen), &w, 1e-2);
        }
    }
}

#[test]
fn kwise_matches_reference() {
    let fixture = fixture("reward_model.json");
    for case in fixture["kwise"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        let i = &case["inputs"];
        let (groups, k) = (i["groups"].as_u64().expect("g") as usize, i["k"].as_u64().expect("k") as usize);
        let order = (!i["order"].is_null()).then(|| i64s(&i["order"]));
        let e = &case["expected"];
        let out = kw(&f32s(&i["rewards"]), groups, k, order.as_deref(), method_of(case), DType::F32, Device::Cpu);
        assert_close(&format!("{name} loss"), out.loss as f64, e["loss"].as_f64().expect("loss"), 1e-5, 1e-7);
        assert_all_close(&format!("{name} grad"), &values(&out.grad), &f64s(&e["grad"]), 1e-5);
        assert_close(&format!("{name} accuracy"), out.accuracy as f64, e["accuracy"].as_f64().expect("acc"), 1e-6, 0.0);
    }
}

/// At K = 2 both K-wise losses are Bradley–Terry.
#[test]
fn kwise_at_k2_is_bradley_terry() {
    let mut rng = rng("kwise_at_k2_is_bradley_terry");
    let g = 33;
    let r: Vec<f32> = (0..2 * g).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
    let (rc, rr): (Vec<f32>, Vec<f32>) = r.chunks(2).map(|p| (p[0], p[1])).unzip();
    let want = bt(&rc, &rr, None, None, DType::F32, Device::Cpu);
    for method in [KwiseMethod::AllPairs, KwiseMethod::PlackettLuce] {
        let got = kw(&r, g, 2, None, method, DType::F32, Device::Cpu);
        assert_close(&format!("{method:?} loss"), got.loss as f64, want.loss as f64, 1e-6, 0.0);
        let grad = values(&got.grad);
        let (gc, gr) = (values(&want.grad_chosen), values(&want.grad_rejected));
        for p in 0..g {
            assert_close("grad chosen", grad[2 * p] as f64, gc[p] as f64, 1e-6, 1e-9);
            assert_close("grad rejected", grad[2 * p + 1] as f64, gr[p] as f64, 1e-6, 1e-9);
        }
        assert_eq!(got.accuracy, want.metrics.accuracy);
    }
}

#[test]
fn gradients_match_finite_differences() {
    let mut rng = rng("reward gradients_match_finite_differences");
    let h = 1.0f32 / 64.0;
    // Bradley–Terry with margin and centring.
    let n = 6;
    let rc: Vec<f32> = (0..n).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
    let rr: Vec<f32> = (0..n).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
    let m: Vec<f32> = (0..n).map(|_| rng.gen_range(0.0f32..1.0)).collect();
    // Each loss is rounded to f32, so a central difference is off by up to an ulp of the loss over 2h: at a loss of
    // 14 (K-wise, three groups of five) that is 3e-5, more than a small gradient's tolerance. Judged, as the DPO test
    // judges it, with that noise and on the scale of the largest gradient.
    let tolerance = |grad: &[f32], loss: f32| {
        let scale = grad.iter().fold(0.0f32, |m, g| m.max(g.abs())) as f64;
        2e-3 * scale + f32::EPSILON as f64 * loss.abs() as f64 / h as f64 + 2e-6
    };
    let out = bt(&rc, &rr, Some(&m), Some(0.05), DType::F32, Device::Cpu);
    for (side, grad) in [(0, values(&out.grad_chosen)), (1, values(&out.grad_rejected))] {
        let atol = tolerance(&grad, out.loss);
        for i in 0..n {
            let at = |d: f32| {
                let (mut c, mut r) = (rc.clone(), rr.clone());
                if side == 0 {
                    c[i] += d
                } else {
                    r[i] += d
                }
                bt(&c, &r, Some(&m), Some(0.05), DType::F32, Device::Cpu).loss as f64
            };
            let fd = (at(h) - at(-h)) / (2.0 * h as f64);
            assert_close(&format!("bt side {side} [{i}]"), grad[i] as f64, fd, 2e-3, atol);
        }
    }
    // K-wise, with a permutation.
    let (g, k) = (3, 5);
    let r: Vec<f32> = (0..g * k).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
    let order: Vec<i64> = [[4, 0, 3, 1, 2], [0, 1, 2, 3, 4], [2, 4, 1, 0, 3]].concat();
    for method in [KwiseMethod::AllPairs, KwiseMethod::PlackettLuce] {
        let out = kw(&r, g, k, Some(&order), method, DType::F32, Device::Cpu);
        let grad = values(&out.grad);
        let atol = tolerance(&grad, out.loss);
        for i in 0..g * k {
            let at = |d: f32| {
                let mut x = r.clone();
                x[i] += d;
                kw(&x, g, k, Some(&order), method, DType::F32, Device::Cpu).loss as f64
            };
            let fd = (at(h) - at(-h)) / (2.0 * h as f64);
            assert_close(&format!("{method:?} [{i}]"), grad[i] as f64, fd, 2e-3, atol);
        }
    }
}

fn expect_err(result: Result<impl std::fmt::Debug, Error>, needle: &str) -> Error {
    let err = result.expect_err(needle);
    assert!(err.to_string().contains(needle), "`{err}` should mention `{needle}`");
    err
}

#[test]
fn bad_input_is_a_clear_error() {
    let cpu = Device::Cpu;
    let v3 = tensor(&[1.0, 2.0, 3.0], &[3], DType::F32, cpu);
    let v2 = tensor(&[1.0, 2.0], &[2], DType::F32, cpu);
    let h3 = tensor(&[1.0, 2.0, 3.0], &[3], DType::F16, cpu);
    let ints = Tensor::from_slice(&[1i32, 2, 3], &[3], cpu).expect("ints");
    let empty = tensor(&[], &[0], DType::F32, cpu);
    let cfg = BradleyTerryConfig::default();
    let e = expect_err(bradley_terry_loss(&v3, &v2, None, &cfg), "`rewards_rejected` has shape [2], expected [3]");
    assert!(matches!(e, Error::Shape(_)));
    expect_err(bradley_terry_loss(&v3, &v3, Some(&v2), &cfg), "`margin` has shape [2]");
    expect_err(bradley_terry_loss(&v3, &h3, None, &cfg), "`rewards_rejected` has dtype f16, expected f32");
    let e = expect_err(bradley_terry_loss(&ints, &ints, None, &cfg), "`rewards_chosen` has dtype i32");
    assert!(matches!(e, Error::DType { .. }));
    expect_err(bradley_terry_loss(&empty, &empty, None, &cfg), "`rewards_chosen` is empty");
    let neg = BradleyTerryConfig { center_rewards_coefficient: Some(-1.0), ..cfg };
    expect_err(bradley_terry_loss(&v3, &v3, None, &neg), "`center_rewards_coefficient` must not be negative");
    let nan = BradleyTerryConfig { center_rewards_coefficient: Some(f32::NAN), ..cfg };
    expect_err(bradley_terry_loss(&v3, &v3, None, &nan), "`center_rewards_coefficient` must be finite");
    let inf = tensor(&[1.0, f32::INFINITY, 3.0], &[3], DType::F32, cpu);
    expect_err(bradley_terry_loss(&inf, &v3, None, &cfg), "contain NaN or infinity");

    let kcfg = KwiseConfig::default();
    let one = tensor(&[1.0, 2.0, 3.0], &[3, 1], DType::F32, cpu);
    let e = expect_err(kwise_loss(&one, None, &kcfg), "needs at least 2 candidates per group");
    assert!(matches!(e, Error::Shape(_)));
    expect_err(kwise_loss(&v3, None, &kcfg), "`rewards` must have rank 2");
    let none = tensor(&[], &[0, 3], DType::F32, cpu);
    expect_err(kwise_loss(&none, None, &kcfg), "`rewards` is empty");
    let r = tensor(&[1.0, 2.0, 3.0, 4.0], &[2, 2], DType::F32, cpu);
    let dup = Tensor::from_slice(&[0i64, 0, 1, 0], &[2, 2], cpu).expect("order");
    let e = expect_err(
        kwise_loss(&r, Some(&dup), &kcfg),
        "`order` row 0 is [0, 0]: each row must be a permutation of 0..2",
    );
    assert!(matches!(e, Error::InvalidArgument(_)));
    let out_of_range = Tensor::from_slice(&[0i32, 1, 2, 0], &[2, 2], cpu).expect("order");
    expect_err(kwise_loss(&r, Some(&out_of_range), &kcfg), "`order` row 1 is [2, 0]");
    let float_order = tensor(&[0.0, 1.0, 1.0, 0.0], &[2, 2], DType::F32, cpu);
    expect_err(kwise_loss(&r, Some(&float_order), &kcfg), "`order` has dtype f32, expected i32 or i64");
    let wrong_shape = Tensor::from_slice(&[0i64, 1], &[1, 2], cpu).expect("order");
    expect_err(kwise_loss(&r, Some(&wrong_shape), &kcfg), "`order` has shape [1, 2], expected [2, 2]");
}

#[test]
#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
fn cuda_matches_cpu() {
    let gpu = cuda();
    let mut rng = rng("reward cuda_matches_cpu");
    for n in [1usize, 300, 70_000] {
        let rc: Vec<f32> = (0..n).map(|_| rng.gen_range(-4.0f32..4.0)).collect();
        let rr: Vec<f32> = (0..n).map(|_| rng.gen_range(-4.0f32..4.0)).collect();
        let m: Vec<f32> = (0..n).map(|_| rng.gen_range(0.0f32..1.0)).collect();
        for dtype in FLOAT_DTYPES {
            for margin in [None, Some(m.as_slice())] {
                let want = bt(&rc, &rr, margin, Some(0.01), dtype, Device::Cpu);
                let got = bt(&rc, &rr, margin, Some(0.01), dtype, gpu);
                let what = format!("bt {dtype} n={n}");
                assert_close(&format!("{what} loss"), got.loss as f64, want.loss as f64, 1e-5, 1e-7);
                let w: Vec<f64> = values(&want.grad_chosen).iter().map(|&v| v as f64).collect();
                assert_all_close(
                    &format!("{what} grad"),
                    &values(&got.grad_chosen),
                    &w,
                    if dtype == DType::F32 { 1e-5 } else { 1e-2 },
                );
                assert_close(
                    &format!("{what} accuracy"),
                    got.metrics.accuracy as f64,
                    want.metrics.accuracy as f64,
                    1e-6,
                    0.0,
                );
            }
        }
    }
    for (g, k) in [(1usize, 2usize), (50, 7), (4096, 8)] {
        let r: Vec<f32> = (0..g * k).map(|_| rng.gen_range(-4.0f32..4.0)).collect();
        let order: Vec<i64> = (0..g).flat_map(|i| (0..k).map(move |j| ((j + i) % k) as i64)).collect();
        for dtype in FLOAT_DTYPES {
            for method in [KwiseMethod::AllPairs, KwiseMethod::PlackettLuce] {
                for o in [None, Some(order.as_slice())] {
                    let want = kw(&r, g, k, o, method, dtype, Device::Cpu);
                    let got = kw(&r, g, k, o, method, dtype, gpu);
                    let what = format!("{method:?} {dtype} G={g} K={k}");
                    assert_close(&format!("{what} loss"), got.loss as f64, want.loss as f64, 1e-5, 1e-7);
                    let w: Vec<f64> = values(&want.grad).iter().map(|&v| v as f64).collect();
                    assert_all_close(
                        &format!("{what} grad"),
                        &values(&got.grad),
                        &w,
                        if dtype == DType::F32 { 1e-5 } else { 1e-2 },
                    );
                    assert_close(&format!("{what} accuracy"), got.accuracy as f64, want.accuracy as f64, 1e-6, 0.0);
                }
            }
        }
    }
}
