use unireward::ops::interpolate::{bilinear, bilinear_backward, bilinear_backward_into, bilinear_into};
use unireward::{DType, Device, Error};

use crate::common::*;

/// f64 taps of an axis resized from `n_in` to `n_out` points, as PyTorch's align_corners=False bilinear: per output,
/// the inputs it reads and their weights. An axis of unchanged size is the identity (PyTorch's CPU kernel skips it).
fn taps(n_in: usize, n_out: usize) -> Vec<Vec<(usize, f64)>> {
    let scale = n_in as f64 / n_out as f64;
    (0..n_out)
        .map(|o| {
            if n_in == n_out {
                return vec![(o, 1.0)];
            }
            let s = (scale * (o as f64 + 0.5) - 0.5).max(0.0);
            let i0 = (s.floor() as usize).min(n_in - 1);
            let l = s - i0 as f64;
            vec![(i0, 1.0 - l), ((i0 + 1).min(n_in - 1), l)]
        })
        .collect()
}

/// Sizes of one case: images, channels, input [H, W], output [H₂, W₂].
#[derive(Clone, Copy, Debug)]
struct Case {
    n: usize,
    c: usize,
    input: [usize; 2],
    output: [usize; 2],
}

impl Case {
    fn x_shape(&self) -> [usize; 4] {
        [self.n, self.input[0], self.input[1], self.c]
    }

    fn y_shape(&self) -> [usize; 4] {
        [self.n, self.output[0], self.output[1], self.c]
    }

    /// Visits every (input element, output element, weight) of the resize, channels-last.
    fn for_each_weight(&self, mut f: impl FnMut(usize, usize, f64)) {
        let ([h, w], [h2, w2], c) = (self.input, self.output, self.c);
        let (rows, cols) = (taps(h, h2), taps(w, w2));
        for b in 0..self.n {
            for (o, row) in rows.iter().enumerate() {
                for (q, col) in cols.iter().enumerate() {
                    for &(i, wi) in row {
                        for &(j, wj) in col {
                            for k in 0..c {
                                f(((b * h + i) * w + j) * c + k, ((b * h2 + o) * w2 + q) * c + k, wi * wj);
                            }
                        }
                    }
                }
            }
        }
    }

    fn forward_ref(&self, x: &[f64]) -> Vec<f64> {
        let mut y = vec![0.0; self.y_shape().iter().product()];
        self.for_each_weight(|i, o, wt| y[o] += wt * x[i]);
        y
    }

    /// The adjoint of the forward: Σ grad_y · y's gradient.
    fn backward_ref(&self, g: &[f64]) -> Vec<f64> {
        let mut dx = vec![0.0; self.x_shape().iter().product()];
        self.for_each_weight(|i, o, wt| dx[i] += wt * g[o]);
        dx
    }

    /// y and grad_x on `device`.
    fn run(&self, x: &[f64], g: &[f64], dtype: DType, device: Device) -> [Vec<f64>; 2] {
        let y = bilinear(&tensor(x, &self.x_shape(), dtype, device), self.output).unwrap();
        assert_eq!((y.dtype(), y.shape()), (dtype, &self.y_shape()[..]));
        let dx = bilinear_backward(&tensor(g, &self.y_shape(), dtype, device), self.input).unwrap();
        assert_eq!((dx.dtype(), dx.shape()), (dtype, &self.x_shape()[..]));
        [values(&y), values(&dx)]
    }
}

/// NaN exactly where `want` has it, and close elsewhere.
fn assert_close_nan_where_expected(what: &str, got: &[f64], want: &[f64], rtol: f64) {
    let nan_at = |v: &[f64]| v.iter().map(|v| v.is_nan()).collect::<Vec<_>>();
    assert_eq!(nan_at(got), nan_at(want), "{what}: NaN where expected and nowhere else");
    let (got, want): (Vec<f64>, Vec<f64>) = got.iter().zip(want).filter(|(_, w)| !w.is_nan()).unzip();
    assert_close(what, &got, &want, rtol);
}

fn case(n: usize, c: usize, input: [usize; 2], output: [usize; 2]) -> Case {
    Case { n, c, input, output }
}

fn random(rng: &mut rand::rngs::StdRng, case: &Case) -> (Vec<f64>, Vec<f64>) {
    (normal(rng, case.x_shape().iter().product()), normal(rng, case.y_shape().iter().product()))
}

#[test]
fn matches_pytorch_fixture() {
    for name in ["bilinear_pool", "bilinear_down", "bilinear_up"] {
        let f = Fixture::load(name);
        let pair = |key: &str| -> [usize; 2] { f.usizes(key).try_into().unwrap() };
        let case = case(f.usize("n"), f.usize("c"), pair("input_size"), pair("size"));
        let [y, dx] = case.run(&f.f64s("x"), &f.f64s("grad_y"), DType::F32, Device::Cpu);
        assert_close(&format!("{name} y"), &y, &f.f64s("y"), 1e-5);
        assert_close(&format!("{name} grad_x"), &dx, &f.f64s("grad_x"), 1e-5);
    }
}

/// LLaVA-OneVision's sizes (so400m's 27×27 grid pooled to ⌈27/2⌉ = 14, and to 13; an anyres grid down-sampled by a
/// non-integer ratio), up-sampling, sides of 1 in and out, and the identity.
const CASES: [Case; 7] = [
    Case { n: 2, c: 5, input: [27, 27], output: [14, 14] },
    Case { n: 1, c: 3, input: [27, 27], output: [13, 13] },
    Case { n: 1, c: 4, input: [24, 40], output: [17, 28] },
    Case { n: 1, c: 2, input: [1, 1], output: [7, 7] },
    Case { n: 3, c: 1, input: [7, 1], output: [1, 7] },
    Case { n: 1, c: 3, input: [3, 5], output: [8, 11] },
    Case { n: 2, c: 3, input: [6, 7], output: [6, 7] },
];

#[test]
fn random_awkward_sizes_every_dtype_and_finite_differences() {
    let mut rng = seed();
    for case in CASES {
        let (x, g) = random(&mut rng, &case);
        for dtype in FLOATS {
            let (xr, gr) = (rounded(&x, dtype), rounded(&g, dtype));
            let [y, dx] = case.run(&x, &g, dtype, Device::Cpu);
            assert_close(&format!("y {case:?} {dtype}"), &y, &case.forward_ref(&xr), tol(dtype));
            assert_close(&format!("grad_x {case:?} {dtype}"), &dx, &case.backward_ref(&gr), tol(dtype));
            if dtype == DType::F32 {
                let fd = finite_differences(&xr, 40, |xp| dot(&case.forward_ref(xp), &gr));
                assert_fd(&format!("grad_x {case:?}"), &dx, &fd);
            }
            if case.input == case.output {
                assert_eq!(y, xr, "the identity resize gives x exactly ({dtype})");
            }
        }
    }
}

/// A fixture's values with NaN at its `{key}_nan` indices.
fn with_nans(f: &Fixture, key: &str) -> Vec<f64> {
    let mut v = f.f64s(key);
    f.usizes(&format!("{key}_nan")).into_iter().for_each(|i| v[i] = f64::NAN);
    v
}

#[test]
fn nan_goes_where_pytorch_puts_it() {
    let f = Fixture::load("bilinear_nan");
    let pair = |key: &str| -> [usize; 2] { f.usizes(key).try_into().unwrap() };
    let case = case(f.usize("n"), f.usize("c"), pair("input_size"), pair("size"));
    let [y, dx] = case.run(&with_nans(&f, "x"), &with_nans(&f, "grad_y"), DType::F32, Device::Cpu);
    assert_close_nan_where_expected("y", &y, &with_nans(&f, "y"), 1e-5);
    assert_close_nan_where_expected("grad_x", &dx, &with_nans(&f, "grad_x"), 1e-5);
}

#[test]
fn an_unchanged_size_is_a_copy_even_of_infinities() {
    let x = [1.0, f64::INFINITY, f64::NAN, -f64::INFINITY, 2.0, 3.0];
    let [y, dx] = case(1, 1, [2, 3], [2, 3]).run(&x, &x, DType::F32, Device::Cpu);
    for (what, got) in [("y", y), ("grad_x", dx)] {
        assert!(got.iter().zip(&x).all(|(g, x)| g == x || g.is_nan() && x.is_nan()), "{what}: {got:?}, want {x:?}");
    }
}

#[test]
fn nan_reaches_exactly_the_outputs_it_touches() {
    // Ratios of 2 and ½: the f64 reference's taps are exactly the op's, so the NaN patterns must agree.
    let case = case(2, 3, [14, 6], [7, 12]);
    let mut rng = seed();
    let (mut x, mut g) = random(&mut rng, &case);
    x[(5 * 6 + 3) * 3 + 1] = f64::NAN;
    x[((14 + 13) * 6 + 5) * 3] = f64::NAN;
    g[(3 * 12 + 11) * 3 + 2] = f64::NAN;
    let [y, dx] = case.run(&x, &g, DType::F32, Device::Cpu);
    for (what, got, want) in [("y", &y, case.forward_ref(&x)), ("grad_x", &dx, case.backward_ref(&g))] {
        assert!(want.iter().filter(|v| v.is_nan()).count() > 1, "{what}: the NaN must spread");
        assert_close_nan_where_expected(what, got, &want, 1e-5);
    }
}

#[test]
fn bad_input() {
    let cpu = Device::Cpu;
    let x = tensor(&[1.0; 24], &[1, 2, 3, 4], DType::F32, cpu);
    let e = bilinear(&tensor(&[1.0; 6], &[2, 3], DType::F32, cpu), [2, 2]).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`x` must be [N, H, W, C] (channels last), got shape [2, 3]")));
    let e = bilinear(&x, [0, 3]).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`size` must be at least 1 in both dimensions, got [0, 3]")));
    let e = bilinear(&tensor(&[], &[1, 0, 3, 4], DType::F32, cpu), [2, 2]).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`x` is empty")), "{e}");
    let e = bilinear(&ids(&[0; 24], &[1, 2, 3, 4], DType::I64, cpu), [2, 2]).unwrap_err();
    assert!(matches!(e, Error::DType { arg: "x", .. }), "{e}");
    // A size asked for by mistake is refused before anything is allocated.
    let e = bilinear(&x, [1 << 20, 1 << 20]).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("the output [1, 1048576, 1048576, 4] has more than")), "{e}");
    let e = bilinear(&x, [usize::MAX, 2]).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("has more than 2147483647 elements")), "{e}");
    let e = bilinear_backward(&x, [2, 0]).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`input_size` must be at least 1")), "{e}");
    let e = bilinear_backward(&tensor(&[1.0; 6], &[1, 6], DType::F32, cpu), [2, 2]).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`grad_y` must be [N, H, W, C]")), "{e}");
}

/// The `_into` variants over NaN-filled outputs give the allocating versions' bits, in every dtype on `device`;
/// on CUDA also close to the CPU.
fn into_equals_allocating(device: Device) {
    let mut rng = seed();
    let case = case(2, 7, [9, 13], [5, 16]);
    let (x, g) = random(&mut rng, &case);
    for dtype in FLOATS {
        let (xt, gt) = (tensor(&x, &case.x_shape(), dtype, device), tensor(&g, &case.y_shape(), dtype, device));
        let mut y = garbage(&case.y_shape(), dtype, device);
        bilinear_into(&xt, case.output, &mut y).unwrap();
        assert_same("y", &y, &bilinear(&xt, case.output).unwrap());
        let mut dx = garbage(&case.x_shape(), dtype, device);
        bilinear_backward_into(&gt, case.input, &mut dx).unwrap();
        assert_same("grad_x", &dx, &bilinear_backward(&gt, case.input).unwrap());
        if device != Device::Cpu {
            let [cy, cdx] = case.run(&x, &g, dtype, Device::Cpu);
            assert_close(&format!("y vs cpu {dtype}"), &values(&y), &cy, tol(dtype));
            assert_close(&format!("grad_x vs cpu {dtype}"), &values(&dx), &cdx, tol(dtype));
        }
    }
}

#[test]
fn into_overwrites_garbage_and_equals_allocating() {
    into_equals_allocating(Device::Cpu);
}

#[test]
fn into_refuses_bad_outputs() {
    let cpu = Device::Cpu;
    let x = tensor(&[1.0; 24], &[1, 2, 3, 4], DType::F32, cpu);
    let e = bilinear_into(&x, [5, 5], &mut garbage(&[1, 5, 4, 4], DType::F32, cpu)).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`out` has shape [1, 5, 4, 4], expected [1, 5, 5, 4]")), "{e}");
    let e = bilinear_into(&x, [5, 5], &mut garbage(&[1, 5, 5, 4], DType::F16, cpu)).unwrap_err();
    assert!(matches!(e, Error::DType { arg: "out", .. }), "{e}");
    let e = bilinear_backward_into(&x, [3, 3], &mut garbage(&[1, 3, 3, 3], DType::F32, cpu)).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`grad_x` has shape [1, 3, 3, 3], expected [1, 3, 3, 4]")));
}

#[test]
#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
fn cuda_into_overwrites_garbage_and_refuses_a_cpu_output() {
    into_equals_allocating(Device::Cuda(0));
    let x = tensor(&[1.0; 24], &[1, 2, 3, 4], DType::F32, Device::Cuda(0));
    let e = bilinear_into(&x, [3, 3], &mut garbage(&[1, 3, 3, 4], DType::F32, Device::Cpu)).unwrap_err();
    assert!(matches!(&e, Error::Device(m) if m.contains("output `out` is on cpu")), "{e}");
}

#[test]
#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
fn cuda_matches_cpu() {
    let mut rng = seed();
    // 8 video frames of so400m's 27×27 patches at its width, pooled; a 9-tile anyres grid down-sampled; up-sampling.
    for case in [case(8, 1152, [27, 27], [14, 14]), case(1, 896, [81, 78], [55, 53]), case(2, 33, [5, 7], [19, 23])] {
        let (mut x, mut g) = random(&mut rng, &case);
        x[0] = f64::NAN;
        g[0] = f64::NAN;
        for dtype in FLOATS {
            let (cpu, cuda) = (case.run(&x, &g, dtype, Device::Cpu), case.run(&x, &g, dtype, Device::Cuda(0)));
            for (name, (c, g)) in ["y", "grad_x"].iter().zip(cpu.iter().zip(&cuda)) {
                assert_close_nan_where_expected(&format!("{name} {case:?} {dtype}"), g, c, tol(dtype));
            }
        }
    }
}
