//! Comparisons of G groups of K candidates: `ur_compare` and `ur_select_pairs`.

use std::ffi::c_void;

use super::context::{self, code, read_config, size_of_u32, ur_context, Config, Versioned};
use super::dlpack::{on_device, write_outputs, DLTensor, Desc};
use super::status::{call, ur_status, FfiResult};
use crate::ops::compare::{
    compare, select_pairs, BradleyTerryFit, CompareConfig, NanPolicy, Pairing, ScoreLink, SelectionConfig, TiePolicy,
    Verdicts,
};
use crate::Tensor;

/// `verdict_kind`: scores `[G,K]`, higher is better.
pub const UR_VERDICTS_SCORES: i32 = 0;
/// `verdict_kind`: verdict log-odds `[G,K,K]` with both presentation orders.
pub const UR_VERDICTS_LOG_ODDS: i32 = 1;
/// `ur_compare_config.score_link`: `P[i,j]` = sigmoid(s_i - s_j).
pub const UR_SCORE_LINK_SIGMOID: i32 = 0;
/// `ur_compare_config.score_link`: `P[i,j]` is 1, 1/2 or 0 (wins only).
pub const UR_SCORE_LINK_HARD: i32 = 1;
/// `ur_select_config.pairing`: UnifiedReward's pairs (0,1), (2,3), ...
pub const UR_PAIRING_ADJACENT: i32 = 0;
/// `ur_select_config.pairing`: every unordered pair.
pub const UR_PAIRING_ALL_PAIRS: i32 = 1;
/// `ur_select_config.ties`: a tied pair adds to neither list.
pub const UR_TIES_SKIP: i32 = 0;
/// `ur_select_config.ties`: the lower index wins a tie.
pub const UR_TIES_FIRST_WINS: i32 = 1;
/// `ur_select_config.ties`: a tie drops the whole group.
pub const UR_TIES_DROP_GROUP: i32 = 2;
/// `ur_select_config.nans`: a NaN fails the call.
pub const UR_NANS_ERROR: i32 = 0;
/// `ur_select_config.nans`: a NaN pair adds to neither list.
pub const UR_NANS_SKIP: i32 = 1;

fn verdicts<'a>(kind: i32, t: &'a Tensor) -> FfiResult<Verdicts<'a>> {
    let table: [fn(&'a Tensor) -> Verdicts<'a>; 2] = [Verdicts::Scores, Verdicts::LogOdds];
    Ok(code("verdict_kind", kind, &table)?(t))
}

/// Configuration of `ur_compare`. Initialise with `ur_compare_config_default()`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ur_compare_config {
    /// `sizeof(ur_compare_config)`.
    pub struct_size: u32,
    /// `UR_VERDICTS_SCORES` (default) or `UR_VERDICTS_LOG_ODDS`: what `verdicts` holds.
    pub verdict_kind: i32,
    /// `UR_SCORE_LINK_SIGMOID` (default) or `UR_SCORE_LINK_HARD`.
    pub score_link: i32,
    /// Bradley-Terry fit: ridge weight, finite and >= 1e-8 (default 1e-2).
    pub ridge: f32,
    /// Bradley-Terry fit: convergence tolerance on the log-strengths, > 0 (default 1e-6).
    pub tolerance: f32,
    /// Bradley-Terry fit: Newton steps at most, >= 1 (default 100).
    pub max_iterations: u32,
}

impl Versioned for ur_compare_config {
    const NAME: &'static str = "ur_compare_config";
}

impl Config for ur_compare_config {
    fn default_value() -> Self {
        let fit = BradleyTerryFit::default();
        ur_compare_config {
            struct_size: size_of_u32::<Self>(),
            verdict_kind: UR_VERDICTS_SCORES,
            score_link: UR_SCORE_LINK_SIGMOID,
            ridge: fit.ridge,
            tolerance: fit.tolerance,
            max_iterations: fit.max_iterations,
        }
    }
}

/// Scores, sigmoid link, the default fit.
#[no_mangle]
pub extern "C" fn ur_compare_config_default() -> ur_compare_config {
    ur_compare_config::default_value()
}

/// Compares the K candidates of each of G groups (`verdicts`: float scores `[G,K]` or log-odds `[G,K,K]`, as
/// `cfg->verdict_kind` says). Outputs, each may be NULL: `preference_out` `[G,K,K]` float32 (`P[i,j]` that i beats j),
/// `wins_out` `[G,K]` float32, `copeland_out` `[G,K]` int32, `ranks_out` `[G,K]` int32 (1 = best), `strengths_out`
/// `[G,K]` float32 (Bradley-Terry log-strengths), `iterations_out` `[G]` int32, `converged_out` `[G]` int32, `best_out`
/// `[G]` int32, `worst_out` `[G]` int32, `consistency_out` `[G]` float32 (log-odds only; must be NULL for scores). Does
/// not synchronise on CUDA.
///
/// # Safety
/// As for `ur_logprobs_forward`.
#[no_mangle]
pub unsafe extern "C" fn ur_compare(
    ctx: *mut ur_context,
    verdicts_in: *const DLTensor,
    cfg: *const ur_compare_config,
    preference_out: *const DLTensor,
    wins_out: *const DLTensor,
    copeland_out: *const DLTensor,
    ranks_out: *const DLTensor,
    strengths_out: *const DLTensor,
    iterations_out: *const DLTensor,
    converged_out: *const DLTensor,
    best_out: *const DLTensor,
    worst_out: *const DLTensor,
    consistency_out: *const DLTensor,
    stream: *mut c_void,
) -> ur_status {
    // SAFETY (whole body): this function's contract, passed on to the helpers that read the pointers.
    call(|| unsafe {
        context::check(ctx)?;
        let c = read_config(cfg)?;
        let score_link = code("score_link", c.score_link, &[ScoreLink::Sigmoid, ScoreLink::Hard])?;
        let fit = BradleyTerryFit { ridge: c.ridge, tolerance: c.tolerance, max_iterations: c.max_iterations };
        let cfg = CompareConfig { score_link, fit };
        let input = Desc::required("verdicts", verdicts_in)?;
        let outs = [
            Desc::optional("preference_out", preference_out)?,
            Desc::optional("wins_out", wins_out)?,
            Desc::optional("copeland_out", copeland_out)?,
            Desc::optional("ranks_out", ranks_out)?,
            Desc::optional("strengths_out", strengths_out)?,
            Desc::optional("iterations_out", iterations_out)?,
            Desc::optional("converged_out", converged_out)?,
            Desc::optional("best_out", best_out)?,
            Desc::optional("worst_out", worst_out)?,
            Desc::optional("consistency_out", consistency_out)?,
        ];
        let mut descs = vec![Some(&input)];
        descs.extend(outs.iter().map(Option::as_ref));
        on_device(&descs, stream, || {
            let t = input.tensor()?;
            let r = compare(verdicts(c.verdict_kind, &t)?, &cfg)?;
            let results = [
                &r.preference,
                &r.wins,
                &r.copeland,
                &r.ranks,
                &r.strengths,
                &r.iterations,
                &r.converged,
                &r.best,
                &r.worst,
            ];
            let mut pairs: Vec<_> = outs.iter().map(Option::as_ref).zip(results).collect();
            match (&outs[9], &r.consistency) {
                (Some(out), Some(consistency)) => pairs.push((Some(out), consistency)),
                (Some(_), None) => {
                    return Err(super::status::Failure::invalid(
                        "`consistency_out` is given but the verdicts are scores (it exists for log-odds only)",
                    ))
                }
                _ => {}
            }
            write_outputs(&pairs)
        })
    })
}

/// Configuration of `ur_select_pairs`. Initialise with `ur_select_config_default()`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ur_select_config {
    /// `sizeof(ur_select_config)`.
    pub struct_size: u32,
    /// `UR_VERDICTS_SCORES` (default) or `UR_VERDICTS_LOG_ODDS`: what `verdicts` holds.
    pub verdict_kind: i32,
    /// `UR_PAIRING_ADJACENT` (default) or `UR_PAIRING_ALL_PAIRS`.
    pub pairing: i32,
    /// `UR_TIES_SKIP` (default), `UR_TIES_FIRST_WINS` or `UR_TIES_DROP_GROUP`.
    pub ties: i32,
    /// `UR_NANS_ERROR` (default) or `UR_NANS_SKIP`.
    pub nans: i32,
}

impl Versioned for ur_select_config {
    const NAME: &'static str = "ur_select_config";
}

impl Config for ur_select_config {
    fn default_value() -> Self {
        ur_select_config {
            struct_size: size_of_u32::<Self>(),
            verdict_kind: UR_VERDICTS_SCORES,
            pairing: UR_PAIRING_ADJACENT,
            ties: UR_TIES_SKIP,
            nans: UR_NANS_ERROR,
        }
    }
}

/// Scores, adjacent pairs, ties skipped, NaN an error.
#[no_mangle]
pub extern "C" fn ur_select_config_default() -> ur_select_config {
    ur_select_config::default_value()
}

/// UnifiedReward's pair selection per group: the pair verdicts (`verdicts`, as `cfg->verdict_kind` says) split
/// the paired candidates into winners and losers; the chosen is the best by `pointwise` `[G,K]` (the verdicts'
/// dtype) among the winners, the rejected the worst among the losers, kept when the chosen score is strictly
/// greater. Outputs `[G]`, each may be NULL: `chosen_out`, `rejected_out` int32 (-1 when none), `chosen_score_out`,
/// `rejected_score_out` float32 (NaN when none), `kept_out` int32 (0/1). With `UR_NANS_ERROR` a NaN fails the call
/// (on CUDA after a wait on `stream`).
///
/// # Safety
/// As for `ur_logprobs_forward`.
#[no_mangle]
pub unsafe extern "C" fn ur_select_pairs(
    ctx: *mut ur_context,
    verdicts_in: *const DLTensor,
    pointwise: *const DLTensor,
    cfg: *const ur_select_config,
    chosen_out: *const DLTensor,
    rejected_out: *const DLTensor,
    chosen_score_out: *const DLTensor,
    rejected_score_out: *const DLTensor,
    kept_out: *const DLTensor,
    stream: *mut c_void,
) -> ur_status {
    // SAFETY (whole body): this function's contract, passed on to the helpers that read the pointers.
    call(|| unsafe {
        context::check(ctx)?;
        let c = read_config(cfg)?;
        let cfg = SelectionConfig {
            pairing: code("pairing", c.pairing, &[Pairing::Adjacent, Pairing::AllPairs])?,
            ties: code("ties", c.ties, &[TiePolicy::Skip, TiePolicy::FirstWins, TiePolicy::DropGroup])?,
            nans: code("nans", c.nans, &[NanPolicy::Error, NanPolicy::Skip])?,
        };
        let input = Desc::required("verdicts", verdicts_in)?;
        let pointwise = Desc::required("pointwise", pointwise)?;
        let outs = [
            Desc::optional("chosen_out", chosen_out)?,
            Desc::optional("rejected_out", rejected_out)?,
            Desc::optional("chosen_score_out", chosen_score_out)?,
            Desc::optional("rejected_score_out", rejected_score_out)?,
            Desc::optional("kept_out", kept_out)?,
        ];
        let mut descs = vec![Some(&input), Some(&pointwise)];
        descs.extend(outs.iter().map(Option::as_ref));
        on_device(&descs, stream, || {
            let t = input.tensor()?;
            let s = select_pairs(verdicts(c.verdict_kind, &t)?, &pointwise.tensor()?, &cfg)?;
            let results = [&s.chosen, &s.rejected, &s.chosen_score, &s.rejected_score, &s.kept];
            write_outputs(&outs.iter().map(Option::as_ref).zip(results).collect::<Vec<_>>())
        })
    })
}
