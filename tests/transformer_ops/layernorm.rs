use unireward::ops::layernorm::{
    layernorm, layernorm_backward, layernorm_backward_into, layernorm_into, LayerNormConfig, LayerNormStats,
};
use unireward::{DType, Device, Error};

use crate::common::*;

/// f64 reference over rows of h: y, and the loss Σ g·y's gradients (d_x, d_w, d_b) in closed form.
fn reference(x: &[f64], w: &[f64], b: &[f64], g: &[f64], eps: f64) -> [Vec<f64>; 4] {
    let h = w.len();
    let (mut y, mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; x.len()], vec![0.0; h], vec![0.0; h]);
    for (row, xr) in x.chunks(h).enumerate() {
        let mean = xr.iter().sum::<f64>() / h as f64;
        let var = xr.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / h as f64;
        let r = 1.0 / (var + eps).sqrt();
        let gr = &g[row * h..(row + 1) * h];
        let xhat: Vec<f64> = xr.iter().map(|v| (v - mean) * r).collect();
        let a = (0..h).map(|j| gr[j] * w[j]).sum::<f64>() / h as f64;
        let c = (0..h).map(|j| gr[j] * w[j] * xhat[j]).sum::<f64>() / h as f64;
        for j in 0..h {
            y[row * h + j] = xhat[j] * w[j] + b[j];
            dx[row * h + j] = r * (gr[j] * w[j] - a - xhat[j] * c);
            dw[j] += gr[j] * xhat[j];
            db[j] += gr[j];
        }
    }
    [y, dx, dw, db]
}

fn weight(rng: &mut rand::rngs::StdRng, h: usize) -> Vec<f64> {
    normal(rng, h).iter().map(|v| 1.0 + 0.2 * v).collect()
}

const NAMES: [&str; 4] = ["y", "grad_x", "grad_weight", "grad_bias"];

/// The largest term of any row's input gradient, |w·g|·rstd: what its rounding error scales with. A short row whose
/// gradient cancels (two close values of three make a small deviation and a large rstd) leaves a result far below
/// its terms, and is judged on them.
fn grad_x_term_scale(x: &[f64], w: &[f64], g: &[f64], eps: f64) -> f64 {
    let h = w.len();
    x.chunks(h)
        .zip(g.chunks(h))
        .map(|(xr, gr)| {
            let mean = xr.iter().sum::<f64>() / h as f64;
            let var = xr.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / h as f64;
            gr.iter().zip(w).map(|(g, w)| (g * w).abs()).fold(0.0, f64::max) / (var + eps).sqrt()
        })
        .fold(0.0, f64::max)
}

/// Forward and backward on `device`: y, the saved mean and rstd, and the three gradients.
fn run(x: &[f64], w: &[f64], b: &[f64], g: &[f64], shape: &[usize], dtype: DType, device: Device) -> [Vec<f64>; 6] {
    let h = w.len();
    let (xt, wt, bt) =
        (tensor(x, shape, dtype, device), tensor(w, &[h], dtype, device), tensor(b, &[h], dtype, device));
    let out = layernorm(&xt, &wt, &bt, &LayerNormConfig { eps: 1e-6 }).unwrap();
    assert_eq!(
        (out.y.dtype(), out.stats.rstd.dtype(), out.stats.mean.shape()),
        (dtype, DType::F32, &[x.len() / h][..])
    );
    let grads = layernorm_backward(&tensor(g, shape, dtype, device), &xt, &wt, &out.stats).unwrap();
    assert_eq!((grads.grad_bias.dtype(), grads.grad_bias.shape()), (dtype, &[h][..]));
    [&out.y, &grads.grad_x, &grads.grad_weight, &grads.grad_bias, &out.stats.mean, &out.stats.rstd].map(values)
}

#[test]
fn matches_pytorch_fixture() {
    let f = Fixture::load("layernorm");
    let shape = f.usizes("shape");
    let h = *shape.last().unwrap();
    let cfg = LayerNormConfig { eps: f.f64("eps") as f32 };
    let t = |key: &str, shape: &[usize]| tensor(&f.f64s(key), shape, DType::F32, Device::Cpu);
    let (x, w, b) = (t("x", &shape), t("weight", &[h]), t("bias", &[h]));
    let out = layernorm(&x, &w, &b, &cfg).unwrap();
    assert_close("y", &values(&out.y), &f.f64s("y"), 1e-5);
    let grads = layernorm_backward(&t("grad_y", &shape), &x, &w, &out.stats).unwrap();
    assert_close("grad_x", &values(&grads.grad_x), &f.f64s("grad_x"), 1e-5);
    assert_close("grad_weight", &values(&grads.grad_weight), &f.f64s("grad_weight"), 1e-5);
    assert_close("grad_bias", &values(&grads.grad_bias), &f.f64s("grad_bias"), 1e-5);
}

#[test]
fn random_awkward_shapes_every_dtype_and_finite_differences() {
    let mut rng = seed();
    // H = 1 is left out: there x − mean = 0 and y = b whatever x. Rows with a large common offset check that the
    // variance is taken about the mean: f32 keeps ~1e-5 of unit deviations on an offset of 300 (hence the looser
    // tolerance there), E[x²] − mean² would keep ~1e-2.
    for (rows, h, offset) in [(37, 1152, 0.0), (1, 3, 0.0), (300, 33, 0.0), (2, 1025, 0.0), (7, 72, 300.0)] {
        let x: Vec<f64> = normal(&mut rng, rows * h).iter().map(|v| v + offset).collect();
        let (w, b, g) = (weight(&mut rng, h), normal(&mut rng, h), normal(&mut rng, rows * h));
        let eps = 1e-6;
        for dtype in FLOATS {
            if offset != 0.0 && dtype != DType::F32 {
                continue; // bf16/f16 cannot hold unit-size deviations on an offset of 300
            }
            let r = |v: &[f64]| rounded(v, dtype);
            let want = reference(&r(&x), &r(&w), &r(&b), &r(&g), eps);
            let got = run(&x, &w, &b, &g, &[rows, h], dtype, Device::Cpu);
            let grad_x_scale = grad_x_term_scale(&r(&x), &r(&w), &r(&g), eps);
            for (name, (got, want)) in NAMES.iter().zip(got.iter().zip(&want)) {
                let rtol = if offset == 0.0 { tol(dtype) } else { 1e-4 };
                let scale = if *name == "grad_x" { grad_x_scale } else { 0.0 };
                assert_close_on_scale(&format!("{name} {dtype} {rows}x{h}"), got, want, rtol, scale);
            }
            if dtype == DType::F32 && offset == 0.0 {
                let loss_x = |xp: &[f64]| dot(&reference(xp, &w, &b, &g, eps)[0], &g);
                assert_fd("grad_x", &got[1], &finite_differences(&x, 30, loss_x));
                let loss_w = |wp: &[f64]| dot(&reference(&x, wp, &b, &g, eps)[0], &g);
                assert_fd("grad_weight", &got[2], &finite_differences(&w, 30, loss_w));
                let loss_b = |bp: &[f64]| dot(&reference(&x, &w, bp, &g, eps)[0], &g);
                assert_fd("grad_bias", &got[3], &finite_differences(&b, 30, loss_b));
            }
        }
    }
}

#[test]
fn nan_in_a_row_stays_in_that_row() {
    let (rows, h) = (3, 8);
    let mut x: Vec<f64> = (0..rows * h).map(|i| (i % 5) as f64).collect();
    x[h + 2] = f64::NAN;
    let (w, b, g) = (vec![1.0; h], vec![0.5; h], vec![1.0; rows * h]);
    let [y, dx, ..] = run(&x, &w, &b, &g, &[rows, h], DType::F32, Device::Cpu);
    for (name, v) in [("y", &y), ("grad_x", &dx)] {
        assert!(v[h..2 * h].iter().all(|v| v.is_nan()), "{name}: the NaN row must be NaN: {:?}", &v[h..2 * h]);
        assert!(v[..h].iter().chain(&v[2 * h..]).all(|v| v.is_finite()), "{name}: other rows stay finite");
    }
}

#[test]
fn bad_input() {
    let cpu = Device::Cpu;
    let t = |shape: &[usize]| tensor(&vec![1.0; shape.iter().product()], shape, DType::F32, cpu);
    let (x, w, cfg) = (t(&[2, 3]), t(&[3]), LayerNormConfig::default());
    let e = layernorm(&x, &t(&[2]), &w, &cfg).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`weight` has shape [2], expected [3]")), "{e}");
    let e = layernorm(&x, &w, &t(&[4]), &cfg).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`bias` has shape [4], expected [3]")), "{e}");
    let e = layernorm(&x, &w, &ids(&[1, 2, 3], &[3], DType::I32, cpu), &cfg).unwrap_err();
    assert!(matches!(e, Error::DType { arg: "bias", .. }), "{e}");
    let e = layernorm(&x, &w, &w, &LayerNormConfig { eps: f32::INFINITY }).unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("`eps` must be finite")), "{e}");
    let e = layernorm(&x, &w, &w, &LayerNormConfig { eps: -1e-6 }).unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("non-negative")), "{e}");
    let e = layernorm(&ids(&[1, 2, 3], &[3], DType::I64, cpu), &w, &w, &cfg).unwrap_err();
    assert!(matches!(e, Error::DType { arg: "x", .. }), "{e}");
    let e = layernorm(&t(&[2, 0]), &t(&[0]), &t(&[0]), &cfg).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`x (H)` is empty")), "{e}");
    let out = layernorm(&x, &w, &w, &cfg).unwrap();
    let e = layernorm_backward(&t(&[3, 2]), &x, &w, &out.stats).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`grad_y` has shape [3, 2], expected [2, 3]")), "{e}");
    let bad = LayerNormStats { mean: t(&[3]), rstd: out.stats.rstd.try_clone().unwrap() };
    let e = layernorm_backward(&x, &x, &w, &bad).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`stats.mean` has shape [3], expected [2]")), "{e}");
    let bad =
        LayerNormStats { mean: out.stats.mean.try_clone().unwrap(), rstd: tensor(&[1.0; 2], &[2], DType::F16, cpu) };
    let e = layernorm_backward(&x, &x, &w, &bad).unwrap_err();
    assert!(matches!(e, Error::DType { arg: "stats.rstd", .. }), "{e}");
}

/// The `_into` variants over NaN-filled outputs give the allocating versions' bits, in every dtype on `device`;
/// on CUDA also close to the CPU.
fn into_equals_allocating(device: Device) {
    let mut rng = seed();
    let (rows, h, cfg) = (70, 1031, LayerNormConfig::default());
    let (x, w, b, g) =
        (normal(&mut rng, rows * h), weight(&mut rng, h), normal(&mut rng, h), normal(&mut rng, rows * h));
    for dtype in FLOATS {
        let (xt, wt, bt, gt) = (
            tensor(&x, &[rows, h], dtype, device),
            tensor(&w, &[h], dtype, device),
            tensor(&b, &[h], dtype, device),
            tensor(&g, &[rows, h], dtype, device),
        );
        let stat = || garbage(&[rows], DType::F32, device);
        let (mut y, mut stats) = (garbage(&[rows, h], dtype, device), LayerNormStats { mean: stat(), rstd: stat() });
        layernorm_into(&xt, &wt, &bt, &cfg, &mut y, &mut stats).unwrap();
        let want = layernorm(&xt, &wt, &bt, &cfg).unwrap();
        assert_same("y", &y, &want.y);
        assert_same("mean", &stats.mean, &want.stats.mean);
        assert_same("rstd", &stats.rstd, &want.stats.rstd);
        let param = || garbage(&[h], dtype, device);
        let (mut dx, mut dw, mut db) = (garbage(&[rows, h], dtype, device), param(), param());
        layernorm_backward_into(&gt, &xt, &wt, &stats, &mut dx, &mut dw, &mut db).unwrap();
        let want = layernorm_backward(&gt, &xt, &wt, &stats).unwrap();
        assert_same("grad_x", &dx, &want.grad_x);
        assert_same("grad_weight", &dw, &want.grad_weight);
        assert_same("grad_bias", &db, &want.grad_bias);
        if device != Device::Cpu {
            let cpu = run(&x, &w, &b, &g, &[rows, h], dtype, Device::Cpu);
            let got = [&y, &dx, &dw, &db, &stats.mean, &stats.rstd].map(values);
            for (name, (c, g)) in NAMES.iter().chain(&["mean", "rstd"]).zip(cpu.iter().zip(&got)) {
                assert_close(&format!("{name} vs cpu"), g, c, tol(dtype));
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
    let (cpu, cfg) = (Device::Cpu, LayerNormConfig::default());
    let t = |shape: &[usize]| tensor(&vec![1.0; shape.iter().product()], shape, DType::F32, cpu);
    let (x, w) = (t(&[2, 3]), t(&[3]));
    let stats = |dtype| LayerNormStats { mean: garbage(&[2], dtype, cpu), rstd: garbage(&[2], dtype, cpu) };
    let mut y = garbage(&[2, 3], DType::F32, cpu);
    let e =
        layernorm_into(&x, &w, &w, &cfg, &mut garbage(&[3, 2], DType::F32, cpu), &mut stats(DType::F32)).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`y` has shape [3, 2], expected [2, 3]")), "{e}");
    let e = layernorm_into(&x, &w, &w, &cfg, &mut y, &mut stats(DType::BF16)).unwrap_err();
    assert!(matches!(e, Error::DType { arg: "stats.mean", .. }), "{e}");
    let mut ok = stats(DType::F32);
    layernorm_into(&x, &w, &w, &cfg, &mut y, &mut ok).unwrap();
    let (mut dx, mut dw, mut db) =
        (garbage(&[2, 3], DType::F32, cpu), garbage(&[3], DType::F32, cpu), garbage(&[3], DType::F32, cpu));
    let e =
        layernorm_backward_into(&x, &x, &w, &ok, &mut garbage(&[6], DType::F32, cpu), &mut dw, &mut db).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`grad_x` has shape [6]")), "{e}");
    let e =
        layernorm_backward_into(&x, &x, &w, &ok, &mut dx, &mut dw, &mut garbage(&[3], DType::F16, cpu)).unwrap_err();
    assert!(matches!(e, Error::DType { arg: "grad_bias", .. }), "{e}");
    let e =
        layernorm_backward_into(&x, &x, &w, &ok, &mut dx, &mut garbage(&[4], DType::F32, cpu), &mut db).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`grad_weight` has shape [4], expected [3]")), "{e}");
}

#[test]
#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
fn cuda_into_overwrites_garbage_and_refuses_bad_device_or_dtype() {
    into_equals_allocating(Device::Cuda(0));
    let gpu = Device::Cuda(0);
    let t = |shape: &[usize], dtype| tensor(&vec![1.0; shape.iter().product()], shape, dtype, gpu);
    let (x, w) = (t(&[2, 3], DType::F32), t(&[3], DType::F32));
    let cfg = LayerNormConfig::default();
    let mut y = garbage(&[2, 3], DType::F32, gpu);
    let mut stats =
        LayerNormStats { mean: garbage(&[2], DType::F32, gpu), rstd: garbage(&[2], DType::F32, Device::Cpu) };
    let e = layernorm_into(&x, &w, &w, &cfg, &mut y, &mut stats).unwrap_err();
    assert!(matches!(&e, Error::Device(m) if m.contains("output `stats.rstd` is on cpu")), "{e}");
    let e = layernorm(&x, &w, &t(&[3], DType::BF16), &cfg).unwrap_err();
    assert!(matches!(e, Error::DType { arg: "bias", .. }), "{e}");
    let e = layernorm(&x, &tensor(&[1.0; 3], &[3], DType::F32, Device::Cpu), &w, &cfg).unwrap_err();
    assert!(matches!(&e, Error::Device(m) if m.contains("`weight` is on cpu")), "{e}");
}

#[test]
#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
fn cuda_matches_cpu() {
    let mut rng = seed();
    for (rows, h) in [(729, 1152), (1, 1), (300, 33), (70, 4097)] {
        let (x, w, b, g) =
            (normal(&mut rng, rows * h), weight(&mut rng, h), normal(&mut rng, h), normal(&mut rng, rows * h));
        for dtype in FLOATS {
            let cpu = run(&x, &w, &b, &g, &[rows, h], dtype, Device::Cpu);
            let cuda = run(&x, &w, &b, &g, &[rows, h], dtype, Device::Cuda(0));
            assert_eq!(cuda, run(&x, &w, &b, &g, &[rows, h], dtype, Device::Cuda(0)), "{rows}x{h} not deterministic");
            // grad_x = rstd·(g·w − mean(g·w) − x̂·mean(g·w·x̂)) cancels (to exactly 0 at h = 1, where rstd is
            // 1/√eps): judged on its terms' scale.
            let max = |v: &[f64]| v.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            let terms = max(&cpu[5]) * max(&g) * max(&w);
            for (name, (c, got)) in NAMES.iter().chain(&["mean", "rstd"]).zip(cpu.iter().zip(&cuda)) {
                let scale = if *name == "grad_x" { terms } else { 0.0 };
                assert_close_on_scale(&format!("{name} {dtype} {rows}x{h}"), got, c, tol(dtype), scale);
            }
        }
    }
}
