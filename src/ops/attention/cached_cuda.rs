//! CUDA KV-cache attention and cache writes: `attention_cached` and `kv_cache_write` in `kernels/attention.cu`.
//! The key mask is read in place in either integer dtype, and the starts travel as a small i64 buffer, so a decode
//! step makes no device-to-host copy.

use super::cached::{CachedPlan, WritePlan};
use super::KERNELS;
use crate::ops::launch::{self, backend_of, check_i32, elementwise, ptr};
use crate::runtime::cuda::{launch_config, PushKernelArg};
use crate::runtime::{DType, Device, Tensor};
use crate::{Error, Result};

/// Threads per block of `attention_cached` (WARPS warps in the kernel file).
const BLOCK_THREADS: u32 = 128;
/// The largest head dimension the kernel holds in registers (32 lanes × COLS in the kernel file).
const MAX_HEAD_DIM: usize = 128;

/// The starts as an i64 buffer on `device`.
fn device_starts(starts: &[usize], device: Device) -> Result<Tensor> {
    let starts: Vec<i64> = starts.iter().map(|&s| s as i64).collect();
    Tensor::from_slice(&starts, &[starts.len()], device)
}

pub(super) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_mask: &Tensor,
    starts: &[usize],
    p: &CachedPlan,
) -> Result<Tensor> {
    if p.d > MAX_HEAD_DIM {
        return Err(Error::Shape(format!(
            "the CUDA attention kernels take head dims up to {MAX_HEAD_DIM}, got {}",
            p.d
        )));
    }
    let sizes = [
        check_i32("Tq", p.tq)?,
        check_i32("S", p.s)?,
        check_i32("Hq", p.hq)?,
        check_i32("Hkv", p.hkv)?,
        check_i32("d", p.d)?,
    ];
    let blocks = p.n * p.tq * p.hq;
    check_i32("N·Tq·Hq", blocks)?;
    let (backend, dtype, device) = (backend_of(q)?, q.dtype(), q.device());
    let start = device_starts(starts, device)?;
    let out = Tensor::zeros(q.shape(), dtype, device)?;
    let mask_i64 = i32::from(key_mask.dtype() == DType::I64);
    let f = launch::kernel(&backend, &KERNELS, "attention_cached", dtype)?;
    let (q_p, k_p, v_p, mask_p, start_p, out_p) = (ptr(q)?, ptr(k)?, ptr(v)?, ptr(key_mask)?, ptr(&start)?, ptr(&out)?);
    let scale = p.scale();
    let mut b = backend.stream().launch_builder(&f);
    b.arg(&q_p).arg(&k_p).arg(&v_p).arg(&mask_p).arg(&mask_i64).arg(&start_p);
    sizes.iter().for_each(|s| {
        b.arg(s);
    });
    b.arg(&scale).arg(&out_p);
    // SAFETY: attention_cached_<T>(const T* ×3, const void*, int, const long long*, int ×5, float, T*): one block
    // of BLOCK_THREADS per (n, query, head); q and out hold N·Tq·Hq·d elements of T, k and v N·S·Hkv·d, the mask
    // N·S ints of the width `mask_i64` names, start N i64 with start + Tq ≤ S; d ≤ 128 = 32 lanes × COLS.
    unsafe { b.launch(launch_config(blocks, BLOCK_THREADS, 0)?) }?;
    Ok(out)
}

pub(super) fn write(cache: &mut Tensor, new: &Tensor, starts: &[usize], p: &WritePlan) -> Result<()> {
    let (tq, s, row) = (check_i32("Tq", p.tq)?, check_i32("S", p.s)?, check_i32("H·d", p.row)?);
    let (dtype, device) = (cache.dtype(), cache.device());
    let start = device_starts(starts, device)?;
    let (cache_p, backend) = cache.cuda_ptr_mut()?;
    let f = launch::kernel(&backend, &KERNELS, "kv_cache_write", dtype)?;
    let (new_p, start_p, total, broadcast) =
        (ptr(new)?, ptr(&start)?, (p.n * p.tq * p.row) as i64, i32::from(p.broadcast));
    let mut b = backend.stream().launch_builder(&f);
    b.arg(&cache_p).arg(&new_p).arg(&start_p).arg(&total).arg(&tq).arg(&s).arg(&row).arg(&broadcast);
    // SAFETY: kv_cache_write_<T>(T*, const T*, const long long*, long long, int ×4): grid-stride over the
    // N·Tq·H·d = `total` written elements; cache holds N·S·H·d elements of T, new B·Tq·H·d (B = N, or 1 with
    // `broadcast`), start N i64 with start + Tq ≤ S.
    unsafe { b.launch(elementwise(p.n * p.tq * p.row)?) }?;
    Ok(())
}
