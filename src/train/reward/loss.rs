//! The losses a reward model trains with, on the rewards of a micro-batch, and the metrics TRL logs for them.

use super::RewardBatch;
use crate::ops::preference::{bradley_terry_loss, kwise_loss, BradleyTerryConfig, KwiseConfig, KwiseMethod};
use crate::runtime::{DType, Device, Tensor};
use crate::{Error, Result};

/// The loss a reward model is trained with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RewardLoss {
    /// On pairs (K = 2): `mean(-logσ(r_c - r_r - margin)) + c·mean((r_c + r_r)²)` (TRL's RewardTrainer).
    BradleyTerry { center_rewards_coefficient: Option<f32> },
    /// On ranked lists of K ≥ 2 responses (at K = 2 both methods are Bradley–Terry).
    Kwise(KwiseMethod),
}

impl Default for RewardLoss {
    fn default() -> Self {
        RewardLoss::BradleyTerry { center_rewards_coefficient: None }
    }
}

impl RewardLoss {
    /// `bradley-terry`, `kwise` (Plackett–Luce) or `kwise-all-pairs`, with TRL's centring coefficient for the first.
    pub fn from_name(name: &str, center_rewards_coefficient: Option<f32>) -> Result<RewardLoss> {
        match name {
            "bradley-terry" => Ok(RewardLoss::BradleyTerry { center_rewards_coefficient }),
            "kwise" | "kwise-all-pairs" if center_rewards_coefficient.is_some() => Err(Error::InvalidArgument(
                "`--center-rewards-coefficient` is a Bradley–Terry option: use `--loss bradley-terry`".into(),
            )),
            "kwise" => Ok(RewardLoss::Kwise(KwiseMethod::PlackettLuce)),
            "kwise-all-pairs" => Ok(RewardLoss::Kwise(KwiseMethod::AllPairs)),
            other => Err(Error::InvalidArgument(format!(
                "unknown loss `{other}`: use bradley-terry, kwise (Plackett–Luce) or kwise-all-pairs"
            ))),
        }
    }
}

/// The loss and TRL's metrics over some groups. For K-wise, `chosen` is the best response and `rejected` the worst,
/// and `accuracy` the share of correctly ordered pairs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RewardMetrics {
    /// The mean loss over the groups.
    pub loss: f64,
    /// Share of pairs ordered as the data ranks them (`r_better > r_worse`, strictly).
    pub accuracy: f64,
    /// `rewards/chosen`: mean reward of the chosen (best) responses.
    pub rewards_chosen: f64,
    /// `rewards/rejected`: mean reward of the rejected (worst) responses.
    pub rewards_rejected: f64,
    /// `margin`: mean of `r_chosen - r_rejected`.
    pub margin: f64,
}

impl RewardMetrics {
    /// The mean of `parts` weighted by their groups.
    pub(super) fn weighted_mean(parts: &[(f64, RewardMetrics)]) -> RewardMetrics {
        let total: f64 = parts.iter().map(|(w, _)| w).sum();
        let mean = |get: fn(&RewardMetrics) -> f64| parts.iter().map(|(w, m)| w * get(m)).sum::<f64>() / total;
        RewardMetrics {
            loss: mean(|m| m.loss),
            accuracy: mean(|m| m.accuracy),
            rewards_chosen: mean(|m| m.rewards_chosen),
            rewards_rejected: mean(|m| m.rewards_rejected),
            margin: mean(|m| m.margin),
        }
    }
}

/// The loss of one micro-batch's rewards (host, response-major), its metrics and its gradient with respect to them.
pub(super) fn loss_of(rewards: &[f32], batch: &RewardBatch, loss: RewardLoss) -> Result<(RewardMetrics, Vec<f32>)> {
    let (g, k) = (batch.groups(), batch.k);
    let cpu = Device::Cpu;
    let best = &rewards[..g];
    let worst = &rewards[(k - 1) * g..];
    let mean = |v: &[f32]| v.iter().map(|&x| f64::from(x)).sum::<f64>() / g as f64;
    let mut metrics = RewardMetrics {
        rewards_chosen: mean(best),
        rewards_rejected: mean(worst),
        margin: mean(best) - mean(worst),
        ..RewardMetrics::default()
    };
    let grad = match loss {
        RewardLoss::BradleyTerry { center_rewards_coefficient } => {
            let vector = |v: &[f32]| Tensor::from_f32(v, &[g], DType::F32, cpu);
            let margin = batch.margin.as_deref().map(vector).transpose()?;
            let cfg = BradleyTerryConfig { center_rewards_coefficient, ..BradleyTerryConfig::default() };
            let out = bradley_terry_loss(&vector(best)?, &vector(worst)?, margin.as_ref(), &cfg)?;
            (metrics.loss, metrics.accuracy) = (f64::from(out.loss), f64::from(out.metrics.accuracy));
            let mut grad = out.grad_chosen.to_vec::<f32>()?;
            grad.extend(out.grad_rejected.to_vec::<f32>()?);
            grad
        }
        RewardLoss::Kwise(method) => {
            // [G, K] best first, from the response-major rows.
            let grouped: Vec<f32> = (0..g).flat_map(|i| (0..k).map(move |j| rewards[j * g + i])).collect();
            let out = kwise_loss(
                &Tensor::from_f32(&grouped, &[g, k], DType::F32, cpu)?,
                None,
                &KwiseConfig { method, ..KwiseConfig::default() },
            )?;
            (metrics.loss, metrics.accuracy) = (f64::from(out.loss), f64::from(out.accuracy));
            let grad = out.grad.to_vec::<f32>()?;
            (0..k).flat_map(|j| (0..g).map(move |i| j + i * k)).map(|at| grad[at]).collect()
        }
    };
    Ok((metrics, grad))
}
