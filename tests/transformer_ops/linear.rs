use unireward::ops::linear::{linear, linear_backward, linear_backward_into, linear_into, linear_params_backward_into};
use unireward::{DType, Device, Error};

use crate::common::*;

/// f64 reference: y = x·Wᵀ + b for x [rows, k], W [m, k].
fn forward(x: &[f64], w: &[f64], b: Option<&[f64]>, k: usize, m: usize) -> Vec<f64> {
    x.chunks(k).flat_map(|xr| (0..m).map(move |o| dot(xr, &w[o * k..(o + 1) * k]) + b.map_or(0.0, |b| b[o]))).collect()
}

/// f64 reference gradients (d_x, d_W, d_b).
fn backward(g: &[f64], x: &[f64], w: &[f64], k: usize, m: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let rows = x.len() / k;
    let (mut dx, mut dw, mut db) = (vec![0.0; rows * k], vec![0.0; m * k], vec![0.0; m]);
    for r in 0..rows {
        for o in 0..m {
            let gv = g[r * m + o];
            db[o] += gv;
            for i in 0..k {
                dx[r * k + i] += gv * w[o * k + i];
                dw[o * k + i] += gv * x[r * k + i];
            }
        }
    }
    (dx, dw, db)
}

#[test]
fn matches_pytorch_fixture() {
    for name in ["linear_bias", "linear_nobias"] {
        let f = Fixture::load(name);
        let (shape, m, has_bias) = (f.usizes("shape"), f.usize("m"), f.bool("has_bias"));
        let k = *shape.last().unwrap();
        let mut y_shape = shape.clone();
        *y_shape.last_mut().unwrap() = m;
        let x = tensor(&f.f64s("x"), &shape, DType::F32, Device::Cpu);
        let w = tensor(&f.f64s("weight"), &[m, k], DType::F32, Device::Cpu);
        let b = has_bias.then(|| tensor(&f.f64s("bias"), &[m], DType::F32, Device::Cpu));
        let y = linear(&x, &w, b.as_ref()).unwrap();
        assert_eq!(y.shape(), &y_shape[..]);
        assert_close("y", &values(&y), &f.f64s("y"), 1e-5);
        let grads =
            linear_backward(&tensor(&f.f64s("grad_y"), &y_shape, DType::F32, Device::Cpu), &x, &w, b.as_ref()).unwrap();
        assert_close("grad_x", &values(&grads.grad_x), &f.f64s("grad_x"), 1e-5);
        assert_close("grad_weight", &values(&grads.grad_weight), &f.f64s("grad_weight"), 1e-5);
        assert_eq!(grads.grad_bias.is_some(), has_bias);
        if let Some(db) = grads.grad_bias {
            assert_close("grad_bias", &values(&db), &f.f64s("grad_bias"), 1e-5);
        }
    }
}

#[test]
fn random_awkward_shapes_every_dtype_and_finite_differences() {
    let mut rng = seed();
    for (rows, k, m) in [(37, 96, 130), (1, 1, 1), (5, 1025, 3)] {
        let (x, w, b, g) =
            (normal(&mut rng, rows * k), normal(&mut rng, m * k), normal(&mut rng, m), normal(&mut rng, rows * m));
        for dtype in FLOATS {
            let (xr, wr, br, gr) = (rounded(&x, dtype), rounded(&w, dtype), rounded(&b, dtype), rounded(&g, dtype));
            let (xt, wt, bt) = (
                tensor(&x, &[rows, k], dtype, Device::Cpu),
                tensor(&w, &[m, k], dtype, Device::Cpu),
                tensor(&b, &[m], dtype, Device::Cpu),
            );
            // Each result is a sum of products that may cancel (a 1×1×1 `x·w + b` near zero): judged on the scale
            // of its terms, the same sums over absolute values, which is what the rounding error scales with.
            let abs = |v: &[f64]| v.iter().map(|v| v.abs()).collect::<Vec<_>>();
            let largest = |v: &[f64]| v.iter().fold(0.0, |m: f64, v| m.max(*v));
            let (xa, wa, ga) = (abs(&xr), abs(&wr), abs(&gr));
            let y_terms = largest(&forward(&xa, &wa, Some(&abs(&br)), k, m));
            let (dx_terms, dw_terms, db_terms) = backward(&ga, &xa, &wa, k, m);
            let y = linear(&xt, &wt, Some(&bt)).unwrap();
            assert_eq!(y.dtype(), dtype);
            assert_close_on_scale("y", &values(&y), &forward(&xr, &wr, Some(&br), k, m), tol(dtype), y_terms);
            let grads = linear_backward(&tensor(&g, &[rows, m], dtype, Device::Cpu), &xt, &wt, Some(&bt)).unwrap();
            let (dx, dw, db) = backward(&gr, &xr, &wr, k, m);
            let got_db = values(grads.grad_bias.as_ref().unwrap());
            assert_close_on_scale("grad_x", &values(&grads.grad_x), &dx, tol(dtype), largest(&dx_terms));
            assert_close_on_scale("grad_weight", &values(&grads.grad_weight), &dw, tol(dtype), largest(&dw_terms));
            assert_close_on_scale("grad_bias", &got_db, &db, tol(dtype), largest(&db_terms));
            if dtype == DType::F32 {
                let fd = finite_differences(&x, 20, |xp| dot(&forward(xp, &w, Some(&b), k, m), &g));
                assert_fd("grad_x", &values(&grads.grad_x), &fd);
                let fd = finite_differences(&w, 20, |wp| dot(&forward(&x, wp, Some(&b), k, m), &g));
                assert_fd("grad_weight", &values(&grads.grad_weight), &fd);
                let fd = finite_differences(&b, 20, |bp| dot(&forward(&x, &w, Some(bp), k, m), &g));
                assert_fd("grad_bias", &values(grads.grad_bias.as_ref().unwrap()), &fd);
            }
        }
    }
}

#[test]
fn bad_input() {
    let x = tensor(&[1.0; 6], &[2, 3], DType::F32, Device::Cpu);
    let w = tensor(&[1.0; 12], &[4, 3], DType::F32, Device::Cpu);
    let e = linear(&x, &tensor(&[1.0; 8], &[4, 2], DType::F32, Device::Cpu), None).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`x` has 3 features but `weight` is [4, 2]")), "{e}");
    let e = linear(&x, &w, Some(&tensor(&[1.0; 3], &[3], DType::F32, Device::Cpu))).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`bias` has shape [3], expected [4]")), "{e}");
    let e = linear(&x, &tensor(&[1.0; 3], &[3], DType::F32, Device::Cpu), None).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`weight` must have rank 2")), "{e}");
    let e = linear_backward(&x, &x, &w, None).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`grad_y` has shape [2, 3], expected [2, 4]")), "{e}");
}

/// The `_into` variants over NaN-filled outputs give the allocating versions' bits, in every dtype on `device`,
/// with and without a bias (and with a bias whose gradient is skipped, or without the input's gradient); on CUDA
/// also close to the CPU.
fn into_equals_allocating(device: Device) {
    let mut rng = seed();
    let (rows, k, m) = (37, 96, 1030);
    let (x, w, b, g) =
        (normal(&mut rng, rows * k), normal(&mut rng, m * k), normal(&mut rng, m), normal(&mut rng, rows * m));
    for dtype in FLOATS {
        let on = |data: &[f64], shape: &[usize], device| tensor(data, shape, dtype, device);
        let (xt, wt, bt, gt) =
            (on(&x, &[rows, k], device), on(&w, &[m, k], device), on(&b, &[m], device), on(&g, &[rows, m], device));
        for bias in [Some(&bt), None] {
            let mut y = garbage(&[rows, m], dtype, device);
            linear_into(&xt, &wt, bias, &mut y).unwrap();
            assert_same("y", &y, &linear(&xt, &wt, bias).unwrap());
            let want = linear_backward(&gt, &xt, &wt, bias).unwrap();
            let (mut dx, mut dw, mut db) =
                (garbage(&[rows, k], dtype, device), garbage(&[m, k], dtype, device), garbage(&[m], dtype, device));
            linear_backward_into(&gt, &xt, &wt, bias, &mut dx, &mut dw, bias.map(|_| &mut db)).unwrap();
            assert_same("grad_x", &dx, &want.grad_x);
            assert_same("grad_weight", &dw, &want.grad_weight);
            if let Some(want_db) = &want.grad_bias {
                assert_same("grad_bias", &db, want_db);
            }
            // Without the input's gradient: the parameters' are the same bits.
            let (mut dw, mut db) = (garbage(&[m, k], dtype, device), garbage(&[m], dtype, device));
            linear_params_backward_into(&gt, &xt, &wt, bias, &mut dw, bias.map(|_| &mut db)).unwrap();
            assert_same("grad_weight (no grad_x)", &dw, &want.grad_weight);
            if let Some(want_db) = &want.grad_bias {
                assert_same("grad_bias (no grad_x)", &db, want_db);
            }
            if device != Device::Cpu {
                let cpu = |data: &[f64], shape: &[usize]| on(data, shape, Device::Cpu);
                let (xc, wc, bc) = (cpu(&x, &[rows, k]), cpu(&w, &[m, k]), cpu(&b, &[m]));
                let bc = bias.map(|_| &bc);
                let t = if dtype == DType::F32 { 1e-4 } else { 2e-2 };
                assert_close("y vs cpu", &values(&y), &values(&linear(&xc, &wc, bc).unwrap()), t);
                let cpu_grads = linear_backward(&cpu(&g, &[rows, m]), &xc, &wc, bc).unwrap();
                assert_close("grad_x vs cpu", &values(&dx), &values(&cpu_grads.grad_x), t);
                assert_close("grad_weight vs cpu", &values(&dw), &values(&cpu_grads.grad_weight), t);
                if let Some(want_db) = &cpu_grads.grad_bias {
                    assert_close("grad_bias vs cpu", &values(&db), &values(want_db), t);
                }
            }
        }
        // A bias whose gradient is not wanted: the other gradients are unchanged.
        let (mut dx, mut dw) = (garbage(&[rows, k], dtype, device), garbage(&[m, k], dtype, device));
        linear_backward_into(&gt, &xt, &wt, Some(&bt), &mut dx, &mut dw, None).unwrap();
        assert_same("grad_x (bias gradient skipped)", &dx, &linear_backward(&gt, &xt, &wt, None).unwrap().grad_x);
    }
}

#[test]
fn into_overwrites_garbage_and_equals_allocating() {
    into_equals_allocating(Device::Cpu);
}

#[test]
fn into_refuses_bad_outputs() {
    let cpu = Device::Cpu;
    let (x, w, b) = (
        tensor(&[1.0; 6], &[2, 3], DType::F32, cpu),
        tensor(&[1.0; 12], &[4, 3], DType::F32, cpu),
        tensor(&[1.0; 4], &[4], DType::F32, cpu),
    );
    let e = linear_into(&x, &w, None, &mut garbage(&[2, 3], DType::F32, cpu)).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`out` has shape [2, 3], expected [2, 4]")), "{e}");
    let e = linear_into(&x, &w, None, &mut garbage(&[2, 4], DType::BF16, cpu)).unwrap_err();
    assert!(matches!(e, Error::DType { arg: "out", .. }), "{e}");
    let g = tensor(&[1.0; 8], &[2, 4], DType::F32, cpu);
    let (mut dx, mut dw) = (garbage(&[2, 3], DType::F32, cpu), garbage(&[4, 3], DType::F32, cpu));
    let e = linear_backward_into(&g, &x, &w, None, &mut garbage(&[6], DType::F32, cpu), &mut dw, None).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`grad_x` has shape [6], expected [2, 3]")), "{e}");
    let e = linear_backward_into(&g, &x, &w, None, &mut dx, &mut garbage(&[4, 3], DType::F16, cpu), None).unwrap_err();
    assert!(matches!(e, Error::DType { arg: "grad_weight", .. }), "{e}");
    let e = linear_backward_into(&g, &x, &w, Some(&b), &mut dx, &mut dw, Some(&mut garbage(&[3], DType::F32, cpu)))
        .unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`grad_bias` has shape [3], expected [4]")), "{e}");
    let e = linear_backward_into(&g, &x, &w, None, &mut dx, &mut dw, Some(&mut garbage(&[4], DType::F32, cpu)))
        .unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("`grad_bias` is given but `bias` is not")), "{e}");
}

#[test]
#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
fn cuda_into_overwrites_garbage_and_refuses_a_cpu_output() {
    into_equals_allocating(Device::Cuda(0));
    let gpu = Device::Cuda(0);
    let (x, w) = (tensor(&[1.0; 6], &[2, 3], DType::F32, gpu), tensor(&[1.0; 12], &[4, 3], DType::F32, gpu));
    let e = linear_into(&x, &w, None, &mut garbage(&[2, 4], DType::F32, Device::Cpu)).unwrap_err();
    assert!(matches!(&e, Error::Device(m) if m.contains("output `out` is on cpu")), "{e}");
}

#[test]
#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
fn cuda_matches_cpu() {
    let (gpu, mut rng) = (Device::Cuda(0), seed());
    for (rows, k, m, bias) in [(512, 896, 4864, false), (512, 896, 128, true), (1, 1, 1, true), (37, 1025, 3, true)] {
        let (x, w, b, g) =
            (normal(&mut rng, rows * k), normal(&mut rng, m * k), normal(&mut rng, m), normal(&mut rng, rows * m));
        for dtype in FLOATS {
            let run = |device| {
                let (xt, wt, bt) = (
                    tensor(&x, &[rows, k], dtype, device),
                    tensor(&w, &[m, k], dtype, device),
                    tensor(&b, &[m], dtype, device),
                );
                let bt = bias.then_some(&bt);
                let grads = linear_backward(&tensor(&g, &[rows, m], dtype, device), &xt, &wt, bt).unwrap();
                let db = grads.grad_bias.as_ref().map(values).unwrap_or_default();
                [values(&linear(&xt, &wt, bt).unwrap()), values(&grads.grad_x), values(&grads.grad_weight), db]
            };
            let (cpu, cuda) = (run(Device::Cpu), run(gpu));
            // cuBLAS may use TF32-free f32 or reduced-precision paths for bf16/f16: compare on the dtype's scale.
            let t = if dtype == DType::F32 { 1e-4 } else { 2e-2 };
            for (name, (c, g)) in ["y", "grad_x", "grad_weight", "grad_bias"].iter().zip(cpu.iter().zip(&cuda)) {
                assert_close(name, g, c, t);
            }
        }
    }
}
