use unireward::ops::gelu::{gelu, gelu_backward, gelu_backward_into, gelu_into, GeluApproximation};
use unireward::{DType, Device, Error};

use crate::common::*;

const FORMS: [GeluApproximation; 2] = [GeluApproximation::Tanh, GeluApproximation::Exact];

/// f64 reference: gelu(x) and gelu'(x).
fn reference(x: f64, form: GeluApproximation) -> (f64, f64) {
    let k = (2.0 / std::f64::consts::PI).sqrt();
    match form {
        GeluApproximation::Tanh => {
            let t = (k * (x + 0.044715 * x.powi(3))).tanh();
            let dt = if t.abs() == 1.0 { 0.0 } else { (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x) };
            (0.5 * x * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * x * dt)
        }
        GeluApproximation::Exact => {
            let cdf = 0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
            let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
            (x * cdf, cdf + if pdf == 0.0 { 0.0 } else { x * pdf })
        }
    }
}

fn forward_ref(x: &[f64], form: GeluApproximation) -> Vec<f64> {
    x.iter().map(|&v| reference(v, form).0).collect()
}

/// y and d_x on `device`.
fn run(x: &[f64], g: &[f64], shape: &[usize], form: GeluApproximation, dtype: DType, device: Device) -> [Vec<f64>; 2] {
    let xt = tensor(x, shape, dtype, device);
    let y = gelu(&xt, form).unwrap();
    assert_eq!((y.dtype(), y.shape()), (dtype, shape));
    let dx = gelu_backward(&tensor(g, shape, dtype, device), &xt, form).unwrap();
    [values(&y), values(&dx)]
}

#[test]
fn matches_pytorch_fixture() {
    for (name, form) in [("gelu_tanh", GeluApproximation::Tanh), ("gelu_exact", GeluApproximation::Exact)] {
        let f = Fixture::load(name);
        let shape = f.usizes("shape");
        let [y, dx] = run(&f.f64s("x"), &f.f64s("grad_y"), &shape, form, DType::F32, Device::Cpu);
        assert_close(&format!("{name} y"), &y, &f.f64s("y"), 1e-5);
        assert_close(&format!("{name} grad_x"), &dx, &f.f64s("grad_x"), 1e-5);
    }
}

#[test]
fn random_every_dtype_and_finite_differences() {
    let mut rng = seed();
    for (shape, spread) in [(vec![3, 4304 + 7], 3.0), (vec![1], 1.0), (vec![7, 33], 8.0)] {
        let len: usize = shape.iter().product();
        let x: Vec<f64> = normal(&mut rng, len).iter().map(|v| spread * v).collect();
        let g = normal(&mut rng, len);
        for (form, dtype) in FORMS.into_iter().flat_map(|f| FLOATS.map(|d| (f, d))) {
            let (xr, gr) = (rounded(&x, dtype), rounded(&g, dtype));
            let want_y = forward_ref(&xr, form);
            let want_dx: Vec<f64> = xr.iter().zip(&gr).map(|(&x, g)| g * reference(x, form).1).collect();
            let [y, dx] = run(&x, &g, &shape, form, dtype, Device::Cpu);
            assert_close(&format!("y {form:?} {dtype} {shape:?}"), &y, &want_y, tol(dtype));
            // gelu'(x) = Φ(x) + x·φ(x): terms of at most 1 in size that cancel near x ≈ −0.75, so the gradient is
            // judged on |g| (a lone element there is far below its terms).
            let g_scale = gr.iter().fold(0.0, |m: f64, g| m.max(g.abs()));
            assert_close_on_scale(&format!("grad_x {form:?} {dtype} {shape:?}"), &dx, &want_dx, tol(dtype), g_scale);
            if dtype == DType::F32 {
                let fd = finite_differences(&x, 50, |xp| dot(&forward_ref(xp, form), &g));
                assert_fd(&format!("grad_x {form:?}"), &dx, &fd);
            }
        }
    }
}

#[test]
fn tails_are_exact_and_nan_propagates() {
    // Far tails: y = x or 0 and y' = 1 or 0 with nothing overflowing (x³ and x² overflow f32 past ~1e13 and 1e19);
    // the two forms differ by under 5e-4 anywhere.
    let x = [-1e30, -1e20, -60.0, -9.0, -1e-3, 0.0, 1e-3, 9.0, 60.0, 1e20, 1e30];
    for form in FORMS {
        let [y, dx] = run(&x, &[1.0; 11], &[11], form, DType::F32, Device::Cpu);
        for (i, &xi) in x.iter().enumerate() {
            let (want_y, want_d) = reference(rounded(&[xi], DType::F32)[0], form);
            assert!((y[i] - want_y).abs() <= 1e-6 * (1.0 + want_y.abs()), "{form:?} y({xi}) = {}, want {want_y}", y[i]);
            assert!((dx[i] - want_d).abs() <= 1e-6, "{form:?} y'({xi}) = {}, want {want_d}", dx[i]);
        }
        let [y, dx] = run(&[1.0, f64::NAN, -2.0], &[1.0, 1.0, f64::NAN], &[3], form, DType::F32, Device::Cpu);
        assert!(y[0].is_finite() && y[1].is_nan() && y[2].is_finite(), "{form:?} forward: {y:?}");
        assert!(dx[0].is_finite() && dx[1].is_nan() && dx[2].is_nan(), "{form:?} backward: {dx:?}");
    }
}

#[test]
fn hugging_face_activation_names() {
    assert_eq!(GeluApproximation::from_hidden_act("gelu").unwrap(), GeluApproximation::Exact);
    assert_eq!(GeluApproximation::from_hidden_act("gelu_pytorch_tanh").unwrap(), GeluApproximation::Tanh);
    assert_eq!(GeluApproximation::from_hidden_act("gelu_new").unwrap(), GeluApproximation::Tanh);
    let e = GeluApproximation::from_hidden_act("quick_gelu").unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("unsupported activation `quick_gelu`")), "{e}");
}

#[test]
fn bad_input() {
    let (cpu, form) = (Device::Cpu, GeluApproximation::Tanh);
    let a = tensor(&[1.0; 6], &[2, 3], DType::F32, cpu);
    let e = gelu_backward(&tensor(&[1.0; 6], &[3, 2], DType::F32, cpu), &a, form).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`grad_y` has shape [3, 2], expected [2, 3]")), "{e}");
    let e = gelu_backward(&tensor(&[1.0; 6], &[2, 3], DType::BF16, cpu), &a, form).unwrap_err();
    assert!(matches!(e, Error::DType { arg: "grad_y", .. }), "{e}");
    let e = gelu(&ids(&[0; 6], &[2, 3], DType::I64, cpu), form).unwrap_err();
    assert!(matches!(e, Error::DType { arg: "x", .. }), "{e}");
    let e = gelu(&tensor(&[], &[0, 3], DType::F32, cpu), form).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`x` is empty")), "{e}");
}

/// The `_into` variants over NaN-filled outputs give the allocating versions' bits, in every dtype on `device`;
/// on CUDA also close to the CPU.
fn into_equals_allocating(device: Device) {
    let mut rng = seed();
    let shape = [3, 1001];
    let (x, g) = (normal(&mut rng, 3003).iter().map(|v| 3.0 * v).collect::<Vec<_>>(), normal(&mut rng, 3003));
    for (form, dtype) in FORMS.into_iter().flat_map(|f| FLOATS.map(|d| (f, d))) {
        let (xt, gt) = (tensor(&x, &shape, dtype, device), tensor(&g, &shape, dtype, device));
        let mut y = garbage(&shape, dtype, device);
        gelu_into(&xt, form, &mut y).unwrap();
        assert_same("y", &y, &gelu(&xt, form).unwrap());
        let mut dx = garbage(&shape, dtype, device);
        gelu_backward_into(&gt, &xt, form, &mut dx).unwrap();
        assert_same("grad_x", &dx, &gelu_backward(&gt, &xt, form).unwrap());
        if device != Device::Cpu {
            let [cy, cdx] = run(&x, &g, &shape, form, dtype, Device::Cpu);
            assert_close(&format!("y vs cpu {form:?} {dtype}"), &values(&y), &cy, tol(dtype));
            assert_close(&format!("grad_x vs cpu {form:?} {dtype}"), &values(&dx), &cdx, tol(dtype));
        }
    }
}

#[test]
fn into_overwrites_garbage_and_equals_allocating() {
    into_equals_allocating(Device::Cpu);
}

#[test]
fn into_refuses_bad_outputs() {
    let (cpu, form) = (Device::Cpu, GeluApproximation::Exact);
    let a = tensor(&[1.0; 6], &[2, 3], DType::F32, cpu);
    let e = gelu_into(&a, form, &mut garbage(&[3, 2], DType::F32, cpu)).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`out` has shape [3, 2], expected [2, 3]")), "{e}");
    let e = gelu_into(&a, form, &mut garbage(&[2, 3], DType::BF16, cpu)).unwrap_err();
    assert!(matches!(e, Error::DType { arg: "out", .. }), "{e}");
    let e = gelu_backward_into(&a, &a, form, &mut garbage(&[6], DType::F32, cpu)).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`grad_x` has shape [6]")), "{e}");
}

#[test]
#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
fn cuda_into_overwrites_garbage_and_refuses_a_cpu_output() {
    into_equals_allocating(Device::Cuda(0));
    let a = tensor(&[1.0; 6], &[2, 3], DType::F32, Device::Cuda(0));
    let e = gelu_into(&a, GeluApproximation::Tanh, &mut garbage(&[2, 3], DType::F32, Device::Cpu)).unwrap_err();
    assert!(matches!(&e, Error::Device(m) if m.contains("output `out` is on cpu")), "{e}");
    let e =
        gelu_backward(&tensor(&[1.0; 6], &[2, 3], DType::F32, Device::Cpu), &a, GeluApproximation::Tanh).unwrap_err();
    assert!(matches!(&e, Error::Device(m) if m.contains("`grad_y` is on cpu")), "{e}");
}

#[test]
#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
fn cuda_matches_cpu() {
    let mut rng = seed();
    let len = 729 * 4304 + 3;
    let (mut x, g) = (normal(&mut rng, len), normal(&mut rng, len));
    x.iter_mut().for_each(|v| *v *= 4.0);
    x[..4].copy_from_slice(&[1e20, -1e20, 60.0, f64::NAN]);
    for (form, dtype) in FORMS.into_iter().flat_map(|f| FLOATS.map(|d| (f, d))) {
        let (cpu, cuda) =
            (run(&x, &g, &[len], form, dtype, Device::Cpu), run(&x, &g, &[len], form, dtype, Device::Cuda(0)));
        for (name, (c, g)) in ["y", "grad_x"].iter().zip(cpu.iter().zip(&cuda)) {
            assert!(c[3].is_nan() && g[3].is_nan(), "{name}: NaN in, NaN out");
            assert_close(&format!("{name} {form:?} {dtype}"), &g[4..], &c[4..], tol(dtype));
            // A tail past the dtype's range (±1e20 in f16 is ±inf) gives the same value on both devices: +inf, or
            // NaN for −inf (−inf · 0, as in PyTorch).
            for (i, (got, want)) in g[..3].iter().zip(&c[..3]).enumerate() {
                let what = format!("{name} tail {i} {form:?} {dtype}");
                if !want.is_finite() {
                    assert!(got == want || got.is_nan() && want.is_nan(), "{what}: {got} vs {want}");
                } else {
                    assert_close(&what, &[*got], &[*want], tol(dtype));
                }
            }
        }
    }
}
