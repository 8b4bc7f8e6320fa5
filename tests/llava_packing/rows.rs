//! The row-copy op: copies, sums, and its refusals.

use unireward::ops::rows::{copy_rows, sum_rows_into};
use unireward::{DType, Device, Tensor};

use crate::common::{normal, seed, tensor, values};

#[test]
fn copies_and_sums_listed_rows_in_every_dtype() {
    let mut rng = seed();
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let src_values = normal(&mut rng, 5 * 3);
        let src = tensor(&src_values, &[5, 3], dtype, Device::Cpu);
        let rounded = values(&src);
        let mut dst = tensor(&[7.0; 12], &[2, 2, 3], dtype, Device::Cpu);
        copy_rows(&src, &[4, 0, 4], &mut dst, &[3, 0, 1]).unwrap();
        let d = values(&dst);
        assert_eq!(&d[9..12], &rounded[12..15]);
        assert_eq!(&d[0..3], &rounded[0..3]);
        assert_eq!(&d[3..6], &rounded[12..15]);
        assert_eq!(&d[6..9], &[7.0; 3], "an unlisted row keeps its values");
        let mut sum = tensor(&[f64::NAN; 3], &[3], dtype, Device::Cpu);
        sum_rows_into(&src, &[1, 3, 1], &mut sum).unwrap();
        let want: Vec<f64> = (0..3).map(|j| rounded[3 + j] * 2.0 + rounded[9 + j]).collect();
        let got = values(&sum);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-2 * w.abs().max(1.0), "{dtype}: {got:?} vs {want:?}");
        }
        sum_rows_into(&src, &[], &mut sum).unwrap();
        assert_eq!(values(&sum), vec![0.0; 3]);
    }
}

#[test]
fn refuses_bad_rows_before_writing() {
    let src = Tensor::zeros(&[4, 3], DType::F32, Device::Cpu).unwrap();
    let mut dst = tensor(&[1.0; 6], &[2, 3], DType::F32, Device::Cpu);
    let e = copy_rows(&src, &[0, 4], &mut dst, &[0, 1]).unwrap_err().to_string();
    assert!(e.contains("`src_rows`[1] = 4") && e.contains("4 rows"), "{e}");
    let e = copy_rows(&src, &[0, 1], &mut dst, &[1, 1]).unwrap_err().to_string();
    assert!(e.contains("`dst_rows`[1] = 1 repeats"), "{e}");
    let e = copy_rows(&src, &[0], &mut dst, &[0, 1]).unwrap_err().to_string();
    assert!(e.contains("lists 1 rows") && e.contains("2"), "{e}");
    let mut wide = Tensor::zeros(&[2, 4], DType::F32, Device::Cpu).unwrap();
    let e = copy_rows(&src, &[0], &mut wide, &[0]).unwrap_err().to_string();
    assert!(e.contains("3 elements") && e.contains("4"), "{e}");
    let mut bf = Tensor::zeros(&[2, 3], DType::BF16, Device::Cpu).unwrap();
    assert!(copy_rows(&src, &[0], &mut bf, &[0]).is_err());
    assert_eq!(values(&dst), vec![1.0; 6], "nothing written");
    let mut out = Tensor::zeros(&[4], DType::F32, Device::Cpu).unwrap();
    let e = sum_rows_into(&src, &[0], &mut out).unwrap_err().to_string();
    assert!(e.contains("out"), "{e}");
    let mut out = Tensor::zeros(&[3], DType::F32, Device::Cpu).unwrap();
    let e = sum_rows_into(&src, &[9], &mut out).unwrap_err().to_string();
    assert!(e.contains("`rows`[0] = 9"), "{e}");
}
