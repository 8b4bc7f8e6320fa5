use unireward::ops::linear::{linear, linear_backward};
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
            let y = linear(&xt, &wt, Some(&bt)).unwrap();
            assert_eq!(y.dtype(), dtype);
            assert_close("y", &values(&y), &forward(&xr, &wr, Some(&br), k, m), tol(dtype));
            let grads = linear_backward(&tensor(&g, &[rows, m], dtype, Device::Cpu), &xt, &wt, Some(&bt)).unwrap();
            let (dx, dw, db) = backward(&gr, &xr, &wr, k, m);
            assert_close("grad_x", &values(&grads.grad_x), &dx, tol(dtype));
            assert_close("grad_weight", &values(&grads.grad_weight), &dw, tol(dtype));
            assert_close("grad_bias", &values(grads.grad_bias.as_ref().unwrap()), &db, tol(dtype));
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
