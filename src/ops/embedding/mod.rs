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

/// Tokens grouped by id: `rows` are the ids that occur, ascending; the tokens of `rows[r]` are
/// `tokens[starts[r]..starts[r + 1]]`, ascending.
struct TokenLists {
    rows: Vec<usize>,
    starts: Vec<usize>,
    tokens: Vec<usize>,
}

impl TokenLists {
    fn new(ids: &[usize], vocab: usize) -> Self {
        let mut counts = vec![0usize; vocab + 1];
        ids.iter().for_each(|&id| counts[id + 1] += 1);
        for v in 0..vocab {
            counts[v + 1] += counts[v];
        }
        let mut next = counts.clone();
        let mut tokens = vec![0; ids.len()];
        for (p, &id) in ids.iter().enumerate() {
            tokens[next[id]] = p;
            next[id] += 1;
        }
        let rows: Vec<usize> = (0..vocab).filter(|&v| counts[v + 1] > counts[v]).collect();
        let mut starts: Vec<usize> = rows.iter().map(|&v| counts[v]).collect();
        starts.push(ids.len());
        TokenLists { rows, starts, tokens }
    }
}

/// Rows of `table` [V,H] picked by `ids` (any shape, i32 or i64, each in [0, V)): shape `ids.shape + [H]`, in the
/// table's dtype.
pub fn embedding(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let &[vocab, h] = check::rank("table", table, 2)? else { unreachable!() };
    check::float("table", table)?;
    check::non_empty("table (H)", h)?;
    let device = check::same_device(&[("table", table), ("ids", ids)])?;
    let ids_host = valid_ids(ids, vocab)?;
    let mut shape = ids.shape().to_vec();
    shape.push(h);
    match device {
        Device::Cpu => cpu::forward(table, &ids_host, &shape),
        Device::Cuda(_) => cuda::forward(table, &ids_host, &shape),
    }
}

/// The gradient of the table [`vocab`, H] from `grad_out` (`ids.shape + [H]`): row v is the sum, in token order,
/// of the gradient rows of the tokens with id v (zero for ids that do not occur). In `grad_out`'s dtype, summed in
/// f32.
pub fn embedding_backward(grad_out: &Tensor, ids: &Tensor, vocab: usize) -> Result<Tensor> {
    check::float("grad_out", grad_out)?;
    check::non_empty("vocab", vocab)?;
    let h = *grad_out.shape().last().unwrap_or(&0);
    let mut expected = ids.shape().to_vec();
    expected.push(h);
    check::shape("grad_out", grad_out, &expected)?;
    check::non_empty("grad_out (H)", h)?;
    let device = check::same_device(&[("grad_out", grad_out), ("ids", ids)])?;
    let lists = TokenLists::new(&valid_ids(ids, vocab)?, vocab);
    match device {
        Device::Cpu => cpu::backward(grad_out, &lists, vocab, h),
        Device::Cuda(_) => cuda::backward(grad_out, &lists, vocab, h),
    }
}
