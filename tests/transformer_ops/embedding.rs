use rand::Rng;
use unireward::ops::embedding::{
    embedding, embedding_backward, embedding_backward_accumulate, embedding_backward_into, embedding_into,
};
use unireward::{DType, Device, Error};

use crate::common::*;

/// f64 reference: the gathered rows and the table gradient.
fn reference(table: &[f64], h: usize, ids: &[i64], grad_out: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let mut out = Vec::with_capacity(ids.len() * h);
    let mut grad = vec![0.0; table.len()];
    for (p, &id) in ids.iter().enumerate() {
        let id = id as usize;
        out.extend_from_slice(&table[id * h..(id + 1) * h]);
        for j in 0..h {
            grad[id * h + j] += grad_out[p * h + j];
        }
    }
    (out, grad)
}

#[test]
fn matches_pytorch_fixture() {
    let f = Fixture::load("embedding");
    let (v, h, shape, id_values) = (f.usize("v"), f.usize("h"), f.usizes("ids_shape"), f.i64s("ids"));
    let mut out_shape = shape.clone();
    out_shape.push(h);
    for id_dtype in [DType::I32, DType::I64] {
        let table = tensor(&f.f64s("table"), &[v, h], DType::F32, Device::Cpu);
        let ids_t = ids(&id_values, &shape, id_dtype, Device::Cpu);
        let out = embedding(&table, &ids_t).unwrap();
        assert_eq!(out.shape(), &out_shape[..]);
        assert_close("out", &values(&out), &f.f64s("out"), 1e-6);
        let grad_out = tensor(&f.f64s("grad_out"), &out_shape, DType::F32, Device::Cpu);
        let grad = embedding_backward(&grad_out, &ids_t, v).unwrap();
        assert_close("grad_table", &values(&grad), &f.f64s("grad_table"), 1e-6);
    }
}

#[test]
fn random_awkward_shapes_every_dtype_and_finite_differences() {
    let mut rng = seed();
    // V not a multiple of any block, H not a multiple of a warp, T = 1, heavy repeats.
    for (v, h, n, t) in [(1001, 257, 3, 7), (5, 1, 1, 1), (3, 33, 4, 50)] {
        let table = normal(&mut rng, v * h);
        let id_values: Vec<i64> = (0..n * t).map(|_| rng.gen_range(0..v as i64)).collect();
        let grad_out = normal(&mut rng, n * t * h);
        for dtype in FLOATS {
            let (table_r, grad_r) = (rounded(&table, dtype), rounded(&grad_out, dtype));
            let (want_out, want_grad) = reference(&table_r, h, &id_values, &grad_r);
            let ids_t = ids(&id_values, &[n, t], DType::I64, Device::Cpu);
            let out = embedding(&tensor(&table, &[v, h], dtype, Device::Cpu), &ids_t).unwrap();
            assert_eq!(out.dtype(), dtype);
            assert_close("out", &values(&out), &want_out, 0.0);
            let grad = embedding_backward(&tensor(&grad_out, &[n, t, h], dtype, Device::Cpu), &ids_t, v).unwrap();
            assert_eq!((grad.dtype(), grad.shape()), (dtype, &[v, h][..]));
            assert_close("grad_table", &values(&grad), &want_grad, tol(dtype));
            if dtype == DType::F32 {
                let loss = |tb: &[f64]| dot(&reference(tb, h, &id_values, &grad_out).0, &grad_out);
                assert_fd("grad_table", &values(&grad), &finite_differences(&table, 40, loss));
            }
        }
    }
}

#[test]
fn backward_is_deterministic() {
    let mut rng = seed();
    let (v, h) = (7, 64);
    let id_values: Vec<i64> = (0..2000).map(|_| rng.gen_range(0..v as i64)).collect();
    let grad_out = tensor(&normal(&mut rng, 2000 * h), &[2000, h], DType::F32, Device::Cpu);
    let ids_t = ids(&id_values, &[2000], DType::I32, Device::Cpu);
    let a = embedding_backward(&grad_out, &ids_t, v).unwrap().to_vec::<f32>().unwrap();
    let b = embedding_backward(&grad_out, &ids_t, v).unwrap().to_vec::<f32>().unwrap();
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
}

#[test]
fn bad_input() {
    let table = tensor(&[0.0; 12], &[4, 3], DType::F32, Device::Cpu);
    let e = embedding(&table, &ids(&[1, 4], &[2], DType::I64, Device::Cpu)).unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("holds 4 at flat position 1")), "{e}");
    let e = embedding(&table, &ids(&[-1], &[1], DType::I32, Device::Cpu)).unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("outside the vocabulary [0, 4)")), "{e}");
    let e = embedding(&table, &tensor(&[1.0], &[1], DType::F32, Device::Cpu)).unwrap_err();
    assert!(matches!(e, Error::DType { arg: "ids", .. }), "{e}");
    let e = embedding(&tensor(&[0.0; 4], &[4], DType::F32, Device::Cpu), &ids(&[0], &[1], DType::I32, Device::Cpu))
        .unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`table` must have rank 2")), "{e}");
    let e = embedding(&table, &ids(&[], &[0], DType::I32, Device::Cpu)).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`ids` is empty")), "{e}");
    let grad = tensor(&[0.0; 6], &[2, 3], DType::F32, Device::Cpu);
    let e = embedding_backward(&grad, &ids(&[0, 1, 2], &[3], DType::I32, Device::Cpu), 4).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`grad_out` has shape [2, 3], expected [3, 3]")), "{e}");
    let e = embedding_backward(&grad, &ids(&[0, 9], &[2], DType::I32, Device::Cpu), 4).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
}

/// The `_into` variants over NaN-filled outputs give the allocating versions' bits, in every dtype on `device`,
/// with ids that leave most vocabulary rows untouched; on CUDA also equal to the CPU's (same f32 sums).
fn into_equals_allocating(device: Device) {
    let mut rng = seed();
    let (v, h, n, t) = (1001, 257, 3, 7);
    let (table, grad_out) = (normal(&mut rng, v * h), normal(&mut rng, n * t * h));
    let id_values: Vec<i64> = (0..n * t).map(|_| rng.gen_range(0..v as i64 / 3)).collect();
    for dtype in FLOATS {
        let (tt, gt) = (tensor(&table, &[v, h], dtype, device), tensor(&grad_out, &[n, t, h], dtype, device));
        let ids_t = ids(&id_values, &[n, t], DType::I32, device);
        let mut out = garbage(&[n, t, h], dtype, device);
        embedding_into(&tt, &ids_t, &mut out).unwrap();
        assert_same("out", &out, &embedding(&tt, &ids_t).unwrap());
        let mut grad = garbage(&[v, h], dtype, device);
        embedding_backward_into(&gt, &ids_t, v, &mut grad).unwrap();
        let fresh = embedding_backward(&gt, &ids_t, v).unwrap();
        assert_same("grad_table", &grad, &fresh);
        // Accumulating onto a tied head's gradient: each occurring row gains its f32 sum (one rounding to the
        // dtype), the others keep their values.
        let prior = rounded(&normal(&mut rng, v * h), dtype);
        let mut summed = tensor(&prior, &[v, h], dtype, device);
        embedding_backward_accumulate(&gt, &ids_t, v, &mut summed).unwrap();
        let want: Vec<f64> = prior.iter().zip(values(&fresh)).map(|(p, g)| p + g).collect();
        assert_close("grad_table accumulated", &values(&summed), &want, tol(dtype));
        let untouched = (0..v).filter(|r| !id_values.contains(&(*r as i64)));
        for row in untouched {
            let (got, kept) = (&values(&summed)[row * h..(row + 1) * h], &prior[row * h..(row + 1) * h]);
            assert_eq!(got, kept, "row {row} has no token and keeps its value");
        }
        if device != Device::Cpu {
            let ids_cpu = ids(&id_values, &[n, t], DType::I64, Device::Cpu);
            let cpu = embedding(&tensor(&table, &[v, h], dtype, Device::Cpu), &ids_cpu).unwrap();
            assert_close("out vs cpu", &values(&out), &values(&cpu), 0.0);
            let cpu = embedding_backward(&tensor(&grad_out, &[n, t, h], dtype, Device::Cpu), &ids_cpu, v).unwrap();
            assert_close("grad_table vs cpu", &values(&grad), &values(&cpu), 1e-6);
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
    let (table, id_t) = (tensor(&[0.0; 12], &[4, 3], DType::F32, cpu), ids(&[0, 3], &[2], DType::I64, cpu));
    let e = embedding_into(&table, &id_t, &mut garbage(&[2, 4], DType::F32, cpu)).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`out` has shape [2, 4], expected [2, 3]")), "{e}");
    let e = embedding_into(&table, &id_t, &mut garbage(&[2, 3], DType::BF16, cpu)).unwrap_err();
    assert!(matches!(e, Error::DType { arg: "out", .. }), "{e}");
    let grad = tensor(&[0.0; 6], &[2, 3], DType::F32, cpu);
    let e = embedding_backward_into(&grad, &id_t, 4, &mut garbage(&[5, 3], DType::F32, cpu)).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("`grad_table` has shape [5, 3], expected [4, 3]")), "{e}");
    let e = embedding_backward_into(&grad, &id_t, 4, &mut garbage(&[4, 3], DType::F16, cpu)).unwrap_err();
    assert!(matches!(e, Error::DType { arg: "grad_table", .. }), "{e}");
}

#[test]
#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
fn cuda_into_overwrites_garbage_and_refuses_a_cpu_output() {
    into_equals_allocating(Device::Cuda(0));
    let gpu = Device::Cuda(0);
    let (table, id_t) = (tensor(&[0.0; 12], &[4, 3], DType::F32, gpu), ids(&[0, 3], &[2], DType::I64, gpu));
    let e = embedding_into(&table, &id_t, &mut garbage(&[2, 3], DType::F32, Device::Cpu)).unwrap_err();
    assert!(matches!(&e, Error::Device(m) if m.contains("output `out` is on cpu")), "{e}");
}

#[test]
#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
fn cuda_matches_cpu() {
    let (gpu, mut rng) = (Device::Cuda(0), seed());
    for (v, h, n, t) in [(1001, 257, 3, 7), (151_936, 896, 2, 64), (5, 1, 1, 1)] {
        let table = normal(&mut rng, v * h);
        let id_values: Vec<i64> = (0..n * t).map(|_| rng.gen_range(0..v as i64)).collect();
        let grad_out = normal(&mut rng, n * t * h);
        for dtype in FLOATS {
            let ids_cpu = ids(&id_values, &[n, t], DType::I64, Device::Cpu);
            let ids_gpu = ids(&id_values, &[n, t], DType::I32, gpu);
            let cpu = embedding(&tensor(&table, &[v, h], dtype, Device::Cpu), &ids_cpu).unwrap();
            let cuda = embedding(&tensor(&table, &[v, h], dtype, gpu), &ids_gpu).unwrap();
            assert_close("out", &values(&cuda), &values(&cpu), 0.0);
            let cpu = embedding_backward(&tensor(&grad_out, &[n, t, h], dtype, Device::Cpu), &ids_cpu, v).unwrap();
            let cuda = embedding_backward(&tensor(&grad_out, &[n, t, h], dtype, gpu), &ids_gpu, v).unwrap();
            assert_eq!(cuda.device(), gpu);
            let again = embedding_backward(&tensor(&grad_out, &[n, t, h], dtype, gpu), &ids_gpu, v).unwrap();
            assert_eq!(values(&again), values(&cuda), "the CUDA backward is deterministic");
            assert_close("grad_table", &values(&cuda), &values(&cpu), 1e-6);
        }
    }
    let table = tensor(&[0.0; 12], &[4, 3], DType::F32, gpu);
    let e = embedding(&table, &ids(&[4], &[1], DType::I64, gpu)).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    let e = embedding(&table, &ids(&[0], &[1], DType::I64, Device::Cpu)).unwrap_err();
    assert!(matches!(e, Error::Device(_)), "{e}");
}
