//! Tensors over caller-owned memory (the C ABI's and PyTorch's path): no copy in, results visible to the caller.

use unireward::ops::logprobs::{sequence_logprobs, sequence_logprobs_backward_in_place, LogProbsConfig};
use unireward::{DType, Device, Error, Tensor};

#[test]
fn ops_read_and_write_borrowed_cpu_memory() {
    let (n, t, v) = (2, 3, 5);
    let mut logits: Vec<f32> = (0..n * t * v).map(|i| ((i * 37) % 11) as f32 * 0.3 - 1.0).collect();
    let labels: Vec<i64> = vec![1, 4, -100, 0, 2, 3];
    let owned_logits = Tensor::from_slice(&logits, &[n, t, v], Device::Cpu).unwrap();
    // SAFETY: the vectors outlive the tensors and are not touched while the tensors are used.
    let (mut borrowed, labels_t) = unsafe {
        (
            Tensor::from_raw_parts(logits.as_mut_ptr() as u64, &[n, t, v], DType::F32, Device::Cpu).unwrap(),
            Tensor::from_raw_parts(labels.as_ptr() as u64, &[n, t], DType::I64, Device::Cpu).unwrap(),
        )
    };
    let cfg = LogProbsConfig::default();
    let from_borrowed = sequence_logprobs(&borrowed, &labels_t, None, &cfg).unwrap();
    let from_owned = sequence_logprobs(&owned_logits, &labels_t, None, &cfg).unwrap();
    assert_eq!(from_borrowed.logps.to_vec::<f32>().unwrap(), from_owned.logps.to_vec::<f32>().unwrap());

    let grad = Tensor::from_slice(&[1.0f32, -0.5], &[n], Device::Cpu).unwrap();
    sequence_logprobs_backward_in_place(&mut borrowed, &labels_t, None, &from_borrowed, &grad, &cfg).unwrap();
    let copy = borrowed.try_clone().unwrap();
    drop((borrowed, labels_t));
    // The caller's buffer now holds the gradient; the ignored token's row is zero.
    assert_eq!(copy.to_vec::<f32>().unwrap(), logits);
    assert!(logits[2 * v..3 * v].iter().all(|&g| g == 0.0));
    assert!(logits[..v].iter().any(|&g| g != 0.0));
}

#[test]
fn bad_raw_pointers_are_errors() {
    let data = [0u8; 16];
    // SAFETY: each call fails its checks before any memory is read.
    unsafe {
        let misaligned = Tensor::from_raw_parts(data.as_ptr() as u64 | 1, &[2], DType::F32, Device::Cpu).unwrap_err();
        assert!(matches!(misaligned, Error::InvalidArgument(ref m) if m.contains("aligned")), "{misaligned}");
        let null = Tensor::from_raw_parts(0, &[2], DType::F32, Device::Cpu).unwrap_err();
        assert!(matches!(null, Error::InvalidArgument(ref m) if m.contains("null")), "{null}");
        let empty = Tensor::from_raw_parts(0, &[0, 4], DType::F32, Device::Cpu).unwrap();
        assert_eq!(empty.to_vec::<f32>().unwrap(), Vec::<f32>::new());
    }
}
