//! What every bench shares: the device (CUDA device 0 with `--features gpu-tests`, as scripts/gpu_check.sh builds
//! them; the CPU otherwise), a wait for queued GPU work inside the timing, and deterministic inputs.
// Each bench is its own crate and uses a subset of these.
#![allow(dead_code)]

use half::{bf16, f16};
use unireward::runtime::FloatElement;
use unireward::{DType, Device, Tensor};

pub fn device() -> Device {
    if cfg!(feature = "gpu-tests") {
        Device::Cuda(0)
    } else {
        Device::Cpu
    }
}

/// Waits for queued GPU work (ops return before their kernels finish); nothing on the CPU.
pub fn sync(device: Device) {
    if let Device::Cuda(ordinal) = device {
        unireward::runtime::cuda::backend(ordinal).unwrap().synchronize().unwrap();
    }
}

/// Deterministic values in [offset − scale, offset + scale] (with repeats, so some ties), filled in place on the
/// host (a [1024, 512, 896] f32 tensor is 1.9 GB: no staging copy), then moved to `device`.
pub fn tensor(shape: &[usize], seed: usize, offset: f32, scale: f32, dtype: DType, device: Device) -> Tensor {
    fn fill<T: FloatElement>(dst: &mut [T], seed: usize, offset: f32, scale: f32) {
        dst.iter_mut()
            .enumerate()
            .for_each(|(i, x)| *x = T::from_f32(offset + scale * ((((i + seed) * 7919) % 1000) as f32 / 500.0 - 1.0)));
    }
    let mut t = Tensor::zeros(shape, dtype, Device::Cpu).unwrap();
    match dtype {
        DType::F32 => fill(t.as_mut_slice::<f32>().unwrap(), seed, offset, scale),
        DType::BF16 => fill(t.as_mut_slice::<bf16>().unwrap(), seed, offset, scale),
        DType::F16 => fill(t.as_mut_slice::<f16>().unwrap(), seed, offset, scale),
        other => panic!("not a float dtype: {other}"),
    }
    if device == Device::Cpu {
        t
    } else {
        t.to_device(device).unwrap()
    }
}
