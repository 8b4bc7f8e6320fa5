use unireward::ops::swiglu::{swiglu, swiglu_backward, swiglu_backward_into, swiglu_into};
use unireward::{DType, Device, Error};

use crate::common::*;

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

fn forward(gate: &[f64], up: &[f64]) -> Vec<f64> {
    gate.iter().zip(up).map(|(&g, &u)| silu(g) * u).collect()
}

#[test]
fn matches_pytorch_fixture() {
    let f = Fixture::load("swiglu");
    let shape = f.usizes("shape");
    let (gate, up) = (
        tensor(&f.f64s("gate"), &shape, DType::F32, Device::Cpu),
        tensor(&f.f64s("up"), &shape, DType::F32, Device::Cpu),
    );
    assert_close("y", &values(&swiglu(&gate, &up).unwrap()), &f.f64s("y"), 1e-5);
    let grads = swiglu_backward(&tensor(&f.f64s("grad_y"), &shape, DType::F32, Device::Cpu), &gate, &up).unwrap();
    assert_close("grad_gate", &values(&grads.grad_gate), &f.f64s("grad_gate"), 1e-5);
    assert_close("grad_up", &values(&grads.grad_up), &f.f64s("grad_up"), 1e-5);
}

#[test]
fn random_every_dtype_and_finite_differences() {
    let mut rng = seed();
    let len = 3 * 4864 + 7;
    let (gate, up, g) = (
        normal(&mut rng, len).iter().map(|v| 4.0 * v).collect::<Vec<_>>(),
        normal(&mut rng, len),
        normal(&mut rng, len),
    );
    for dtype in FLOATS {
        let (gr, ur, dr) = (rounded(&gate, dtype), rounded(&up, dtype), rounded(&g, dtype));
        let (gt, ut) = (tensor(&gate, &[len], dtype, Device::Cpu), tensor(&up, &[len], dtype, Device::Cpu));
        let y = swiglu(&gt, &ut).unwrap();
        assert_eq!(y.dtype(), dtype);
        assert_close("y", &values(&y), &forward(&gr, &ur), tol(dtype));
        let grads = swiglu_backward(&tensor(&g, &[len], dtype, Device::Cpu), &gt, &ut).unwrap();
        let want_dg: Vec<f64> = (0..len)
            .map(|i| {
                let s = 1.0 / (1.0 + (-gr[i]).exp());
                dr[i] * ur[i] * s * (1.0 + gr[i] * (1.0 - s))
            })
            .collect();
        let want_du: Vec<f64> = (0..len).map(|i| dr[i] * silu(gr[i])).collect();
        assert_close("grad_gate", &values(&grads.grad_gate), &want_dg, tol(dtype));
        assert_close("grad_up", &values(&grads.grad_up), &want_du, tol(dtype));
        if dtype == DType::F32 {
            let fd = finite_differences(&gate, 50, |gp| dot(&forward(gp, &up), &g));
            assert_fd("grad_gate", &values(&grads.grad_gate), &fd);
            let fd = finite_differences(&up, 50, |upp| dot(&forward(&gate, upp), &g));
            assert_fd("grad_up", &values(&grads.grad_up), &fd);
        }
    }
}

#[test]
fn bad_input() {
    let a = tensor(&[1.0; 6], &[2, 3], DType::F32, Device::Cpu);
    let e = swiglu(&a, &tensor(&[1.0; 6], &[3, 2], DType::F32, Device::Cpu)).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`up` has shape [3, 2], expected [2, 3]")), "{e}");
    let e = swiglu(&a, &tensor(&[1.0; 6], &[2, 3], DType::BF16, Device::Cpu)).unwrap_err();
    assert!(matches!(e, Error::DType { arg: "up", .. }), "{e}");
    let e = swiglu_backward(&ids(&[0; 6], &[2, 3], DType::I64, Device::Cpu), &a, &a).unwrap_err();
    assert!(matches!(e, Error::DType { arg: "grad_y", .. }), "{e}");
    let empty = tensor(&[], &[0, 3], DType::F32, Device::Cpu);
    assert!(matches!(swiglu(&empty, &empty).unwrap_err(), Error::Shape(_)));
}

/// The `_into` variants over NaN-filled outputs give the allocating versions' bits, in every dtype on `device`.
fn into_equals_allocating(device: Device) {
    let mut rng = seed();
    let shape = [3, 1001];
    let (gate, up, g) = (normal(&mut rng, 3003), normal(&mut rng, 3003), normal(&mut rng, 3003));
    for dtype in FLOATS {
        let (gt, ut, dy) = (
            tensor(&gate, &shape, dtype, device),
            tensor(&up, &shape, dtype, device),
            tensor(&g, &shape, dtype, device),
        );
        let mut out = garbage(&shape, dtype, device);
        swiglu_into(&gt, &ut, &mut out).unwrap();
        assert_same("out", &out, &swiglu(&gt, &ut).unwrap());
        let (mut dg, mut du) = (garbage(&shape, dtype, device), garbage(&shape, dtype, device));
        swiglu_backward_into(&dy, &gt, &ut, &mut dg, &mut du).unwrap();
        let want = swiglu_backward(&dy, &gt, &ut).unwrap();
        assert_same("grad_gate", &dg, &want.grad_gate);
        assert_same("grad_up", &du, &want.grad_up);
        if device != Device::Cpu {
            let cpu = |x: &[f64]| tensor(x, &shape, dtype, Device::Cpu);
            let want = swiglu_backward(&cpu(&g), &cpu(&gate), &cpu(&up)).unwrap();
            assert_close("out vs cpu", &values(&out), &values(&swiglu(&cpu(&gate), &cpu(&up)).unwrap()), tol(dtype));
            assert_close("grad_gate vs cpu", &values(&dg), &values(&want.grad_gate), tol(dtype));
            assert_close("grad_up vs cpu", &values(&du), &values(&want.grad_up), tol(dtype));
        }
    }
}

#[test]
fn into_overwrites_garbage_and_equals_allocating() {
    into_equals_allocating(Device::Cpu);
}

#[test]
fn into_refuses_bad_outputs() {
    let a = tensor(&[1.0; 6], &[2, 3], DType::F32, Device::Cpu);
    let e = swiglu_into(&a, &a, &mut garbage(&[3, 2], DType::F32, Device::Cpu)).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`out` has shape [3, 2], expected [2, 3]")), "{e}");
    let e = swiglu_into(&a, &a, &mut garbage(&[2, 3], DType::BF16, Device::Cpu)).unwrap_err();
    assert!(matches!(e, Error::DType { arg: "out", .. }), "{e}");
    let mut ok = garbage(&[2, 3], DType::F32, Device::Cpu);
    let e = swiglu_backward_into(&a, &a, &a, &mut ok, &mut garbage(&[6], DType::F32, Device::Cpu)).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`grad_up` has shape [6]")), "{e}");
    let e = swiglu_backward_into(&a, &a, &a, &mut garbage(&[2, 3], DType::F16, Device::Cpu), &mut ok).unwrap_err();
    assert!(matches!(e, Error::DType { arg: "grad_gate", .. }), "{e}");
}

#[test]
#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
fn cuda_into_overwrites_garbage_and_refuses_a_cpu_output() {
    into_equals_allocating(Device::Cuda(0));
    let a = tensor(&[1.0; 6], &[2, 3], DType::F32, Device::Cuda(0));
    let e = swiglu_into(&a, &a, &mut garbage(&[2, 3], DType::F32, Device::Cpu)).unwrap_err();
    assert!(matches!(&e, Error::Device(m) if m.contains("output `out` is on cpu")), "{e}");
}

#[test]
#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
fn cuda_matches_cpu() {
    let (gpu, mut rng) = (Device::Cuda(0), seed());
    let len = 512 * 4864 + 3;
    let (gate, up, g) = (normal(&mut rng, len), normal(&mut rng, len), normal(&mut rng, len));
    for dtype in FLOATS {
        let run = |device| {
            let (gt, ut) = (tensor(&gate, &[len], dtype, device), tensor(&up, &[len], dtype, device));
            let grads = swiglu_backward(&tensor(&g, &[len], dtype, device), &gt, &ut).unwrap();
            [values(&swiglu(&gt, &ut).unwrap()), values(&grads.grad_gate), values(&grads.grad_up)]
        };
        let (cpu, cuda) = (run(Device::Cpu), run(gpu));
        for (name, (c, g)) in ["y", "grad_gate", "grad_up"].iter().zip(cpu.iter().zip(&cuda)) {
            assert_close(name, g, c, tol(dtype));
        }
    }
}
