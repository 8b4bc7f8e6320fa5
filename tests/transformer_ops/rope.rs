use rand::Rng;
use unireward::ops::rope::{inv_freq, rope, rope_backward, rope_in_place, RopeConfig, Rotation};
use unireward::{DType, Device, Error};

use crate::common::*;

/// f64 reference of the rotate-half rotation by angle `sign`·position·inv_freq (angles formed in f32, as
/// transformers forms them), over x [N,T,heads,d].
fn reference(x: &[f64], positions: &[i64], heads: usize, d: usize, theta: f32, sign: f64) -> Vec<f64> {
    let inv = inv_freq(d, theta);
    let half = d / 2;
    let mut out = x.to_vec();
    for (row, &p) in positions.iter().enumerate() {
        for h in 0..heads {
            let base = (row * heads + h) * d;
            for i in 0..half {
                let angle = f64::from(p as f32 * inv[i]);
                let (s, c) = (sign * angle.sin(), angle.cos());
                let (a, b) = (x[base + i], x[base + i + half]);
                out[base + i] = a * c - b * s;
                out[base + i + half] = b * c + a * s;
            }
        }
    }
    out
}

#[test]
fn inv_freq_matches_transformers() {
    // torch: 1.0 / (10000 ** (torch.arange(0, 8, 2).float() / 8)) in float32.
    assert_eq!(inv_freq(8, 10000.0), vec![1.0, 0.1, 0.01, 0.001]);
}

#[test]
fn matches_pytorch_fixture() {
    for name in ["rope", "rope_far"] {
        let f = Fixture::load(name);
        let shape = [f.usize("n"), f.usize("t"), f.usize("heads"), f.usize("d")];
        let cfg = RopeConfig { theta: f.f64("theta") as f32 };
        let positions = ids(&f.i64s("positions"), &shape[..2], DType::I64, Device::Cpu);
        let x = tensor(&f.f64s("x"), &shape, DType::F32, Device::Cpu);
        assert_close("out", &values(&rope(&x, &positions, &cfg).unwrap()), &f.f64s("out"), 1e-5);
        let g = tensor(&f.f64s("grad_out"), &shape, DType::F32, Device::Cpu);
        assert_close("grad_x", &values(&rope_backward(&g, &positions, &cfg).unwrap()), &f.f64s("grad_x"), 1e-5);
    }
}

#[test]
fn random_every_dtype_in_place_and_finite_differences() {
    let mut rng = seed();
    // Scattered positions (each row's angles computed alone), and each sequence counting from 0 (the angles of
    // each position computed once for every row that has it).
    let cases =
        [(2, 9, 14, 64, 1e6f32, false), (1, 1, 1, 2, 1e4, false), (3, 5, 2, 72, 1e4, false), (4, 7, 3, 10, 1e4, true)];
    for (n, t, heads, d, theta, counting) in cases {
        let x = normal(&mut rng, n * t * heads * d);
        let g = normal(&mut rng, x.len());
        let pos: Vec<i64> = (0..n * t)
            .map(|i| match (counting, i % 4 == 3) {
                (true, _) => (i % t) as i64,
                (false, true) => 0,
                (false, false) => rng.gen_range(0..40_000),
            })
            .collect();
        let cfg = RopeConfig { theta };
        let shape = [n, t, heads, d];
        for (dtype, pos_dtype) in FLOATS.into_iter().zip([DType::I64, DType::I32, DType::I64]) {
            let positions = ids(&pos, &[n, t], pos_dtype, Device::Cpu);
            let (xr, gr) = (rounded(&x, dtype), rounded(&g, dtype));
            let xt = tensor(&x, &shape, dtype, Device::Cpu);
            let out = rope(&xt, &positions, &cfg).unwrap();
            assert_eq!(out.dtype(), dtype);
            assert_close("out", &values(&out), &reference(&xr, &pos, heads, d, theta, 1.0), tol(dtype));
            let back = rope_backward(&tensor(&g, &shape, dtype, Device::Cpu), &positions, &cfg).unwrap();
            assert_close("grad_x", &values(&back), &reference(&gr, &pos, heads, d, theta, -1.0), tol(dtype));
            let mut inplace = xt.try_clone().unwrap();
            rope_in_place(&mut inplace, &positions, &cfg, Rotation::Forward).unwrap();
            assert_close("in place", &values(&inplace), &values(&out), 0.0);
            if dtype == DType::F32 {
                rope_in_place(&mut inplace, &positions, &cfg, Rotation::Inverse).unwrap();
                assert_close("round trip", &values(&inplace), &x, 1e-5);
                let fd = finite_differences(&x, 30, |xp| dot(&reference(xp, &pos, heads, d, theta, 1.0), &g));
                assert_fd("grad_x", &values(&back), &fd);
            }
        }
    }
}

#[test]
fn bad_input() {
    let cfg = RopeConfig::default();
    let x = tensor(&[1.0; 12], &[1, 2, 2, 3], DType::F32, Device::Cpu);
    let pos = ids(&[0, 1], &[1, 2], DType::I64, Device::Cpu);
    let e = rope(&x, &pos, &cfg).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("must be even")), "{e}");
    let x = tensor(&[1.0; 16], &[1, 2, 2, 4], DType::F32, Device::Cpu);
    let e = rope(&x, &ids(&[0, -3], &[1, 2], DType::I64, Device::Cpu), &cfg).unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("`positions` holds -3")), "{e}");
    let e = rope(&x, &ids(&[0, 1, 2], &[1, 3], DType::I64, Device::Cpu), &cfg).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`positions` has shape [1, 3], expected [1, 2]")), "{e}");
    let e = rope(&x, &tensor(&[0.0, 1.0], &[1, 2], DType::F32, Device::Cpu), &cfg).unwrap_err();
    assert!(matches!(e, Error::DType { arg: "positions", .. }), "{e}");
    let e = rope(&x, &pos, &RopeConfig { theta: 0.0 }).unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("`theta` must be positive")), "{e}");
    let e = rope(&tensor(&[1.0; 4], &[1, 4], DType::F32, Device::Cpu), &pos, &cfg).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`x` must have rank 4")), "{e}");
}

#[test]
#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
fn cuda_matches_cpu() {
    let (gpu, mut rng) = (Device::Cuda(0), seed());
    for (n, t, heads, d) in [(2, 512, 14, 64), (1, 1, 1, 2), (3, 5, 2, 72), (1, 300, 2, 128)] {
        let x = normal(&mut rng, n * t * heads * d);
        let pos: Vec<i64> = (0..n * t).map(|_| rng.gen_range(0..131_072)).collect();
        let cfg = RopeConfig::default();
        for dtype in FLOATS {
            let run = |device| {
                let positions = ids(&pos, &[n, t], DType::I64, device);
                let xt = tensor(&x, &[n, t, heads, d], dtype, device);
                [values(&rope(&xt, &positions, &cfg).unwrap()), values(&rope_backward(&xt, &positions, &cfg).unwrap())]
            };
            let (cpu, cuda) = (run(Device::Cpu), run(gpu));
            assert_close("out", &cuda[0], &cpu[0], tol(dtype));
            assert_close("backward", &cuda[1], &cpu[1], tol(dtype));
        }
    }
}
