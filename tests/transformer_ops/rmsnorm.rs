use unireward::ops::rmsnorm::{rmsnorm, rmsnorm_backward, rmsnorm_backward_into, rmsnorm_into, RmsNormConfig};
use unireward::{DType, Device, Error};

use crate::common::*;

/// f64 reference over rows of h: y, and the loss Σ g·y's gradients (d_x, d_w) in closed form.
fn reference(x: &[f64], w: &[f64], g: &[f64], eps: f64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let h = w.len();
    let (mut y, mut dx, mut dw) = (vec![0.0; x.len()], vec![0.0; x.len()], vec![0.0; h]);
    for (row, xr) in x.chunks(h).enumerate() {
        let r = 1.0 / (xr.iter().map(|v| v * v).sum::<f64>() / h as f64 + eps).sqrt();
        let gr = &g[row * h..(row + 1) * h];
        let c = r * r * r * (0..h).map(|j| gr[j] * w[j] * xr[j]).sum::<f64>() / h as f64;
        for j in 0..h {
            y[row * h + j] = xr[j] * r * w[j];
            dx[row * h + j] = r * gr[j] * w[j] - c * xr[j];
            dw[j] += gr[j] * xr[j] * r;
        }
    }
    (y, dx, dw)
}

fn weight(rng: &mut rand::rngs::StdRng, h: usize) -> Vec<f64> {
    normal(rng, h).iter().map(|v| 1.0 + 0.2 * v).collect()
}

#[test]
fn matches_pytorch_fixture() {
    let f = Fixture::load("rmsnorm");
    let shape = f.usizes("shape");
    let h = *shape.last().unwrap();
    let cfg = RmsNormConfig { eps: f.f64("eps") as f32 };
    let x = tensor(&f.f64s("x"), &shape, DType::F32, Device::Cpu);
    let w = tensor(&f.f64s("weight"), &[h], DType::F32, Device::Cpu);
    let out = rmsnorm(&x, &w, &cfg).unwrap();
    assert_close("y", &values(&out.y), &f.f64s("y"), 1e-5);
    let grads =
        rmsnorm_backward(&tensor(&f.f64s("grad_y"), &shape, DType::F32, Device::Cpu), &x, &w, &out.rstd).unwrap();
    assert_close("grad_x", &values(&grads.grad_x), &f.f64s("grad_x"), 1e-5);
    assert_close("grad_weight", &values(&grads.grad_weight), &f.f64s("grad_weight"), 1e-5);
}

#[test]
fn random_awkward_shapes_every_dtype_and_finite_differences() {
    let mut rng = seed();
    // H = 1 is left out: there y = sign(x)·w up to eps and d_x is pure cancellation.
    for (rows, h) in [(37, 896), (1, 3), (300, 33), (2, 1025)] {
        let (x, w, g) = (normal(&mut rng, rows * h), weight(&mut rng, h), normal(&mut rng, rows * h));
        let eps = 1e-6;
        for dtype in FLOATS {
            let (xr, wr, gr) = (rounded(&x, dtype), rounded(&w, dtype), rounded(&g, dtype));
            let (want_y, want_dx, want_dw) = reference(&xr, &wr, &gr, eps);
            let (xt, wt) = (tensor(&x, &[rows, h], dtype, Device::Cpu), tensor(&w, &[h], dtype, Device::Cpu));
            let out = rmsnorm(&xt, &wt, &RmsNormConfig { eps: eps as f32 }).unwrap();
            assert_eq!((out.y.dtype(), out.rstd.dtype(), out.rstd.shape()), (dtype, DType::F32, &[rows][..]));
            assert_close("y", &values(&out.y), &want_y, tol(dtype));
            let grads = rmsnorm_backward(&tensor(&g, &[rows, h], dtype, Device::Cpu), &xt, &wt, &out.rstd).unwrap();
            assert_close("grad_x", &values(&grads.grad_x), &want_dx, tol(dtype));
            assert_close("grad_weight", &values(&grads.grad_weight), &want_dw, tol(dtype));
            if dtype == DType::F32 {
                let loss_x = |xp: &[f64]| dot(&reference(xp, &w, &g, eps).0, &g);
                assert_fd("grad_x", &values(&grads.grad_x), &finite_differences(&x, 30, loss_x));
                let loss_w = |wp: &[f64]| dot(&reference(&x, wp, &g, eps).0, &g);
                assert_fd("grad_weight", &values(&grads.grad_weight), &finite_differences(&w, 30, loss_w));
            }
        }
    }
}

#[test]
fn bad_input() {
    let x = tensor(&[1.0; 6], &[2, 3], DType::F32, Device::Cpu);
    let w = tensor(&[1.0; 3], &[3], DType::F32, Device::Cpu);
    let e = rmsnorm(&x, &tensor(&[1.0; 2], &[2], DType::F32, Device::Cpu), &RmsNormConfig::default()).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`weight` has shape [2], expected [3]")), "{e}");
    let e = rmsnorm(&x, &w, &RmsNormConfig { eps: f32::NAN }).unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("`eps` must be finite")), "{e}");
    let e = rmsnorm(&x, &w, &RmsNormConfig { eps: -1.0 }).unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("non-negative")), "{e}");
    let e = rmsnorm(&ids(&[1, 2, 3], &[3], DType::I32, Device::Cpu), &w, &RmsNormConfig::default()).unwrap_err();
    assert!(matches!(e, Error::DType { arg: "x", .. }), "{e}");
    let out = rmsnorm(&x, &w, &RmsNormConfig::default()).unwrap();
    let e = rmsnorm_backward(&x, &x, &w, &tensor(&[1.0; 3], &[3], DType::F32, Device::Cpu)).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`rstd` has shape [3], expected [2]")), "{e}");
    let e = rmsnorm_backward(&w, &x, &w, &out.rstd).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`grad_y`")), "{e}");
}

/// The `_into` variants over NaN-filled outputs give the allocating versions' bits, in every dtype on `device`;
/// on CUDA also close to the CPU.
fn into_equals_allocating(device: Device) {
    let mut rng = seed();
    let (rows, h, cfg) = (70, 1031, RmsNormConfig::default());
    let (x, w, g) = (normal(&mut rng, rows * h), weight(&mut rng, h), normal(&mut rng, rows * h));
    for dtype in FLOATS {
        let inputs = |device| {
            (
                tensor(&x, &[rows, h], dtype, device),
                tensor(&w, &[h], dtype, device),
                tensor(&g, &[rows, h], dtype, device),
            )
        };
        let (xt, wt, gt) = inputs(device);
        let (mut y, mut rstd) = (garbage(&[rows, h], dtype, device), garbage(&[rows], DType::F32, device));
        rmsnorm_into(&xt, &wt, &cfg, &mut y, &mut rstd).unwrap();
        let want = rmsnorm(&xt, &wt, &cfg).unwrap();
        assert_same("y", &y, &want.y);
        assert_same("rstd", &rstd, &want.rstd);
        let (mut dx, mut dw) = (garbage(&[rows, h], dtype, device), garbage(&[h], dtype, device));
        rmsnorm_backward_into(&gt, &xt, &wt, &rstd, &mut dx, &mut dw).unwrap();
        let want = rmsnorm_backward(&gt, &xt, &wt, &rstd).unwrap();
        assert_same("grad_x", &dx, &want.grad_x);
        assert_same("grad_weight", &dw, &want.grad_weight);
        if device != Device::Cpu {
            let (xc, wc, gc) = inputs(Device::Cpu);
            let out = rmsnorm(&xc, &wc, &cfg).unwrap();
            let grads = rmsnorm_backward(&gc, &xc, &wc, &out.rstd).unwrap();
            assert_close("y vs cpu", &values(&y), &values(&out.y), tol(dtype));
            assert_close("rstd vs cpu", &values(&rstd), &values(&out.rstd), tol(dtype));
            assert_close("grad_x vs cpu", &values(&dx), &values(&grads.grad_x), tol(dtype));
            assert_close("grad_weight vs cpu", &values(&dw), &values(&grads.grad_weight), tol(dtype));
        }
    }
}

#[test]
fn into_overwrites_garbage_and_equals_allocating() {
    into_equals_allocating(Device::Cpu);
}

#[test]
fn into_refuses_bad_outputs() {
    let (cpu, cfg) = (Device::Cpu, RmsNormConfig::default());
    let (x, w) = (tensor(&[1.0; 6], &[2, 3], DType::F32, cpu), tensor(&[1.0; 3], &[3], DType::F32, cpu));
    let (mut y, mut rstd) = (garbage(&[2, 3], DType::F32, cpu), garbage(&[2], DType::F32, cpu));
    let e = rmsnorm_into(&x, &w, &cfg, &mut garbage(&[3, 2], DType::F32, cpu), &mut rstd).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`y` has shape [3, 2], expected [2, 3]")), "{e}");
    let e = rmsnorm_into(&x, &w, &cfg, &mut y, &mut garbage(&[2], DType::BF16, cpu)).unwrap_err();
    assert!(matches!(e, Error::DType { arg: "rstd", .. }), "{e}");
    let e = rmsnorm_into(&x, &w, &cfg, &mut y, &mut garbage(&[2, 1], DType::F32, cpu)).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`rstd` has shape [2, 1], expected [2]")), "{e}");
    rmsnorm_into(&x, &w, &cfg, &mut y, &mut rstd).unwrap();
    let (mut dx, mut dw) = (garbage(&[2, 3], DType::F32, cpu), garbage(&[3], DType::F32, cpu));
    let e = rmsnorm_backward_into(&x, &x, &w, &rstd, &mut garbage(&[6], DType::F32, cpu), &mut dw).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`grad_x` has shape [6]")), "{e}");
    let e = rmsnorm_backward_into(&x, &x, &w, &rstd, &mut dx, &mut garbage(&[3], DType::F16, cpu)).unwrap_err();
    assert!(matches!(e, Error::DType { arg: "grad_weight", .. }), "{e}");
}

#[test]
#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
fn cuda_into_overwrites_garbage_and_refuses_a_cpu_output() {
    into_equals_allocating(Device::Cuda(0));
    let gpu = Device::Cuda(0);
    let (x, w) = (tensor(&[1.0; 6], &[2, 3], DType::F32, gpu), tensor(&[1.0; 3], &[3], DType::F32, gpu));
    let mut y = garbage(&[2, 3], DType::F32, gpu);
    let e = rmsnorm_into(&x, &w, &RmsNormConfig::default(), &mut y, &mut garbage(&[2], DType::F32, Device::Cpu))
        .unwrap_err();
    assert!(matches!(&e, Error::Device(m) if m.contains("output `rstd` is on cpu")), "{e}");
}

#[test]
#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
fn cuda_matches_cpu() {
    let (gpu, mut rng) = (Device::Cuda(0), seed());
    for (rows, h) in [(512, 896), (1, 1), (300, 33), (70, 4097)] {
        let (x, w, g) = (normal(&mut rng, rows * h), weight(&mut rng, h), normal(&mut rng, rows * h));
        for dtype in FLOATS {
            let run = |device| {
                let (xt, wt) = (tensor(&x, &[rows, h], dtype, device), tensor(&w, &[h], dtype, device));
                let out = rmsnorm(&xt, &wt, &RmsNormConfig::default()).unwrap();
                let grads = rmsnorm_backward(&tensor(&g, &[rows, h], dtype, device), &xt, &wt, &out.rstd).unwrap();
                [values(&out.y), values(&out.rstd), values(&grads.grad_x), values(&grads.grad_weight)]
            };
            let (cpu, cuda) = (run(Device::Cpu), run(gpu));
            // grad_x = rstd·(g·w − x̂·mean(g·w·x̂)) cancels (to eps's part alone at h = 1): judged on its terms' scale.
            let max = |v: &[f64]| v.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            let terms = max(&cpu[1]) * max(&g) * max(&w);
            for (name, (c, got)) in ["y", "rstd", "grad_x", "grad_weight"].iter().zip(cpu.iter().zip(&cuda)) {
                let scale = if *name == "grad_x" { terms } else { 0.0 };
                assert_close_on_scale(name, got, c, tol(dtype), scale);
            }
        }
    }
}
