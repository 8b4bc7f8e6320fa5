use unireward::ops::residual::add_in_place;
use unireward::{DType, Device, Error, Tensor};

use crate::common::*;

#[test]
fn adds_in_every_dtype() {
    let mut rng = seed();
    let shape = [3, 7, 4864 + 5];
    let len = shape.iter().product();
    let (a, b) = (normal(&mut rng, len), normal(&mut rng, len));
    for dtype in FLOATS {
        let mut dst = tensor(&a, &shape, dtype, Device::Cpu);
        add_in_place(&mut dst, &tensor(&b, &shape, dtype, Device::Cpu)).unwrap();
        let want: Vec<f64> = rounded(&a, dtype).iter().zip(rounded(&b, dtype)).map(|(x, y)| x + y).collect();
        assert_eq!(dst.dtype(), dtype);
        assert_close("dst", &values(&dst), &want, tol(dtype));
    }
}

#[test]
fn mismatched_operands_are_errors() {
    let mut dst = Tensor::zeros(&[2, 3], DType::F32, Device::Cpu).unwrap();
    let e = add_in_place(&mut dst, &Tensor::zeros(&[3, 2], DType::F32, Device::Cpu).unwrap()).unwrap_err();
    assert!(matches!(e, Error::Shape(_)) && e.to_string().contains("src"), "{e}");
    let e = add_in_place(&mut dst, &Tensor::zeros(&[2, 3], DType::BF16, Device::Cpu).unwrap()).unwrap_err();
    assert!(matches!(e, Error::DType { arg: "src", .. }), "{e}");
    let mut ints = Tensor::zeros(&[2, 3], DType::I64, Device::Cpu).unwrap();
    let e = add_in_place(&mut ints, &Tensor::zeros(&[2, 3], DType::I64, Device::Cpu).unwrap()).unwrap_err();
    assert!(e.to_string().contains("dst"), "{e}");
    assert_eq!(dst.to_vec::<f32>().unwrap(), vec![0.0; 6], "a refused add leaves dst as it was");
}

#[test]
#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
fn cuda_matches_cpu() {
    let mut rng = seed();
    let len = 512 * 896 + 3;
    let (a, b) = (normal(&mut rng, len), normal(&mut rng, len));
    for dtype in FLOATS {
        let run = |device| {
            let mut dst = tensor(&a, &[len], dtype, device);
            add_in_place(&mut dst, &tensor(&b, &[len], dtype, device)).unwrap();
            values(&dst)
        };
        assert_close("dst", &run(Device::Cuda(0)), &run(Device::Cpu), tol(dtype));
    }
    let mut cpu = Tensor::zeros(&[4], DType::F32, Device::Cpu).unwrap();
    let gpu = Tensor::zeros(&[4], DType::F32, Device::Cuda(0)).unwrap();
    assert!(matches!(add_in_place(&mut cpu, &gpu).unwrap_err(), Error::Device(_)));
}
