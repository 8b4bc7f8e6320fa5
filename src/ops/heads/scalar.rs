//! The scalar reward head: the hidden state at each sequence's explicit end position, through a linear layer
//! H → C (C = 1 for a Bradley–Terry reward, C > 1 for several attributes). Types, checks and the device dispatch.

use super::host::host_i64;
use super::{scalar_cpu, scalar_cuda};
use crate::ops::check;
use crate::runtime::{Device, Tensor};
use crate::{Error, Result};

/// The head's inputs. `hidden` `[N,T,H]` (f32, bf16 or f16); `ends` `[N]` (i32 or i64): the index of the token whose
/// hidden state is read, `0 ≤ ends[n] < T` (given explicitly: "the last non-pad token" breaks when pad and EOS
/// share an id); `weight` `[C,H]` and `bias` `[C]`, both in the dtype of `hidden`.
#[derive(Clone, Copy)]
pub struct ScalarHead<'a> {
    pub hidden: &'a Tensor,
    pub ends: &'a Tensor,
    pub weight: &'a Tensor,
    pub bias: Option<&'a Tensor>,
}

/// Gradients of the head, each in the dtype of the input it differentiates (accumulated in f32).
#[derive(Debug)]
pub struct ScalarHeadGrads {
    /// `[N,T,H]`: zero except at the gathered positions.
    pub grad_hidden: Tensor,
    /// `[C,H]`.
    pub grad_weight: Tensor,
    /// `[C]`, when the head has a bias.
    pub grad_bias: Option<Tensor>,
}

/// Validated sizes and end positions.
pub(super) struct Plan {
    pub n: usize,
    pub t: usize,
    pub h: usize,
    pub c: usize,
    pub ends: Vec<usize>,
    pub device: Device,
}

impl Plan {
    /// The flat row of `hidden` ([N·T, H]) that sequence `n` reads.
    pub fn row(&self, n: usize) -> usize {
        n * self.t + self.ends[n]
    }
}

fn plan(head: &ScalarHead<'_>) -> Result<Plan> {
    let &[n, t, h] = check::rank("hidden", head.hidden, 3)? else { unreachable!() };
    let &[c, hw] = check::rank("weight", head.weight, 2)? else { unreachable!() };
    check::float("hidden", head.hidden)?;
    same_dtype("weight", head.weight, head)?;
    if hw != h {
        return Err(Error::Shape(format!("`weight` is [{c}, {hw}] but `hidden` has hidden size {h}")));
    }
    check::non_empty("hidden (N)", n)?;
    check::non_empty("hidden (T)", t)?;
    check::non_empty("hidden (H)", h)?;
    check::non_empty("weight (C)", c)?;
    check::integer("ends", head.ends)?;
    check::shape("ends", head.ends, &[n])?;
    let mut named = vec![("hidden", head.hidden), ("ends", head.ends), ("weight", head.weight)];
    if let Some(b) = head.bias {
        same_dtype("bias", b, head)?;
        check::shape("bias", b, &[c])?;
        named.push(("bias", b));
    }
    let device = check::same_device(&named)?;
    let ends = host_i64(head.ends)?
        .into_iter()
        .enumerate()
        .map(|(seq, end)| {
            usize::try_from(end).ok().filter(|&e| e < t).ok_or_else(|| {
                Error::InvalidArgument(format!("`ends[{seq}]` = {end}: sequence {seq} has no token {end} (T = {t})"))
            })
        })
        .collect::<Result<Vec<usize>>>()?;
    Ok(Plan { n, t, h, c, ends, device })
}

fn same_dtype(arg: &'static str, t: &Tensor, head: &ScalarHead<'_>) -> Result<()> {
    if t.dtype() != head.hidden.dtype() {
        return Err(Error::DType {
            arg,
            got: t.dtype(),
            expected: format!("{}, the dtype of `hidden`", head.hidden.dtype()),
        });
    }
    Ok(())
}

/// Rewards `[N,C]` f32: `rewards[n] = weight · hidden[n, ends[n]] + bias`, on the device of the inputs.
pub fn scalar_reward(head: ScalarHead<'_>) -> Result<Tensor> {
    let plan = plan(&head)?;
    match plan.device {
        Device::Cpu => scalar_cpu::forward(&head, &plan),
        Device::Cuda(_) => scalar_cuda::forward(&head, &plan),
    }
}

/// Gradients of `Σ grad_rewards · rewards` with respect to the hidden states, the weight and the bias, given
/// `grad_rewards` `[N,C]` f32.
pub fn scalar_reward_backward(head: ScalarHead<'_>, grad_rewards: &Tensor) -> Result<ScalarHeadGrads> {
    let plan = plan(&head)?;
    check::dtype("grad_rewards", grad_rewards, crate::runtime::DType::F32)?;
    check::shape("grad_rewards", grad_rewards, &[plan.n, plan.c])?;
    check::same_device(&[("hidden", head.hidden), ("grad_rewards", grad_rewards)])?;
    match plan.device {
        Device::Cpu => scalar_cpu::backward(&head, &plan, grad_rewards),
        Device::Cuda(_) => scalar_cuda::backward(&head, &plan, grad_rewards),
    }
}
