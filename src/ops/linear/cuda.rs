//! CUDA linear layers: cuBLAS `GemmEx` into f32 buffers, then `kernels/linear.cu` adds the bias and rounds to the
//! storage dtype. `d_b` is the product `1ᵀ·g` (deterministic, f32 accumulation).

use super::{Outputs, Plan, KERNELS};
use crate::ops::launch::{self, backend_of, check_i32, elementwise, ptr};
use crate::runtime::cuda::blas::{self, DeviceMat};
use crate::runtime::cuda::{CudaBackend, PushKernelArg};
use crate::runtime::{DType, Tensor};
use crate::{Error, Result};

fn same_dtype(x: &Tensor, others: &[(&'static str, Option<&Tensor>)]) -> Result<()> {
    for (name, t) in others {
        if let Some(t) = t.filter(|t| t.dtype() != x.dtype()) {
            return Err(Error::DType {
                arg: name,
                got: t.dtype(),
                expected: format!("the dtype of `x` ({}) on CUDA", x.dtype()),
            });
        }
    }
    Ok(())
}

/// `acc` (f32) plus `bias` broadcast over rows, rounded into `out` (as many elements, of the dtype of `x`).
fn finish(backend: &CudaBackend, acc: &Tensor, bias: Option<&Tensor>, out: &mut Tensor) -> Result<()> {
    let cols = check_i32("columns", *out.shape().last().unwrap_or(&1))?;
    let f = launch::kernel(backend, &KERNELS, "linear_finish", out.dtype())?;
    let (acc_p, bias_p, out_p, n) = (ptr(acc)?, bias.map_or(Ok(0), ptr)?, ptr(out)?, acc.numel() as i64);
    let mut b = backend.stream().launch_builder(&f);
    b.arg(&acc_p).arg(&bias_p).arg(&n).arg(&cols).arg(&out_p);
    // SAFETY: linear_finish_<T>(const float*, const T*, long long, int, T*): `acc` holds n floats, `out` n elements
    // of T, `bias` is null or holds `cols` elements of T, and n is a multiple of `cols`.
    unsafe { b.launch(elementwise(acc.numel())?) }?;
    Ok(())
}

pub(super) fn forward(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, p: &Plan, out: &mut Tensor) -> Result<()> {
    same_dtype(x, &[("weight", Some(weight)), ("bias", bias)])?;
    let (backend, dtype) = (backend_of(x)?, x.dtype());
    let acc = Tensor::zeros(&[p.rows, p.m], DType::F32, p.device)?;
    let xm = DeviceMat::row_major(ptr(x)?, dtype, p.rows, p.k);
    blas::matmul(&backend, ptr(&acc)?, xm, DeviceMat::row_major(ptr(weight)?, dtype, p.m, p.k).t(), 0.0)?;
    finish(&backend, &acc, bias, out)
}

pub(super) fn backward(
    grad_y: &Tensor,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    p: &Plan,
    out: Outputs<'_>,
) -> Result<()> {
    same_dtype(x, &[("weight", Some(weight)), ("bias", bias), ("grad_y", Some(grad_y))])?;
    let (backend, dtype) = (backend_of(x)?, x.dtype());
    let g = DeviceMat::row_major(ptr(grad_y)?, dtype, p.rows, p.m);

    if let Some(grad_x) = out.grad_x {
        let acc_x = Tensor::zeros(&[p.rows, p.k], DType::F32, p.device)?;
        blas::matmul(&backend, ptr(&acc_x)?, g, DeviceMat::row_major(ptr(weight)?, dtype, p.m, p.k), 0.0)?;
        finish(&backend, &acc_x, None, grad_x)?;
    }

    let acc_w = Tensor::zeros(&[p.m, p.k], DType::F32, p.device)?;
    blas::matmul(&backend, ptr(&acc_w)?, g.t(), DeviceMat::row_major(ptr(x)?, dtype, p.rows, p.k), 0.0)?;
    finish(&backend, &acc_w, None, out.grad_weight)?;
    drop(acc_w);

    if let Some(grad_bias) = out.grad_bias {
        let ones = Tensor::from_f32(&vec![1.0; p.rows], &[1, p.rows], dtype, p.device)?;
        let acc_b = Tensor::zeros(&[1, p.m], DType::F32, p.device)?;
        blas::matmul(&backend, ptr(&acc_b)?, DeviceMat::row_major(ptr(&ones)?, dtype, 1, p.rows), g, 0.0)?;
        finish(&backend, &acc_b, None, grad_bias)?;
    }
    Ok(())
}
