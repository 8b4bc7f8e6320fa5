//! Diffusion-DPO: fixtures (β up to 5000), finite differences, a plain f64 loop on a large D, bf16/f16, bad input,
//! CUDA against CPU.

use rand::Rng;
use unireward::ops::preference::{diffusion_dpo_loss, DiffusionDpoConfig, DiffusionDpoInputs, DiffusionDpoOutput};
use unireward::{DType, Device, Error, Tensor};

use crate::util::*;

/// Model winner, model loser, reference winner, reference loser, target winner, target loser.
type Six = [Vec<f32>; 6];

fn run(v: &Six, shape: &[usize], beta: f32, dtype: DType, device: Device) -> DiffusionDpoOutput {
    let t: Vec<Tensor> = v.iter().map(|x| tensor(x, shape, dtype, device)).collect();
    let inputs = DiffusionDpoInputs {
        model_winner: &t[0],
        model_loser: &t[1],
        ref_winner: &t[2],
        ref_loser: &t[3],
        target_winner: &t[4],
        target_loser: &t[5],
    };
    diffusion_dpo_loss(&inputs, &DiffusionDpoConfig { beta, grad_output: 1.0 }).expect("diffusion-dpo")
}

#[test]
fn matches_diffusers_reference() {
    let fixture = fixture("diffusion_dpo.json");
    for case in fixture["cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        let shape: Vec<usize> = i64s(&case["shape"]).iter().map(|&v| v as usize).collect();
        let i = &case["inputs"];
        let keys = ["model_winner", "model_loser", "ref_winner", "ref_loser", "target_winner", "target_loser"];
        let six: Six = keys.map(|k| f32s(&i[k]));
        let beta = case["beta"].as_f64().expect("beta") as f32;
        let e = &case["expected"];
        let out = run(&six, &shape, beta, DType::F32, Device::Cpu);
        assert_close(&format!("{name} loss"), out.loss as f64, e["loss"].as_f64().expect("loss"), 1e-5, 1e-7);
        assert_all_close(
            &format!("{name} grad w"),
            &values(&out.grad_model_winner),
            &f64s(&e["grad_model_winner"]),
            1e-5,
        );
        assert_all_close(
            &format!("{name} grad l"),
            &values(&out.grad_model_loser),
            &f64s(&e["grad_model_loser"]),
            1e-5,
        );
        let m = out.metrics;
        for (key, got) in [
            ("implicit_accuracy", m.implicit_accuracy),
            ("model_mse_winner", m.model_mse_winner),
            ("model_mse_loser", m.model_mse_loser),
            ("ref_mse_winner", m.ref_mse_winner),
            ("ref_mse_loser", m.ref_mse_loser),
        ] {
            assert_close(&format!("{name} {key}"), got as f64, e[key].as_f64().expect(key), 1e-5, 1e-7);
        }
        assert_eq!(out.grad_model_winner.shape(), shape.as_slice());
    }
}

fn random_six(rng: &mut impl Rng, n: usize, closeness: f32) -> Six {
    let mut noise = |scale: f32| -> Vec<f32> { (0..n).map(|_| rng.gen_range(-scale..scale)).collect() };
    let (tw, tl) = (noise(1.0), noise(1.0));
    let rw: Vec<f32> = tw.iter().zip(noise(0.5)).map(|(t, e)| t + e).collect();
    let rl: Vec<f32> = tl.iter().zip(noise(0.5)).map(|(t, e)| t + e).collect();
    let mw: Vec<f32> = rw.iter().zip(noise(closeness)).map(|(r, e)| r + e).collect();
    let ml: Vec<f32> = rl.iter().zip(noise(closeness)).map(|(r, e)| r + e).collect();
    [mw, ml, rw, rl, tw, tl]
}

/// A plain f64 loop on B = 3, D = 3·64·64 + 5 at β = 5000: loss and a few gradient entries.
#[test]
fn large_width_at_beta_5000_matches_a_plain_f64_loop() {
    let mut rng = rng("diffusion large_width_at_beta_5000_matches_a_plain_f64_loop");
    let (b, d) = (3usize, 3 * 64 * 64 + 5);
    let six = random_six(&mut rng, b * d, 2e-3);
    let beta = 5000.0f64;
    let out = run(&six, &[b, d], beta as f32, DType::F32, Device::Cpu);
    let mse = |s: usize, t: usize, i: usize| -> f64 {
        (0..d).map(|j| (six[s][i * d + j] as f64 - six[t][i * d + j] as f64).powi(2)).sum::<f64>() / d as f64
    };
    let mut loss = 0.0;
    let grad = values(&out.grad_model_winner);
    for i in 0..b {
        let inside = -0.5 * beta * ((mse(0, 4, i) - mse(1, 5, i)) - (mse(2, 4, i) - mse(3, 5, i)));
        loss += -(inside.min(0.0) - (-inside.abs()).exp().ln_1p());
        let coef = beta / (1.0 + inside.exp()) / (b * d) as f64;
        for j in [0, 1, d / 2, d - 1] {
            let want = coef * (six[0][i * d + j] as f64 - six[4][i * d + j] as f64);
            assert_close(&format!("grad w [{i}, {j}]"), grad[i * d + j] as f64, want, 1e-5, 1e-12);
        }
    }
    assert_close("loss", out.loss as f64, loss / b as f64, 1e-5, 0.0);
}

#[test]
fn gradients_match_finite_differences() {
    let mut rng = rng("diffusion gradients_match_finite_differences");
    let (b, d) = (2usize, 5usize);
    let six = random_six(&mut rng, b * d, 0.05);
    let beta = 20.0;
    let out = run(&six, &[b, d], beta, DType::F32, Device::Cpu);
    let h = 1.0f32 / 256.0;
    for (side, grad) in [(0, values(&out.grad_model_winner)), (1, values(&out.grad_model_loser))] {
        for i in 0..b * d {
            let at = |delta: f32| {
                let mut s = six.clone();
                s[side][i] += delta;
                run(&s, &[b, d], beta, DType::F32, Device::Cpu).loss as f64
            };
            let fd = (at(h) - at(-h)) / (2.0 * h as f64);
            assert_close(&format!("side {side} [{i}]"), grad[i] as f64, fd, 3e-3, 1e-4);
        }
    }
}

#[test]
fn half_precision_inputs_match_f32_on_the_same_values() {
    let mut rng = rng("diffusion half_precision_inputs_match_f32_on_the_same_values");
    let (b, d) = (4usize, 4 * 16 * 16);
    let six = random_six(&mut rng, b * d, 0.05);
    for dtype in [DType::BF16, DType::F16] {
        let r: Six = six.clone().map(|v| rounded(&v, dtype));
        let want = run(&r, &[b, 4, 16, 16], 5000.0, DType::F32, Device::Cpu);
        let got = run(&r, &[b, 4, 16, 16], 5000.0, dtype, Device::Cpu);
        assert_eq!(got.loss, want.loss, "{dtype}: same values, same f64 sums");
        assert_eq!(got.grad_model_loser.dtype(), dtype);
        let w: Vec<f64> = values(&want.grad_model_loser).iter().map(|&v| v as f64).collect();
        assert_all_close(&format!("{dtype} grad"), &values(&got.grad_model_loser), &w, 1e-2);
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let cpu = Device::Cpu;
    let ok = tensor(&[0.5; 6], &[2, 3], DType::F32, cpu);
    let other = tensor(&[0.5; 6], &[3, 2], DType::F32, cpu);
    let half = tensor(&[0.5; 6], &[2, 3], DType::BF16, cpu);
    let ints = Tensor::from_slice(&[1i32; 6], &[2, 3], cpu).expect("ints");
    let empty = tensor(&[], &[0, 3], DType::F32, cpu);
    let scalar = tensor(&[1.0], &[], DType::F32, cpu);
    let with = |mw: &Tensor, tl: &Tensor, beta: f32| -> Error {
        let inputs = DiffusionDpoInputs {
            model_winner: mw,
            model_loser: &ok,
            ref_winner: &ok,
            ref_loser: &ok,
            target_winner: &ok,
            target_loser: tl,
        };
        diffusion_dpo_loss(&inputs, &DiffusionDpoConfig { beta, grad_output: 1.0 }).expect_err("bad input")
    };
    let e = with(&ok, &other, 1.0);
    assert!(
        matches!(e, Error::Shape(_)) && e.to_string().contains("`target_loser` has shape [3, 2], expected [2, 3]"),
        "{e}"
    );
    let e = with(&ok, &half, 1.0);
    assert!(e.to_string().contains("`target_loser` has dtype bf16, expected f32"), "{e}");
    let e = with(&ints, &ok, 1.0);
    assert!(matches!(e, Error::DType { .. }), "{e}");
    let e = with(&empty, &ok, 1.0);
    assert!(e.to_string().contains("`model_winner` is empty"), "{e}");
    let e = with(&scalar, &ok, 1.0);
    assert!(e.to_string().contains("[B, D...]"), "{e}");
    for beta in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let e = with(&ok, &ok, beta);
        assert!(e.to_string().contains("`beta` must be"), "{e}");
    }
    let nan = tensor(&[f32::NAN; 6], &[2, 3], DType::F32, cpu);
    let e = with(&nan, &ok, 1.0);
    assert!(e.to_string().contains("NaN or infinity"), "{e}");
}

#[test]
#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
fn cuda_matches_cpu() {
    let gpu = cuda();
    let mut rng = rng("diffusion cuda_matches_cpu");
    for (shape, closeness) in [(vec![1usize, 7], 0.05f32), (vec![8, 4, 64, 64], 2e-3), (vec![3, 3, 4097], 0.3)] {
        let n: usize = shape.iter().product();
        let six = random_six(&mut rng, n, closeness);
        for dtype in FLOAT_DTYPES {
            let six: Six = six.clone().map(|v| rounded(&v, dtype));
            let want = run(&six, &shape, 5000.0, dtype, Device::Cpu);
            let got = run(&six, &shape, 5000.0, dtype, gpu);
            let what = format!("{dtype} {shape:?}");
            assert_close(&format!("{what} loss"), got.loss as f64, want.loss as f64, 1e-5, 1e-7);
            assert_eq!(got.metrics.implicit_accuracy, want.metrics.implicit_accuracy, "{what}");
            let rtol = if dtype == DType::F32 { 1e-5 } else { 1e-2 };
            for (g, w) in
                [(&got.grad_model_winner, &want.grad_model_winner), (&got.grad_model_loser, &want.grad_model_loser)]
            {
                let w: Vec<f64> = values(w).iter().map(|&v| v as f64).collect();
                assert_all_close(&format!("{what} grad"), &values(g), &w, rtol);
            }
        }
    }
}
