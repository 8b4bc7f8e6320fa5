//! CUDA RoPE: `kernels/rope.cu`, one thread per (row, head, pair), in place.

use super::{Rotation, KERNELS};
use crate::ops::launch::{self, check_i32, elementwise};
use crate::runtime::cuda::PushKernelArg;
use crate::runtime::Tensor;
use crate::Result;

pub(super) fn rotate(x: &mut Tensor, positions: &[usize], inv: &[f32], heads: usize, rotation: Rotation) -> Result<()> {
    let device = x.device();
    let pos = positions.iter().map(|&p| check_i32("position", p)).collect::<Result<Vec<i32>>>()?;
    let pos = Tensor::from_slice(&pos, &[pos.len()], device)?;
    let inv_t = Tensor::from_slice(inv, &[inv.len()], device)?;
    let (rows, heads_i32, d) = (positions.len() as i64, check_i32("heads", heads)?, check_i32("d", 2 * inv.len())?);
    let sign: f32 = if rotation == Rotation::Forward { 1.0 } else { -1.0 };
    let (pairs, dtype) = (x.numel() / 2, x.dtype());
    let (pos_p, inv_p) = (launch::ptr(&pos)?, launch::ptr(&inv_t)?);
    let (x_p, backend) = x.cuda_ptr_mut()?;
    let f = launch::kernel(&backend, &KERNELS, "rope", dtype)?;
    let mut b = backend.stream().launch_builder(&f);
    b.arg(&x_p).arg(&pos_p).arg(&inv_p).arg(&rows).arg(&heads_i32).arg(&d).arg(&sign);
    // SAFETY: rope_<T>(T*, const int*, const float*, long long, int, int, float): `x` holds rows·heads·d elements of
    // T, `positions` rows ints, `inv_freq` d/2 floats; each thread owns one (row, head, pair), so writes never race.
    unsafe { b.launch(elementwise(pairs)?) }?;
    Ok(())
}
