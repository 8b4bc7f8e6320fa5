//! Batched pairwise comparisons of G groups of K candidates, and UnifiedReward's pair selection rule.
//!
//! Every comparison starts from a **margin** `M[i,j]`, the evidence that candidate i beats j:
//! - from scores `s` `[G,K]`: `M[i,j] = s_i − s_j`;
//! - from verdict log-odds `L` `[G,K,K]` (`L[i,j] = log P(i beats j) − log P(j beats i)` judged with i shown first):
//!   `M[i,j] = ½(L[i,j] − L[j,i])`, the mean over both presentation orders, so a position bias cancels.
//!
//! `M[j,i] = −M[i,j]` exactly, in floating point too. Who wins is decided by the sign of `M` (not by the rounded
//! probability): i beats j when `M[i,j] > 0`, they tie when it is 0. A NaN margin (a NaN input, or `∞ − ∞`) makes
//! the pair **void**: its probability is NaN and it counts as neither a win, a loss nor a tie, and the
//! Bradley–Terry fit leaves it out. The CPU path (`cpu.rs`) and the CUDA kernels (`kernels/compare.cu`, launched
//! from `cuda.rs`) do the same per-group math, the fit in f64 with its Newton system in f32. The CUDA comparison
//! takes K ≤ [`CUDA_MAX_CANDIDATES`] (the selection has no limit); kernels flush f32 denormals, so a margin below
//! 1.2e-38 in magnitude is a tie there.
//!
//! G = 0 or K = 0 is an error. K = 1 is a group without pairs: P = `[½]`, no wins, rank 1, strength 0, best = worst
//! = 0, consistency NaN, and the selection keeps nothing.

mod bradley_terry;
mod cpu;
mod cuda;
mod group;
mod preference;
mod selection;

use crate::ops::check;
use crate::runtime::cuda::KernelModule;
use crate::runtime::{Device, Tensor};
use crate::{Error, Result};

pub const KERNELS: KernelModule = crate::kernel_module!("compare");

/// Largest K the CUDA comparison kernel handles: one thread per candidate, the f32 Newton system of the fit
/// (K² floats) in shared memory.
pub const CUDA_MAX_CANDIDATES: usize = 96;

/// The smallest ridge accepted (the optimum moves out as ln(1/ridge)).
pub const MIN_RIDGE: f32 = 1e-8;

/// What the candidates of each group are compared on. Inputs are f32, bf16 or f16, read into f32.
#[derive(Clone, Copy, Debug)]
pub enum Verdicts<'a> {
    /// Scalar scores `[G,K]`, higher is better.
    Scores(&'a Tensor),
    /// Verdict log-odds `[G,K,K]` with both presentation orders; the diagonal is ignored.
    LogOdds(&'a Tensor),
}

/// How a score margin becomes a preference probability. Log-odds always use the sigmoid.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ScoreLink {
    /// `P[i,j] = σ(s_i − s_j)`: the Bradley–Terry model with the scores as log-strengths.
    #[default]
    Sigmoid,
    /// `P[i,j]` is 1, ½ or 0 as `s_i` is above, equal to or below `s_j`: wins only, no confidence.
    Hard,
}

/// The Bradley–Terry maximum-likelihood fit.
///
/// It maximises `Σ_{i≠j} P[i,j]·log σ(θ_i − θ_j) − ½·ridge·Σ θ_i²` over the log-strengths θ (the soft win matrix
/// `P` as the observed wins, void pairs left out) by Newton's method, halving a step until the objective does not
/// decrease. It starts from the row means of the margins clamped to ±8 for the sigmoid link (the least-squares
/// fit of `θ_i − θ_j ≈ M[i,j]`: within the ridge's shrinkage of the optimum for consistent scores) and from 0 for
/// the hard link. The ridge (a Gaussian prior of variance 1/ridge on each θ) makes the problem
/// strictly concave, so the fit converges even when one candidate wins everything; since `P[i,j] + P[j,i] = 1` its
/// optimum already has mean 0. A group has converged when a step moves no θ by more than `tolerance`; after
/// `max_iterations` steps it stops and reports that it has not. Returned strengths are θ minus their mean.
///
/// Separable groups (one candidate beats another in every comparison, as always under the hard link) have no finite
/// maximum without the ridge; with it the optimum is finite but far out (about ±ln(1/ridge)/2 for K = 2), and the
/// strengths are always finite. A step that f32 cannot solve (a comparison graph in pieces joined only by a tiny
/// ridge) ends the fit at its last point, reported as not converged.
#[derive(Clone, Copy, Debug)]
pub struct BradleyTerryFit {
    /// Weight of the ridge ½·ridge·Σθ²; finite and at least [`MIN_RIDGE`].
    pub ridge: f32,
    /// Largest change of any log-strength in the last step for the fit to count as converged; positive.
    pub tolerance: f32,
    /// Newton steps at most; at least 1.
    pub max_iterations: u32,
}

impl Default for BradleyTerryFit {
    fn default() -> Self {
        BradleyTerryFit { ridge: 1e-2, tolerance: 1e-6, max_iterations: 100 }
    }
}

/// Configuration of [`compare`].
#[derive(Clone, Copy, Debug, Default)]
pub struct CompareConfig {
    pub score_link: ScoreLink,
    pub fit: BradleyTerryFit,
}

/// Everything [`compare`] computes, on the input's device.
#[derive(Debug)]
pub struct Comparison {
    /// `P[i,j]` `[G,K,K]` f32: the probability that i beats j; ½ on the diagonal, NaN for a void pair.
    pub preference: Tensor,
    /// `[G,K]` f32: pairs won, a tie counting ½.
    pub wins: Tensor,
    /// `[G,K]` i32: the Copeland score, pairs won minus pairs lost (ties and void pairs count 0).
    pub copeland: Tensor,
    /// `[G,K]` i32: the Copeland rank, 1 for the best; tied scores share the best of their ranks and the next rank
    /// skips ("1, 2, 2, 4": one plus the number of candidates with a strictly higher score).
    pub ranks: Tensor,
    /// `[G,K]` f32: Bradley–Terry log-strengths, mean 0 in each group.
    pub strengths: Tensor,
    /// `[G]` i32: Newton steps the fit took.
    pub iterations: Tensor,
    /// `[G]` i32: 1 if the fit met the tolerance within the iteration cap, else 0.
    pub converged: Tensor,
    /// `[G]` i32: the best candidate: highest Copeland score, then highest strength, then lowest index (strengths
    /// within 1e-5 count as equal: equal records have equal strengths, up to rounding).
    pub best: Tensor,
    /// `[G]` i32: the worst candidate: lowest Copeland score, then lowest strength, then highest index.
    pub worst: Tensor,
    /// `[G]` f32, log-odds input only: the share of unordered pairs whose winner survives swapping the order,
    /// `sign(L[i,j]) == −sign(L[j,i])` (two zeros agree); pairs with a NaN verdict are left out, and a group
    /// without pairs (K = 1) gets NaN.
    pub consistency: Option<Tensor>,
}

/// How candidates are paired for the selection rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pairing {
    /// UnifiedReward's (0,1), (2,3), …; with K odd the last candidate is in no pair, so in neither list.
    #[default]
    Adjacent,
    /// Every unordered pair: a candidate can be in both lists.
    AllPairs,
}

/// What a tied pair verdict (margin exactly 0) does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TiePolicy {
    /// The pair adds to neither list.
    #[default]
    Skip,
    /// The candidate with the lower index (shown first) wins.
    FirstWins,
    /// The whole group is not kept.
    DropGroup,
}

/// What a NaN does: a NaN pair verdict, or a NaN pointwise score of a candidate in a pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NanPolicy {
    /// The call fails, naming the first such group.
    #[default]
    Error,
    /// A NaN verdict's pair adds to neither list; a candidate with a NaN score cannot be the final pick.
    Skip,
}

/// Configuration of [`select_pairs`].
#[derive(Clone, Copy, Debug, Default)]
pub struct SelectionConfig {
    pub pairing: Pairing,
    pub ties: TiePolicy,
    pub nans: NanPolicy,
}

/// Per group, the selected pair, on the input's device. A group without a pick has index −1 and score NaN.
#[derive(Debug)]
pub struct Selection {
    /// `[G]` i32: the best-scored candidate of the chosen list (the lowest index among equal scores).
    pub chosen: Tensor,
    /// `[G]` i32: the worst-scored candidate of the rejected list (the lowest index among equal scores).
    pub rejected: Tensor,
    /// `[G]` f32: their pointwise scores.
    pub chosen_score: Tensor,
    pub rejected_score: Tensor,
    /// `[G]` i32: 1 if both exist and the chosen score is strictly greater (as numbers), else 0.
    pub kept: Tensor,
}

/// Validated sizes of a call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    pub groups: usize,
    pub candidates: usize,
    pub device: Device,
}

fn shape_of(verdicts: Verdicts<'_>) -> Result<Shape> {
    let (name, t, rank) = match verdicts {
        Verdicts::Scores(t) => ("scores", t, 2),
        Verdicts::LogOdds(t) => ("log_odds", t, 3),
    };
    let dims = check::rank(name, t, rank)?;
    check::float(name, t)?;
    let (groups, candidates) = (dims[0], dims[1]);
    if rank == 3 && dims[2] != candidates {
        return Err(Error::Shape(format!("`log_odds` must be [G, K, K], got {dims:?}")));
    }
    check::non_empty(&format!("{name} (G)"), groups)?;
    check::non_empty(&format!("{name} (K)"), candidates)?;
    if candidates > i32::MAX as usize {
        return Err(Error::Shape(format!("`{name}` has {candidates} candidates per group, more than i32 indexes")));
    }
    let device = check::same_device(&[(name, t)])?;
    Ok(Shape { groups, candidates, device })
}

impl BradleyTerryFit {
    fn validate(&self) -> Result<()> {
        check::finite("fit.ridge", self.ridge)?;
        check::finite("fit.tolerance", self.tolerance)?;
        if self.ridge < MIN_RIDGE {
            return Err(Error::InvalidArgument(format!(
                "`fit.ridge` must be at least {MIN_RIDGE:e}, got {}",
                self.ridge
            )));
        }
        if self.tolerance <= 0.0 {
            return Err(Error::InvalidArgument(format!("`fit.tolerance` must be positive, got {}", self.tolerance)));
        }
        if self.max_iterations == 0 || self.max_iterations > i32::MAX as u32 {
            return Err(Error::InvalidArgument(format!(
                "`fit.max_iterations` must be between 1 and 2147483647, got {}",
                self.max_iterations
            )));
        }
        Ok(())
    }
}

/// Compares the K candidates of each of G groups: preference matrix, wins, Copeland scores and ranks,
/// Bradley–Terry strengths with a convergence report, best and worst candidate, and (for log-odds) the
/// position-consistency rate. See [`Comparison`] for each output and the module docs for the margins.
pub fn compare(verdicts: Verdicts<'_>, cfg: &CompareConfig) -> Result<Comparison> {
    let shape = shape_of(verdicts)?;
    cfg.fit.validate()?;
    match shape.device {
        Device::Cpu => cpu::compare(verdicts, shape, cfg),
        Device::Cuda(_) => cuda::compare(verdicts, shape, cfg),
    }
}

/// UnifiedReward's selection rule, per group: the pair verdicts (`verdicts`) split the paired candidates into a
/// chosen list (winners) and a rejected list (losers); the final chosen is the best-scored of the chosen list by
/// the pointwise scores `pointwise` `[G,K]` (same dtype as the verdicts), the final rejected the worst-scored of the rejected list, and the pair is kept only if the
/// chosen score is strictly greater. Scores are compared as numbers (10 > 9), never as text. K = 1 is never kept.
pub fn select_pairs(verdicts: Verdicts<'_>, pointwise: &Tensor, cfg: &SelectionConfig) -> Result<Selection> {
    let shape = shape_of(verdicts)?;
    let (Verdicts::Scores(first) | Verdicts::LogOdds(first)) = verdicts;
    check::float("pointwise", pointwise)?;
    check::shape("pointwise", pointwise, &[shape.groups, shape.candidates])?;
    check::same_device(&[("verdicts", first), ("pointwise", pointwise)])?;
    if pointwise.dtype() != first.dtype() {
        return Err(Error::DType {
            arg: "pointwise",
            got: pointwise.dtype(),
            expected: format!("the verdicts' dtype ({})", first.dtype()),
        });
    }
    let status = match shape.device {
        Device::Cpu => cpu::select(verdicts, pointwise, shape, cfg)?,
        Device::Cuda(_) => cuda::select(verdicts, pointwise, shape, cfg)?,
    };
    status.into_result()
}

/// A selection and, under [`NanPolicy::Error`], the first group that met a NaN.
pub(crate) struct SelectionStatus {
    pub selection: Selection,
    /// (group, what was NaN) of the first offending group.
    pub nan: Option<(usize, selection::NanKind)>,
}

impl SelectionStatus {
    fn into_result(self) -> Result<Selection> {
        match self.nan {
            None => Ok(self.selection),
            Some((g, kind)) => Err(Error::InvalidArgument(format!(
                "group {g}: {} is NaN (the NaN policy is `error`; the `skip` policy leaves NaN verdicts out: \
                 UR_NANS_SKIP in C, nans=\"skip\" in Python, NanPolicy::Skip in Rust)",
                kind.describe()
            ))),
        }
    }
}
