//! Reward-model losses on scalar rewards: Bradley–Terry (TRL's `RewardTrainer`, with its optional margin and
//! center-rewards term) and K-wise losses over ranked candidates (all pairs, Plackett–Luce). Types, argument
//! checks and the device dispatch; the math is in `reward_model_cpu.rs` and `kernels/preference.cu`.

use crate::ops::check;
use crate::runtime::{Device, Tensor};
use crate::{Error, Result};

use super::args::{non_finite_is_an_error, same_float_dtype};
use super::{cuda, host, reward_model_cpu};

/// Hyper-parameters of [`bradley_terry_loss`].
#[derive(Clone, Copy, Debug)]
pub struct BradleyTerryConfig {
    /// TRL's `center_rewards_coefficient`: adds `c · mean((r_chosen + r_rejected)²)`.
    pub center_rewards_coefficient: Option<f32>,
    /// The upstream gradient of the loss.
    pub grad_output: f32,
}

impl Default for BradleyTerryConfig {
    fn default() -> Self {
        BradleyTerryConfig { center_rewards_coefficient: None, grad_output: 1.0 }
    }
}

/// Means over the pairs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BradleyTerryMetrics {
    /// Share of pairs with `r_chosen > r_rejected` strictly (TRL's evaluation leaves ties out instead).
    pub accuracy: f32,
    /// Mean chosen reward.
    pub rewards_chosen: f32,
    /// Mean rejected reward.
    pub rewards_rejected: f32,
    /// Mean of `r_chosen - r_rejected`.
    pub margins: f32,
    /// Mean of `(r_chosen + r_rejected)²`, the centring term before its coefficient.
    pub center_term: f32,
}

/// The loss, its gradient with respect to both rewards (their dtype, scaled by `grad_output`) and the metrics.
#[derive(Debug)]
pub struct BradleyTerryOutput {
    /// The loss, with the centring term.
    pub loss: f32,
    /// d loss / d `rewards_chosen`, `[P]`.
    pub grad_chosen: Tensor,
    /// d loss / d `rewards_rejected`, `[P]`.
    pub grad_rejected: Tensor,
    /// Means over the pairs.
    pub metrics: BradleyTerryMetrics,
}

/// Per-pair statistics of Bradley–Terry, summed by both backends in this order.
pub(crate) mod bt_stat {
    pub const LOSS: usize = 0;
    pub const CENTER: usize = 1;
    pub const ACCURACY: usize = 2;
    pub const CHOSEN: usize = 3;
    pub const REJECTED: usize = 4;
    pub const COUNT: usize = 5;
}

/// The Bradley–Terry loss `mean(-logσ(r_c - r_r - margin)) + c·mean((r_c + r_r)²)` on rewards of shape `[P]`
/// (float, one dtype; `margin` optional, same shape and dtype), with its gradient; CPU or CUDA by device.
pub fn bradley_terry_loss(
    rewards_chosen: &Tensor,
    rewards_rejected: &Tensor,
    margin: Option<&Tensor>,
    cfg: &BradleyTerryConfig,
) -> Result<BradleyTerryOutput> {
    check::float("rewards_chosen", rewards_chosen)?;
    let pairs = check::rank("rewards_chosen", rewards_chosen, 1)?[0];
    check::non_empty("rewards_chosen", pairs)?;
    let dtype = rewards_chosen.dtype();
    let mut tensors = vec![("rewards_chosen", rewards_chosen)];
    for (arg, t) in [("rewards_rejected", Some(rewards_rejected)), ("margin", margin)] {
        if let Some(t) = t {
            same_float_dtype(arg, t, dtype, "rewards_chosen")?;
            check::shape(arg, t, &[pairs])?;
            tensors.push((arg, t));
        }
    }
    let device = check::same_device(&tensors)?;
    check::finite("grad_output", cfg.grad_output)?;
    let coefficient = cfg.center_rewards_coefficient.unwrap_or(0.0);
    check::finite("center_rewards_coefficient", coefficient)?;
    if coefficient < 0.0 {
        return Err(Error::InvalidArgument(format!(
            "`center_rewards_coefficient` must not be negative, got {coefficient}"
        )));
    }
    let plan =
        BradleyTerryPlan { pairs, coefficient: coefficient as f64, mean_scale: cfg.grad_output as f64 / pairs as f64 };
    let (sums, grad_chosen, grad_rejected) = match device {
        Device::Cpu => reward_model_cpu::bradley_terry(rewards_chosen, rewards_rejected, margin, &plan)?,
        Device::Cuda(_) => cuda::bradley_terry(rewards_chosen, rewards_rejected, margin, &plan)?,
    };
    let n = pairs as f64;
    let mean = |i: usize| (sums[i] / n) as f32;
    let loss = ((sums[bt_stat::LOSS] + plan.coefficient * sums[bt_stat::CENTER]) / n) as f32;
    non_finite_is_an_error(loss, "rewards")?;
    let metrics = BradleyTerryMetrics {
        accuracy: mean(bt_stat::ACCURACY),
        rewards_chosen: mean(bt_stat::CHOSEN),
        rewards_rejected: mean(bt_stat::REJECTED),
        margins: ((sums[bt_stat::CHOSEN] - sums[bt_stat::REJECTED]) / n) as f32,
        center_term: mean(bt_stat::CENTER),
    };
    Ok(BradleyTerryOutput { loss, grad_chosen, grad_rejected, metrics })
}

/// Checked scalars of a Bradley–Terry call.
pub(crate) struct BradleyTerryPlan {
    pub pairs: usize,
    pub coefficient: f64,
    /// `grad_output / P`.
    pub mean_scale: f64,
}

/// How a K-wise loss scores a ranking of K candidates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KwiseMethod {
    /// Mean over the K(K-1)/2 pairs (i ranked above j) of `-logσ(r_i - r_j)`: Bradley–Terry on every pair.
    AllPairs,
    /// The Plackett–Luce negative log-likelihood of the whole ranking, `-Σ_k [r_k - logsumexp(r_k, …, r_{K-1})]`,
    /// not divided by K (at K = 2 both methods are Bradley–Terry).
    PlackettLuce,
}

impl KwiseMethod {
    pub(crate) fn code(self) -> i32 {
        match self {
            KwiseMethod::AllPairs => 0,
            KwiseMethod::PlackettLuce => 1,
        }
    }
}

/// Hyper-parameters of [`kwise_loss`].
#[derive(Clone, Copy, Debug)]
pub struct KwiseConfig {
    /// How a ranking is scored.
    pub method: KwiseMethod,
    /// The upstream gradient of the loss.
    pub grad_output: f32,
}

impl Default for KwiseConfig {
    fn default() -> Self {
        KwiseConfig { method: KwiseMethod::AllPairs, grad_output: 1.0 }
    }
}

/// The loss (mean over groups), its gradient with respect to the rewards ([G, K], their dtype) and the share of
/// correctly ordered pairs (`r_i > r_j` strictly for i ranked above j), over all groups.
#[derive(Debug)]
pub struct KwiseOutput {
    /// Mean over groups.
    pub loss: f32,
    /// d loss / d `rewards`, [G, K].
    pub grad: Tensor,
    /// Share of correctly ordered pairs.
    pub accuracy: f32,
}

/// Checked inputs of a K-wise call.
pub(crate) struct KwisePlan {
    pub groups: usize,
    pub k: usize,
    pub method: KwiseMethod,
    /// For each group, the candidates' indices from best to worst (`None`: already listed best first).
    pub order: Option<Vec<i64>>,
    /// `grad_output / G`.
    pub mean_scale: f64,
}

/// A K-wise ranking loss on `rewards` of shape [G, K] (G groups of K ≥ 2 candidates). Candidates are listed best
/// first, unless `order` (integer [G, K]) gives for each group the candidates' indices from best to worst, a
/// permutation of 0..K. CPU or CUDA by device.
pub fn kwise_loss(rewards: &Tensor, order: Option<&Tensor>, cfg: &KwiseConfig) -> Result<KwiseOutput> {
    check::float("rewards", rewards)?;
    let shape = check::rank("rewards", rewards, 2)?;
    let (groups, k) = (shape[0], shape[1]);
    check::non_empty("rewards", groups)?;
    if k < 2 {
        return Err(Error::Shape(format!(
            "`rewards` has shape {shape:?}: a K-wise loss needs at least 2 candidates per group"
        )));
    }
    let mut tensors = vec![("rewards", rewards)];
    if let Some(o) = order {
        check::integer("order", o)?;
        check::shape("order", o, &[groups, k])?;
        tensors.push(("order", o));
    }
    let device = check::same_device(&tensors)?;
    check::finite("grad_output", cfg.grad_output)?;
    let order = order.map(|o| permutations(o, k)).transpose()?;
    let plan = KwisePlan { groups, k, method: cfg.method, order, mean_scale: cfg.grad_output as f64 / groups as f64 };
    let (sums, grad) = match device {
        Device::Cpu => reward_model_cpu::kwise(rewards, &plan)?,
        Device::Cuda(_) => cuda::kwise(rewards, &plan)?,
    };
    let loss = (sums[0] / groups as f64) as f32;
    non_finite_is_an_error(loss, "rewards")?;
    Ok(KwiseOutput { loss, grad, accuracy: (sums[1] / groups as f64) as f32 })
}

/// The rows of `order`, each checked to be a permutation of 0..k.
fn permutations(order: &Tensor, k: usize) -> Result<Vec<i64>> {
    let values = host::integers("order", order)?;
    let mut seen = vec![usize::MAX; k];
    for (g, row) in values.chunks(k).enumerate() {
        for &v in row {
            let ok = usize::try_from(v).ok().filter(|&i| i < k && seen[i] != g);
            let i = ok.ok_or_else(|| {
                Error::InvalidArgument(format!("`order` row {g} is {row:?}: each row must be a permutation of 0..{k}"))
            })?;
            seen[i] = g;
        }
    }
    Ok(values)
}
