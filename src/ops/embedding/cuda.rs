//! CUDA embedding: `kernels/embedding.cu`, with the host-built token lists uploaded as i32.

use super::{TableWrite, TokenLists, KERNELS};
use crate::ops::launch::{self, backend_of, check_i32, elementwise, ptr, THREADS};
use crate::runtime::cuda::{launch_config, PushKernelArg};
use crate::runtime::Tensor;
use crate::Result;

/// Host indices as a device i32 tensor (one padding entry keeps it non-empty).
fn upload(values: &[usize], like: &Tensor) -> Result<Tensor> {
    let mut v = values.iter().map(|&x| check_i32("index", x)).collect::<Result<Vec<i32>>>()?;
    v.push(0);
    Tensor::from_slice(&v, &[v.len()], like.device())
}

pub(super) fn forward(table: &Tensor, ids: &[usize], out: &mut Tensor) -> Result<()> {
    let backend = backend_of(table)?;
    let h = check_i32("H", table.shape()[1])?;
    let tokens = ids.len() as i64;
    let ids = upload(ids, table)?;
    let f = launch::kernel(&backend, &KERNELS, "embedding_forward", table.dtype())?;
    let (table_p, ids_p, out_p) = (ptr(table)?, ptr(&ids)?, ptr(out)?);
    let mut b = backend.stream().launch_builder(&f);
    b.arg(&table_p).arg(&ids_p).arg(&tokens).arg(&h).arg(&out_p);
    // SAFETY: embedding_forward_<T>(const T*, const int*, long long, int, T*): `table` holds V·H elements of T and
    // every id is < V; `ids` holds `tokens` ints; `out` holds tokens·H elements of T.
    unsafe { b.launch(elementwise(out.numel())?) }?;
    Ok(())
}

pub(super) fn backward(
    grad_out: &Tensor,
    lists: &TokenLists,
    h: usize,
    grad_table: &mut Tensor,
    write: TableWrite,
) -> Result<()> {
    let backend = backend_of(grad_out)?;
    let vocab = lists.starts.len() - 1;
    check_i32("vocab", vocab)?;
    let (starts, tokens) = (upload(&lists.starts, grad_out)?, upload(&lists.tokens, grad_out)?);
    let h_i32 = check_i32("H", h)?;
    let accumulate = i32::from(write == TableWrite::Accumulate);
    let f = launch::kernel(&backend, &KERNELS, "embedding_backward", grad_out.dtype())?;
    let (grad_p, starts_p, tokens_p, out_p) = (ptr(grad_out)?, ptr(&starts)?, ptr(&tokens)?, ptr(grad_table)?);
    let mut b = backend.stream().launch_builder(&f);
    b.arg(&grad_p).arg(&starts_p).arg(&tokens_p).arg(&h_i32).arg(&accumulate).arg(&out_p);
    // SAFETY: embedding_backward_<T>(const T*, const int* ×2, int, int, T*): one block per vocabulary row; `starts`
    // holds V + 1 entries, `tokens` the token positions (each < tokens of `grad_out`, which holds tokens·H elements
    // of T); `grad_table` holds V·H elements of T.
    unsafe { b.launch(launch_config(vocab, THREADS, 0)?) }?;
    Ok(())
}
