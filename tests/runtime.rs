//! The runtime: tensors on the CPU (every dtype), errors for bad shapes and dtypes, CUDA refused cleanly where
//! there is no GPU, and the CPU matrix product against a float64 loop.

use half::{bf16, f16};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use unireward::runtime::cpu::{isa, matmul, matmul_bf16, matmul_mixed, rows_per_task, with_isa, Isa, MatRef};
use unireward::runtime::{cuda, Element, FloatElement};
use unireward::{DType, Device, Error, Tensor};

/// A seeded generator; the seed is printed so that a failure can be replayed with `UNIREWARD_SEED`.
fn rng() -> StdRng {
    let seed = std::env::var("UNIREWARD_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("seed {seed} (replay with UNIREWARD_SEED={seed})");
    StdRng::seed_from_u64(seed)
}

fn round_trip<T: Element + PartialEq>(values: Vec<T>) {
    let n = values.len();
    let t = Tensor::from_slice(&values, &[n / 2, 2], Device::Cpu).unwrap();
    assert_eq!((t.shape(), t.strides(), t.rank()), (&[n / 2, 2][..], &[2, 1][..], 2));
    assert_eq!((t.dtype(), t.device(), t.numel()), (T::DTYPE, Device::Cpu, n));
    assert_eq!(t.size_in_bytes(), n * T::DTYPE.size_in_bytes());
    assert!(t.is_contiguous());
    assert_eq!(t.as_slice::<T>().unwrap(), &values[..]);
    assert_eq!(t.to_vec::<T>().unwrap(), values);
    assert_eq!(t.to_device(Device::Cpu).unwrap().to_vec::<T>().unwrap(), values);
}

#[test]
fn from_slice_and_to_vec_round_trip_every_dtype() {
    round_trip(vec![0.0f32, -1.5, f32::MAX, f32::MIN_POSITIVE, 1e-42, -0.0]);
    round_trip([0.0f32, -1.5, 3.0e38, 1e-3, 65504.0, 7.0].map(bf16::from_f32).to_vec());
    round_trip([0.0f32, -1.5, 65504.0, 6.1e-5, 1e-7, 7.0].map(f16::from_f32).to_vec());
    round_trip(vec![0i32, -1, i32::MAX, i32::MIN, -100, 151_935]);
    round_trip(vec![0i64, -1, i64::MAX, i64::MIN, -100, (1 << 53) + 1]);
    // NaN compares unequal, so check its bits.
    let nan = Tensor::from_slice(&[f32::NAN], &[1], Device::Cpu).unwrap();
    assert!(nan.to_vec::<f32>().unwrap()[0].is_nan());
}

#[test]
fn scalars_and_empty_tensors() {
    let s = Tensor::scalar(2.5f32, Device::Cpu).unwrap();
    assert_eq!((s.shape(), s.rank(), s.numel()), (&[][..], 0, 1));
    assert_eq!(s.to_vec::<f32>().unwrap(), vec![2.5]);
    for shape in [&[0][..], &[3, 0], &[0, 5, 7]] {
        let e = Tensor::from_slice::<bf16>(&[], shape, Device::Cpu).unwrap();
        assert_eq!((e.numel(), e.size_in_bytes()), (0, 0));
        assert!(e.as_slice::<bf16>().unwrap().is_empty());
        assert!(Tensor::zeros(shape, DType::I64, Device::Cpu).unwrap().to_vec::<i64>().unwrap().is_empty());
    }
}

#[test]
fn zeros_every_dtype() {
    let shape = [3, 5, 7];
    for dtype in [DType::F32, DType::BF16, DType::F16, DType::I32, DType::I64] {
        let t = Tensor::zeros(&shape, dtype, Device::Cpu).unwrap();
        assert_eq!((t.shape(), t.strides(), t.dtype()), (&shape[..], &[35, 7, 1][..], dtype));
        let zero = match dtype {
            DType::F32 => t.as_slice::<f32>().unwrap().iter().all(|&v| v.to_bits() == 0),
            DType::BF16 => t.as_slice::<bf16>().unwrap().iter().all(|v| v.to_bits() == 0),
            DType::F16 => t.as_slice::<f16>().unwrap().iter().all(|v| v.to_bits() == 0),
            DType::I32 => t.as_slice::<i32>().unwrap().iter().all(|&v| v == 0),
            DType::I64 => t.as_slice::<i64>().unwrap().iter().all(|&v| v == 0),
        };
        assert!(zero && t.numel() == 105, "{dtype}");
    }
}

/// Large freed host buffers are kept for reuse (src/runtime/host_cache.rs): whatever a freed tensor held, the next
/// tensor of that size starts as zeros, or as exactly the copied data.
#[test]
fn reused_host_buffers_come_back_zeroed() {
    use unireward::runtime::host_cache::MIN_CACHED_BYTES;
    let len = MIN_CACHED_BYTES / 4 * 3 + 5;
    for round in 0..3 {
        let mut t = Tensor::zeros(&[len], DType::F32, Device::Cpu).unwrap();
        assert!(t.as_slice::<f32>().unwrap().iter().all(|&x| x.to_bits() == 0), "round {round}");
        t.as_mut_slice::<f32>().unwrap().fill(f32::NAN);
        drop(t);
        let data: Vec<f32> = (0..len).map(|i| i as f32).collect();
        let copied = Tensor::from_slice(&data, &[len], Device::Cpu).unwrap();
        assert_eq!(copied.as_slice::<f32>().unwrap(), &data[..]);
        // Same byte count, another dtype (and a length that is not a whole number of words).
        let halves = Tensor::zeros(&[len * 2 - 1], DType::BF16, Device::Cpu).unwrap();
        assert!(halves.as_slice::<bf16>().unwrap().iter().all(|x| x.to_bits() == 0), "round {round}");
        // A smaller tensor may reuse a larger freed buffer: it still reads exactly its own zeros.
        let mut large = Tensor::zeros(&[len * 2], DType::F32, Device::Cpu).unwrap();
        large.as_mut_slice::<f32>().unwrap().fill(f32::NAN);
        drop(large);
        let smaller = Tensor::zeros(&[len * 3 / 2], DType::F32, Device::Cpu).unwrap();
        assert_eq!(smaller.numel(), len * 3 / 2);
        assert!(smaller.as_slice::<f32>().unwrap().iter().all(|&x| x.to_bits() == 0), "round {round}");
    }
}

#[test]
fn shape_mismatches_are_errors() {
    let err = Tensor::from_slice(&[1.0f32; 5], &[2, 3], Device::Cpu).unwrap_err();
    assert!(matches!(&err, Error::Shape(m) if m.contains('5') && m.contains("[2, 3]")), "{err}");
    let err = Tensor::zeros(&[usize::MAX, 2], DType::F32, Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::Shape(_)), "{err}");
    let err = Tensor::from_slice::<i32>(&[], &[usize::MAX, usize::MAX], Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::Shape(_)), "{err}");
}

#[test]
fn reshape_keeps_data_and_refuses_other_sizes() {
    let data: Vec<i32> = (0..24).collect();
    let t = Tensor::from_slice(&data, &[2, 3, 4], Device::Cpu).unwrap();
    let t = t.reshape(&[4, 6]).unwrap();
    assert_eq!((t.shape(), t.strides()), (&[4, 6][..], &[6, 1][..]));
    assert_eq!(t.to_vec::<i32>().unwrap(), data);
    let t = t.reshape(&[24]).unwrap().reshape(&[1, 24, 1]).unwrap();
    assert_eq!(t.to_vec::<i32>().unwrap(), data);
    let err = t.try_clone().unwrap().reshape(&[5, 5]).unwrap_err();
    assert!(matches!(&err, Error::Shape(m) if m.contains("[5, 5]")), "{err}");
    let err = t.reshape(&[usize::MAX, 3]).unwrap_err();
    assert!(matches!(err, Error::Shape(_)), "{err}");
}

#[test]
fn wrong_dtype_access_is_an_error() {
    let mut t = Tensor::zeros(&[4], DType::BF16, Device::Cpu).unwrap();
    let err = t.as_slice::<f32>().unwrap_err();
    assert!(matches!(err, Error::DType { got: DType::BF16, .. }), "{err}");
    assert!(matches!(t.as_mut_slice::<f16>().unwrap_err(), Error::DType { .. }));
    assert!(matches!(t.to_vec::<i64>().unwrap_err(), Error::DType { .. }));
    assert!(matches!(t.cuda_ptr(), Err(Error::Device(_))));
    assert!(matches!(t.cuda_ptr_mut(), Err(Error::Device(_))));
}

#[test]
fn writes_through_as_mut_slice_and_clones_are_deep() {
    let mut t = Tensor::zeros(&[2, 2], DType::F16, Device::Cpu).unwrap();
    t.as_mut_slice::<f16>().unwrap()[3] = f16::from_f32(1.5);
    let mut c = t.try_clone().unwrap();
    c.as_mut_slice::<f16>().unwrap()[0] = f16::ONE;
    assert_eq!(t.to_vec::<f16>().unwrap(), [0.0, 0.0, 0.0, 1.5].map(f16::from_f32));
    assert_eq!(c.to_vec::<f16>().unwrap(), [1.0, 0.0, 0.0, 1.5].map(f16::from_f32));
}

#[test]
fn to_dtype_rounds_to_nearest_and_refuses_float_to_integer() {
    let mut rng = rng();
    let values: Vec<f32> = (0..1000).map(|_| rng.gen_range(-1e4f32..1e4) * rng.gen::<f32>().powi(8)).collect();
    let t = Tensor::from_slice(&values, &[10, 100], Device::Cpu).unwrap();
    let b = t.to_dtype(DType::BF16).unwrap();
    assert_eq!((b.dtype(), b.shape()), (DType::BF16, &[10, 100][..]));
    assert_eq!(b.to_vec::<bf16>().unwrap(), values.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>());
    let h = t.to_dtype(DType::F16).unwrap();
    assert_eq!(h.to_vec::<f16>().unwrap(), values.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>());
    // Widening is exact.
    let back: Vec<f32> = b.to_dtype(DType::F32).unwrap().to_vec().unwrap();
    assert_eq!(back, values.iter().map(|&v| bf16::from_f32(v).to_f32()).collect::<Vec<_>>());
    assert_eq!(t.to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap(), values);

    let ids = Tensor::from_slice(&[-100i64, 0, 151_935], &[3], Device::Cpu).unwrap();
    assert_eq!(ids.to_dtype(DType::I32).unwrap().to_vec::<i32>().unwrap(), vec![-100, 0, 151_935]);
    assert_eq!(ids.to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap(), vec![-100.0, 0.0, 151_935.0]);
    for target in [DType::I32, DType::I64] {
        let err = h.to_dtype(target).unwrap_err();
        assert!(matches!(err, Error::DType { got: DType::F16, .. }), "{err}");
    }
}

#[test]
fn integer_conversions_are_exact_or_refused() {
    let big = [i64::MAX, i64::MIN, (1 << 53) + 1, -((1 << 60) + 3)];
    let t = Tensor::from_slice(&big, &[4], Device::Cpu).unwrap();
    assert_eq!(t.to_dtype(DType::I64).unwrap().to_vec::<i64>().unwrap(), big);
    let err = t.to_dtype(DType::I32).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    let small = Tensor::from_slice(&[i32::MAX, i32::MIN], &[2], Device::Cpu).unwrap();
    assert_eq!(small.to_dtype(DType::I64).unwrap().to_vec::<i64>().unwrap(), [i32::MAX as i64, i32::MIN as i64]);
}

#[test]
fn from_f32_and_to_f32_cow() {
    let values = [0.1f32, -2.0, 1e4, 3.3e-3];
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let t = Tensor::from_f32(&values, &[2, 2], dtype, Device::Cpu).unwrap();
        assert_eq!(t.dtype(), dtype);
        let expected = Tensor::from_slice(&values, &[2, 2], Device::Cpu).unwrap().to_dtype(dtype).unwrap();
        assert_eq!(t.to_f32_cow().unwrap(), expected.to_f32_cow().unwrap());
    }
    assert!(matches!(Tensor::from_f32(&values, &[4], DType::I32, Device::Cpu), Err(Error::DType { .. })));
    let ids = Tensor::zeros(&[2], DType::I64, Device::Cpu).unwrap();
    assert!(matches!(ids.to_f32_cow(), Err(Error::DType { .. })));
}

/// Asking for a GPU fails cleanly with `CudaUnavailable` on a machine without one (this test machine), and works
/// on a machine with one.
#[test]
fn cuda_device_is_an_error_without_a_gpu() {
    let count = cuda::device_count();
    println!(
        "CUDA devices: {count}, driver present: {}, NVRTC present: {}",
        cuda::driver_present(),
        cuda::nvrtc_present()
    );
    let host = Tensor::from_slice(&[1.0f32, 2.0, 3.0], &[3], Device::Cpu).unwrap();
    let missing = Device::Cuda(count);
    let unavailable = |r: unireward::Result<Tensor>| match r {
        Err(Error::CudaUnavailable(m)) => assert!(!m.is_empty()),
        other => panic!("expected CudaUnavailable for {missing}, got {other:?}"),
    };
    unavailable(Tensor::zeros(&[3], DType::F32, missing));
    unavailable(Tensor::from_slice(&[1i32], &[1], missing));
    unavailable(host.to_device(missing));
    assert!(matches!(cuda::backend(count), Err(Error::CudaUnavailable(_))));
    if count == 0 {
        assert!(!cuda::is_available());
        unavailable(Tensor::zeros(&[3], DType::F32, Device::Cuda(0)));
        return;
    }
    // A GPU is present: the same calls succeed and data survives the round trip.
    let gpu = host.to_device(Device::Cuda(0)).unwrap();
    assert_eq!(gpu.device(), Device::Cuda(0));
    assert!(gpu.cuda_ptr().is_ok() && gpu.as_slice::<f32>().is_err());
    assert_eq!(gpu.to_vec::<f32>().unwrap(), vec![1.0, 2.0, 3.0]);
    assert_eq!(gpu.to_dtype(DType::BF16).unwrap().device(), Device::Cuda(0));
    let z = Tensor::zeros(&[5], DType::I64, Device::Cuda(0)).unwrap();
    assert_eq!(z.try_clone().unwrap().to_device(Device::Cpu).unwrap().to_vec::<i64>().unwrap(), vec![0; 5]);
}

#[test]
fn launch_config_refuses_empty_and_huge_grids() {
    assert!(matches!(cuda::launch_config(0, 256, 0), Err(Error::InvalidArgument(_))));
    assert!(matches!(cuda::launch_config(1 << 32, 256, 0), Err(Error::InvalidArgument(_))));
    let cfg = cuda::launch_config(7, 128, 64).unwrap();
    assert_eq!((cfg.grid_dim, cfg.block_dim, cfg.shared_mem_bytes), ((7, 1, 1), (128, 1, 1), 64));
}

#[test]
fn rows_per_task_stays_in_range() {
    for (rows, len) in [(0, 0), (1, 1), (1, 1 << 20), (4096, 1), (2048, 151_936), (7, 3)] {
        let r = rows_per_task(rows, len);
        assert!(r >= 1 && r <= rows.max(1), "rows {rows}, len {len}: {r}");
    }
}

/// `a · b` in f64, with the same strided views.
fn matmul_f64(a: MatRef<'_>, b: MatRef<'_>) -> Vec<f64> {
    let at = |m: MatRef<'_>, i: usize, j: usize| m.data[i * m.row_stride + j * m.col_stride] as f64;
    let mut out = vec![0.0; a.rows * b.cols];
    for i in 0..a.rows {
        for j in 0..b.cols {
            out[i * b.cols + j] = (0..a.cols).map(|k| at(a, i, k) * at(b, k, j)).sum();
        }
    }
    out
}

/// Σ|a||b| per output element: the scale of the rounding error of each dot product.
fn abs_products(a: MatRef<'_>, b: MatRef<'_>) -> Vec<f64> {
    let ad: Vec<f32> = a.data.iter().map(|v| v.abs()).collect();
    let bd: Vec<f32> = b.data.iter().map(|v| v.abs()).collect();
    matmul_f64(MatRef { data: &ad, ..a }, MatRef { data: &bd, ..b })
}

/// `dst` = `beta · start + a · b` within f32's rounding of each dot product (its length times ε, on the scale of
/// Σ|a||b|).
fn assert_product(dst: &[f32], start: &[f32], beta: f32, a: MatRef<'_>, b: MatRef<'_>, what: &str) {
    let (exact, scale, k) = (matmul_f64(a, b), abs_products(a, b), a.cols as f64);
    for i in 0..dst.len() {
        let want = beta as f64 * start[i] as f64 + exact[i];
        let tol = 4.0 * (k + 2.0) * f32::EPSILON as f64 * (scale[i] + start[i].abs() as f64) + 1e-30;
        assert!((dst[i] as f64 - want).abs() <= tol, "{what}: [{i}] {} vs {want}", dst[i]);
    }
}

/// f32 products on every level this CPU has (`gemm`'s AVX-512, AVX2 + FMA and scalar kernels) against float64.
#[test]
fn matmul_matches_f64_on_awkward_shapes_and_views() {
    let mut rng = rng();
    let shapes = [
        (1, 1, 1),
        (3, 5, 7),
        (17, 1, 33),
        (1, 300, 1),
        (64, 129, 31),
        (130, 67, 257),
        (5, 0, 4),
        (7, 1023, 33),
        (1023, 7, 1),
        (33, 1, 1023),
    ];
    for (isa, &(m, k, n)) in available_isas().into_iter().flat_map(|isa| shapes.iter().map(move |s| (isa, s))) {
        for (a_t, b_t, beta) in [(false, false, 0.0), (true, false, 1.0), (false, true, 0.5), (true, true, 0.0)] {
            // Stored transposed when `a_t`, then viewed back with `.t()`: the product sees an m × k matrix either way.
            let a_data: Vec<f32> = (0..m * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let b_data: Vec<f32> = (0..k * n).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let a = if a_t { MatRef::row_major(&a_data, k, m).t() } else { MatRef::row_major(&a_data, m, k) };
            let b = if b_t { MatRef::row_major(&b_data, n, k).t() } else { MatRef::row_major(&b_data, k, n) };
            let start: Vec<f32> = (0..m * n).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let mut dst = start.clone();
            with_isa(isa, || matmul(&mut dst, a, b, beta)).unwrap();
            let what = format!("{isa:?} m {m} k {k} n {n} a_t {a_t} b_t {b_t} beta {beta}");
            assert_product(&dst, &start, beta, a, b, &what);
        }
    }
}

/// A bf16/f16 right operand (a weight in its storage dtype), widened panel by panel inside the product, gives the
/// product of the widened values: shapes spanning several 2^20-element panels, row-major and transposed, a row
/// stride past the row's end, and the accumulating `beta`.
#[test]
fn mixed_matmul_matches_f64_of_the_widened_operand() {
    fn check<T: FloatElement>(rng: &mut StdRng, (m, k, n): (usize, usize, usize), transposed: bool, pad: usize) {
        let a_data: Vec<f32> = (0..m * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let a = MatRef::row_major(&a_data, m, k);
        // Stored as n × k (transposed) or k × n, each row followed by `pad` unused elements.
        let (rows, cols) = if transposed { (n, k) } else { (k, n) };
        let stored: Vec<T> = (0..rows * (cols + pad)).map(|_| T::from_f32(rng.gen_range(-1.0..1.0))).collect();
        let view = MatRef { data: &stored[..], rows, cols, row_stride: cols + pad, col_stride: 1 };
        let b = if transposed { view.t() } else { view };
        let widened: Vec<f32> = stored.iter().map(|v| v.to_f32()).collect();
        let b32 = MatRef {
            data: &widened[..],
            rows: b.rows,
            cols: b.cols,
            row_stride: b.row_stride,
            col_stride: b.col_stride,
        };
        let start: Vec<f32> = (0..m * n).map(|_| rng.gen_range(-1.0..1.0)).collect();
        for (isa, beta) in available_isas().into_iter().flat_map(|isa| [(isa, 0.0f32), (isa, 0.5)]) {
            let mut dst = start.clone();
            with_isa(isa, || matmul_mixed(&mut dst, a, b, beta)).unwrap();
            let what = format!("{isa:?} {:?} m {m} k {k} n {n} transposed {transposed} beta {beta}", T::DTYPE);
            assert_product(&dst, &start, beta, a, b32, &what);
        }
    }
    let mut rng = rng();
    for (shape, pad) in [((1, 1, 1), 0), ((2, 3000, 700), 0), ((2, 7, 400_000), 3), ((5, 33, 1), 1), ((0, 4, 5), 0)] {
        for transposed in [false, true] {
            check::<bf16>(&mut rng, shape, transposed, pad);
            check::<f16>(&mut rng, shape, transposed, pad);
            check::<f32>(&mut rng, shape, transposed, pad);
        }
    }
}

/// The levels this CPU runs (each product path it has, down to the portable one).
fn available_isas() -> Vec<Isa> {
    Isa::ALL.into_iter().filter(|isa| isa.available()).collect()
}

/// `values` stored as `rows × cols` (row-major, each row followed by `pad` unused elements), viewed transposed when
/// `transposed`: a strided view of a `cols × rows` (transposed) or `rows × cols` matrix.
fn strided<T>(values: &[T], (rows, cols): (usize, usize), pad: usize, transposed: bool) -> MatRef<'_, T> {
    let view = MatRef { data: values, rows, cols, row_stride: cols + pad, col_stride: 1 };
    if transposed {
        view.t()
    } else {
        view
    }
}

/// The same view over the f32 widening of `data`.
fn widened_view<'a>(view: MatRef<'_, bf16>, wide: &'a [f32]) -> MatRef<'a, f32> {
    let MatRef { rows, cols, row_stride, col_stride, .. } = view;
    MatRef { data: wide, rows, cols, row_stride, col_stride }
}

/// bf16 × bf16 products on every level this CPU has (AVX512-BF16's `vdpbf16ps` kernel, and the widening path
/// below it) against float64 products of the same bf16 values (exact but for the f32 accumulation): sizes 1, 7, 33
/// and 1023 in each of m, k, n (several register tiles, edge tiles, odd k, several blocks of k, several tasks, an
/// inner dimension long enough to be walked outermost), transposed operands, padded rows, and the accumulating
/// `beta`.
#[test]
fn bf16_matmul_matches_f64_on_every_isa_level() {
    let mut rng = rng();
    let shapes = [
        (1, 1, 1),
        (7, 33, 1023),
        (1023, 7, 33),
        (33, 1023, 7),
        (1, 1023, 1),
        (33, 1023, 65),
        (300, 33, 40),
        (257, 1100, 40),
        (1, 7, 1023),
        (1023, 1, 1),
    ];
    for isa in available_isas() {
        for &(m, k, n) in &shapes {
            for (a_t, b_t, pad, beta) in
                [(false, false, 0, 0.0), (true, false, 3, 1.0), (false, true, 1, 0.5), (true, true, 0, 0.0)]
            {
                let value = |rng: &mut StdRng| bf16::from_f32(rng.gen_range(-1.0..1.0));
                let a_shape = if a_t { (k, m) } else { (m, k) };
                let b_shape = if b_t { (n, k) } else { (k, n) };
                let a_data: Vec<bf16> = (0..a_shape.0 * (a_shape.1 + pad)).map(|_| value(&mut rng)).collect();
                let b_data: Vec<bf16> = (0..b_shape.0 * (b_shape.1 + pad)).map(|_| value(&mut rng)).collect();
                let (a, b) = (strided(&a_data, a_shape, pad, a_t), strided(&b_data, b_shape, pad, b_t));
                let start: Vec<f32> = (0..m * n).map(|_| rng.gen_range(-1.0..1.0)).collect();
                let mut dst = if beta == 0.0 { vec![f32::NAN; m * n] } else { start.clone() };
                with_isa(isa, || matmul_bf16(&mut dst, a, b, beta)).unwrap();
                let (a_wide, b_wide): (Vec<f32>, Vec<f32>) =
                    (a_data.iter().map(|v| v.to_f32()).collect(), b_data.iter().map(|v| v.to_f32()).collect());
                let (a32, b32) = (widened_view(a, &a_wide), widened_view(b, &b_wide));
                let what = format!("{isa:?} m {m} k {k} n {n} a_t {a_t} b_t {b_t} pad {pad} beta {beta}");
                assert_product(&dst, &start, beta, a32, b32, &what);
            }
        }
    }
}

/// A NaN operand element spoils exactly its row (of `a`) or column (of `b`) of the product, on every level; a
/// NaN already in `dst` is ignored when `beta = 0`; with k = 0 the product is `beta · dst`.
#[test]
fn bf16_matmul_propagates_nan_and_handles_empty_inner_dimension() {
    let mut rng = rng();
    let (m, k, n) = (37, 45, 70);
    for isa in available_isas() {
        let mut a: Vec<bf16> = (0..m * k).map(|_| bf16::from_f32(rng.gen_range(-1.0..1.0))).collect();
        let mut b: Vec<bf16> = (0..k * n).map(|_| bf16::from_f32(rng.gen_range(-1.0..1.0))).collect();
        let (row, col) = (rng.gen_range(0..m), rng.gen_range(0..n));
        a[row * k + rng.gen_range(0..k)] = bf16::NAN;
        b[rng.gen_range(0..k) * n + col] = bf16::NAN;
        let mut dst = vec![f32::NAN; m * n];
        with_isa(isa, || matmul_bf16(&mut dst, MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n), 0.0)).unwrap();
        for i in 0..m {
            for j in 0..n {
                assert_eq!(dst[i * n + j].is_nan(), i == row || j == col, "{isa:?} [{i}, {j}]: {}", dst[i * n + j]);
            }
        }
        for beta in [0.0f32, 0.5] {
            let mut dst = vec![f32::NAN, 2.0, -4.0];
            let empty = MatRef::<bf16>::row_major(&[], 1, 0);
            with_isa(isa, || matmul_bf16(&mut dst[1..], empty, MatRef::row_major(&[], 0, 2), beta)).unwrap();
            let want = if beta == 0.0 { [0.0, 0.0] } else { [1.0, -2.0] };
            assert!(dst[0].is_nan() && dst[1..] == want, "{isa:?} beta {beta}: {dst:?}");
        }
    }
}

/// `with_isa` runs the products at the level asked for when the CPU has it (and restores the level after), and
/// refuses one it lacks with an error; level names parse back, unknown names are errors, and so are they (and levels
/// the CPU lacks) as values of `UNIREWARD_CPU_ISA`.
#[test]
fn isa_levels_can_be_forced_and_unavailable_ones_are_refused() {
    let before = isa::active();
    assert!(before.available(), "{before:?}");
    for level in Isa::ALL {
        assert_eq!(Isa::parse(level.name()).unwrap(), level);
        match with_isa(level, isa::active) {
            Ok(active) => assert!(level.available() && active == level, "{level:?}: {active:?}"),
            Err(e) => assert!(!level.available() && matches!(e, Error::InvalidArgument(_)), "{level:?}: {e}"),
        }
        assert_eq!(isa::active(), before);
    }
    assert!(matches!(Isa::parse("avx1024"), Err(Error::InvalidArgument(_))));
    // What `UNIREWARD_CPU_ISA` accepts (case and spaces aside): the levels this CPU has; anything else is an error
    // (the process then warns and uses the detected level).
    for level in Isa::ALL {
        let value = format!(" {} ", level.name().to_uppercase());
        assert_eq!(isa::requested(&value).ok(), level.available().then_some(level), "{value}");
    }
    assert!(matches!(isa::requested("sse9"), Err(Error::InvalidArgument(_))));
    assert_eq!(isa::detected(), *available_isas().last().unwrap());
}

#[test]
fn matmul_reads_strided_sub_matrices() {
    let mut rng = rng();
    // A 9 × 11 block inside a 20 × 30 buffer (row stride 30), times every other column of a 11 × 26 buffer.
    let big_a: Vec<f32> = (0..20 * 30).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let big_b: Vec<f32> = (0..11 * 26).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let a = MatRef { data: &big_a[2 * 30 + 3..], rows: 9, cols: 11, row_stride: 30, col_stride: 1 };
    let b = MatRef { data: &big_b[1..], rows: 11, cols: 12, row_stride: 26, col_stride: 2 };
    let mut dst = vec![f32::NAN; 9 * 12];
    matmul(&mut dst, a, b, 0.0);
    for (got, want) in dst.iter().zip(matmul_f64(a, b)) {
        assert!((*got as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()), "{got} vs {want}");
    }
}

#[test]
fn an_arena_carves_aligned_disjoint_tensors_and_relays_them_out() {
    use unireward::runtime::arena::{Arena, Slot};
    let slots = vec![Slot::new(&[3, 5], DType::F32), Slot::new(&[7], DType::BF16), Slot::new(&[2, 2], DType::I64)];
    let mut arena = Arena::new(slots.clone(), Device::Cpu).unwrap();
    assert_eq!(arena.size_in_bytes(), 3 * 256, "each slot starts on a 256-byte boundary");
    {
        // SAFETY: the views are dropped at the end of this block, before the arena is touched again.
        let mut views = unsafe { arena.views() }.unwrap();
        assert_eq!(views.iter().map(|v| v.shape().to_vec()).collect::<Vec<_>>(), vec![vec![3, 5], vec![7], vec![2, 2]]);
        views[0].as_mut_slice::<f32>().unwrap().fill(1.5);
        views[2].as_mut_slice::<i64>().unwrap().fill(-1);
        assert!(views[1].to_vec::<bf16>().unwrap().iter().all(|v| v.to_f32() == 0.0), "slots do not overlap");
        assert_eq!(views[0].to_vec::<f32>().unwrap(), vec![1.5; 15]);
    }
    // A smaller layout reuses the buffer (and sees what the last step left); a larger one does not fit.
    assert!(arena.relayout(vec![Slot::new(&[4], DType::F32)]).unwrap());
    assert_eq!((arena.used_bytes(), arena.size_in_bytes()), (256, 3 * 256));
    // SAFETY: as above.
    let views = unsafe { arena.views() }.unwrap();
    assert_eq!(views[0].to_vec::<f32>().unwrap(), vec![1.5; 4]);
    drop(views);
    assert!(!arena.relayout(vec![Slot::new(&[1000], DType::F32)]).unwrap());
    assert_eq!(arena.slots(), &[Slot::new(&[4], DType::F32)], "a layout that does not fit leaves the arena as it was");
}

#[test]
fn an_arena_overlay_shares_one_region_among_its_alternatives() {
    use unireward::runtime::arena::{Arena, Layout, Slot};
    let f32s = |n: usize| Slot::new(&[n], DType::F32);
    // kept [100] | overlay: ([10], [70]) or ([300]) | after [1]
    let mut layout = Layout::from(vec![f32s(100)]);
    layout.overlay(vec![vec![f32s(10), f32s(70)], vec![f32s(300)]]);
    layout.extend([f32s(1)]);
    // 400 B → 512; the overlay: 256 + 280 → 512 + 256 = 768 against 1200 → 1280, the larger; the last slot: 256.
    assert_eq!(layout.size_in_bytes().unwrap(), 512 + 1280 + 256);
    let mut arena = Arena::new(layout, Device::Cpu).unwrap();
    assert_eq!(arena.used_bytes(), 512 + 1280 + 256);
    assert_eq!(arena.slots().len(), 5, "every alternative's slots, in view order");
    // SAFETY: the views are dropped at the end of this test, before the arena; the two alternatives are used in turn.
    let mut views = unsafe { arena.views() }.unwrap();
    let address = |t: &mut Tensor| t.as_mut_slice::<f32>().unwrap().as_ptr() as usize;
    let addresses: Vec<usize> = views.iter_mut().map(address).collect();
    let base = addresses[0];
    assert_eq!(addresses.iter().map(|a| a - base).collect::<Vec<_>>(), vec![0, 512, 768, 512, 1792]);
    // One alternative's writes are what the other then reads: the memory is shared, not copied.
    views[1].as_mut_slice::<f32>().unwrap().fill(2.0);
    assert_eq!(views[3].to_vec::<f32>().unwrap()[..10], [2.0; 10]);
    views[0].as_mut_slice::<f32>().unwrap().fill(1.0);
    views[3].as_mut_slice::<f32>().unwrap().fill(3.0);
    views[4].as_mut_slice::<f32>().unwrap().fill(4.0);
    assert_eq!(views[0].to_vec::<f32>().unwrap(), vec![1.0; 100], "the overlay stays inside its region");
    assert_eq!(views[4].to_vec::<f32>().unwrap(), vec![4.0]);
}

#[test]
#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
fn an_arena_taken_up_on_another_stream_sees_the_first_streams_writes() {
    use unireward::runtime::arena::{Arena, Slot};
    let len = 1 << 22;
    let mut arena = Arena::new(vec![Slot::new(&[len], DType::F32)], Device::Cuda(0)).unwrap();
    let values: Vec<f32> = (0..len).map(|i| i as f32).collect();
    {
        // SAFETY: the views are dropped at the end of this block, before the arena is touched again.
        let mut views = unsafe { arena.views() }.unwrap();
        views[0].copy_from(&Tensor::from_slice(&values, &[len], Device::Cuda(0)).unwrap()).unwrap();
    }
    let other = cuda::backend(0).unwrap().context().new_stream().unwrap();
    let read_back = || {
        // SAFETY: the views are dropped inside this closure.
        let views = unsafe { arena.views() }?;
        views[0].to_vec::<f32>()
    };
    // SAFETY: `other` is a stream of device 0's primary context and outlives the scope.
    let read = unsafe { cuda::on_stream(0, other.cu_stream(), read_back) }.unwrap();
    assert_eq!(read, values);
}

/// The bf16 narrowing the CPU paths use is half's rounding bit for bit: a sweep over f32 bit patterns (a prime
/// stride, so every exponent and many mantissas), every dropped-half pattern around the ties of an even and an odd
/// kept part, and the special values (NaNs with payloads and signs, infinities, the largest finite values that round
/// to infinity, subnormals, zeros).
#[test]
fn bf16_narrowing_equals_half_bit_for_bit() {
    let agrees = |bits: u32| {
        let v = f32::from_bits(bits);
        assert_eq!(<bf16 as FloatElement>::from_f32(v).to_bits(), bf16::from_f32(v).to_bits(), "f32 bits {bits:#010x}");
    };
    (0..=u32::MAX).step_by(65_521).for_each(agrees);
    for kept in [0x3F80u32, 0x3F81, 0x7F7F, 0x0000, 0x8001, 0xFF7F] {
        (0..=0xFFFF).map(|dropped| kept << 16 | dropped).for_each(agrees);
    }
    let specials = [0x7F80_0000u32, 0xFF80_0000, 0x7F80_0001, 0xFFC0_1234, 0x7FFF_FFFF, 0x7F7F_8000, 0x0000_0001];
    specials.into_iter().chain([0x8000_0000, 0x0080_0000, 0x807F_FFFF]).for_each(agrees);
}
