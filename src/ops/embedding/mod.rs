//! Token embeddings: a gather of table rows by id (forward) and a deterministic scatter-add into the table's
//! gradient (backward). The backward groups tokens by id on the host (a counting sort), then each vocabulary row
//! sums its tokens' gradient rows in token order, so the result is bit-identical run to run on every device (no
//! float atomics).

mod cpu;
mod cuda;

use crate::ops::{check, launch};
use crate::runtime::cuda::KernelModule;
use crate::runtime::{Device, Tensor};
use crate::{Error, Result};

pub const KERNELS: KernelModule = crate::kernel_module!("embedding");

/// Ids validated against the vocabulary, flattened.
fn valid_ids(ids: &Tensor, vocab: usize) -> Result<Vec<usize>> {
    check::integer("ids", ids)?;
    check::non_empty("ids", ids.numel())?;
    launch::host_ids(ids)?
        .into_iter()
        .enumerate()
        .map(|(i, id)| {
            usize::try_from(id).ok().filter(|&id| id < vocab).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "`ids` holds {id} at flat position {i}, outside the vocabulary [0, {vocab})"
                ))
            })
        })
        .collect()
}

/// Tokens grouped by id: the tokens of vocabulary row v are `tokens[starts[v]..starts[v + 1]]`, ascending (none for
/// an id that does not occur); `starts` has V + 1 entries.
struct TokenLists {
    starts: Vec<usize>,
    tokens: Vec<usize>,
}

impl TokenLists {
    fn new(ids: &[usize], vocab: usize) -> Self {
        let mut starts = vec![0usize; vocab + 1];
        ids.iter().for_each(|&id| starts[id + 1] += 1);
        for v in 0..vocab {
            starts[v + 1] += starts[v];
        }
        let mut next = starts.clone();
        let mut tokens = vec![0; ids.len()];
        for (p, &id) in ids.iter().enumerate() {
            tokens[next[id]] = p;
            next[id] += 1;
        }
        TokenLists { starts, tokens }
    }
}

/// The table's [V, H] after checking it.
fn table_sizes(table: &Tensor) -> Result<(usize, usize)> {
    let &[vocab, h] = check::rank("table", table, 2)? else { unreachable!() };
    check::float("table", table)?;
    check::non_empty("table (H)", h)?;
    Ok((vocab, h))
}

/// Rows of `table` `[V,H]` picked by `ids` (any shape, i32 or i64, each in [0, V)): shape `ids.shape + [H]`, in the
/// table's dtype.
pub fn embedding(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (_, h) = table_sizes(table)?;
    let mut out = Tensor::zeros(&[ids.shape(), &[h]].concat(), table.dtype(), table.device())?;
    embedding_into(table, ids, &mut out)?;
    Ok(out)
}

/// [`embedding`] into `out` (`ids.shape + [H]`, the table's dtype and device), overwritten whole; it must not alias
/// the table.
pub fn embedding_into(table: &Tensor, ids: &Tensor, out: &mut Tensor) -> Result<()> {
    let (vocab, h) = table_sizes(table)?;
    let device = check::same_device(&[("table", table), ("ids", ids)])?;
    let ids_host = valid_ids(ids, vocab)?;
    check::output("out", out, &[ids.shape(), &[h]].concat(), table.dtype(), device)?;
    match device {
        Device::Cpu => cpu::forward(table, &ids_host, out),
        Device::Cuda(_) => cuda::forward(table, &ids_host, out),
    }
}

/// The gradient of the table [`vocab`, H] from `grad_out` (`ids.shape + [H]`): row v is the sum, in token order,
/// of the gradient rows of the tokens with id v (zero for ids that do not occur). In `grad_out`'s dtype, summed in
/// f32.
pub fn embedding_backward(grad_out: &Tensor, ids: &Tensor, vocab: usize) -> Result<Tensor> {
    let h = *grad_out.shape().last().unwrap_or(&0);
    let mut grad_table = Tensor::zeros(&[vocab, h], grad_out.dtype(), grad_out.device())?;
    backward(grad_out, ids, vocab, &mut grad_table, TableWrite::Zeroed)?;
    Ok(grad_table)
}

/// [`embedding_backward`] into `grad_table` ([`vocab`, H], `grad_out`'s dtype and device), every row written (zero
/// for ids that do not occur); it must not alias `grad_out`.
pub fn embedding_backward_into(grad_out: &Tensor, ids: &Tensor, vocab: usize, grad_table: &mut Tensor) -> Result<()> {
    backward(grad_out, ids, vocab, grad_table, TableWrite::Overwrite)
}

/// [`embedding_backward`] added into `grad_table` (row v gains the f32 sum of its tokens' gradient rows; rows of ids
/// that do not occur are left as they are): a tied LM head's gradient, written there first, then gets the
/// embedding's share without a second `[V, H]` buffer.
pub fn embedding_backward_accumulate(
    grad_out: &Tensor,
    ids: &Tensor,
    vocab: usize,
    grad_table: &mut Tensor,
) -> Result<()> {
    backward(grad_out, ids, vocab, grad_table, TableWrite::Accumulate)
}

/// How the backward treats what `grad_table` holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TableWrite {
    /// It holds zeros already: rows of ids that do not occur are left alone on the CPU (a fresh table's pages are
    /// then never written: 228 → 3 ms for Qwen2's 151,936 × 896 in f32).
    Zeroed,
    /// Every row is written.
    Overwrite,
    /// Sums are added to it.
    Accumulate,
}

fn backward(grad_out: &Tensor, ids: &Tensor, vocab: usize, grad_table: &mut Tensor, write: TableWrite) -> Result<()> {
    check::float("grad_out", grad_out)?;
    check::non_empty("vocab", vocab)?;
    let h = *grad_out.shape().last().unwrap_or(&0);
    check::shape("grad_out", grad_out, &[ids.shape(), &[h]].concat())?;
    check::non_empty("grad_out (H)", h)?;
    let device = check::same_device(&[("grad_out", grad_out), ("ids", ids)])?;
    check::output("grad_table", grad_table, &[vocab, h], grad_out.dtype(), device)?;
    let lists = TokenLists::new(&valid_ids(ids, vocab)?, vocab);
    match device {
        Device::Cpu => cpu::backward(grad_out, &lists, h, grad_table, write),
        Device::Cuda(_) => cuda::backward(grad_out, &lists, h, grad_table, write),
    }
}
