//! CUDA against CPU: the whole pipeline on every fixture's inputs, in f32 and bf16, and the row ops on awkward
//! shapes.

use unireward::ops::rows::{copy_rows, sum_rows_into};
use unireward::{DType, Device};

use crate::common::{assert_close, normal, seed, tensor, values, Fixture};

#[test]
#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
fn pipeline_on_cuda_matches_cpu() {
    for name in ["wide_unpad", "downsample", "video_odd", "text_only", "batch_mixed"] {
        let inputs = Fixture::load(name).inputs();
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::BF16, 2e-2)] {
            let cpu = inputs.run(dtype, Device::Cpu);
            let cuda = inputs.run(dtype, Device::Cuda(0));
            for ((key, c), (_, g)) in cpu.named().into_iter().zip(cuda.named()) {
                assert_close(&format!("{name} {key} {dtype}"), g, c, tol);
            }
        }
    }
}

#[test]
#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
fn row_ops_on_cuda_match_cpu() {
    let mut rng = seed();
    let (rows, c) = (1000, 1153);
    let src_values = normal(&mut rng, rows * c);
    let src_rows: Vec<usize> = (0..700).map(|k| (k * 37) % rows).collect();
    let dst_rows: Vec<usize> = (0..700).map(|k| (k * 13 + 5) % 701).collect();
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let run = |device| {
            let src = tensor(&src_values, &[rows, c], dtype, device);
            let mut dst = tensor(&vec![3.0; 701 * c], &[701, c], dtype, device);
            copy_rows(&src, &src_rows, &mut dst, &dst_rows).unwrap();
            let mut sum = tensor(&vec![f64::NAN; c], &[c], dtype, device);
            sum_rows_into(&src, &src_rows, &mut sum).unwrap();
            (values(&dst), values(&sum))
        };
        let (cpu, cuda) = (run(Device::Cpu), run(Device::Cuda(0)));
        assert_eq!(cpu.0, cuda.0, "{dtype} copies are exact");
        assert_close(&format!("sum {dtype}"), &cuda.1, &cpu.1, 1e-6);
    }
}
