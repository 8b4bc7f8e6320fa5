//! CUDA launches of the family (kernels in `kernels/compare.cu`): one block per group for the comparison, one
//! thread per group for the selection. Outputs are allocated on the input's device.

use super::selection::NanKind;
use super::{
    CompareConfig, Comparison, NanPolicy, Pairing, ScoreLink, Selection, SelectionConfig, SelectionStatus, Shape,
    TiePolicy, Verdicts, CUDA_MAX_CANDIDATES, KERNELS,
};
use crate::runtime::cuda::{launch_config, PushKernelArg};
use crate::runtime::{DType, Tensor};
use crate::{Error, Result};

/// Threads per block of the selection kernel.
const SELECT_THREADS: u32 = 128;
/// Blocks of the grid-stride selection kernel: enough to fill any current GPU.
const MAX_SELECT_BLOCKS: usize = 4096;

fn ptr(t: &Tensor) -> Result<u64> {
    Ok(t.cuda_ptr()?.0)
}

/// The verdict tensor and whether it holds log-odds.
fn split(verdicts: Verdicts<'_>) -> (&Tensor, i32) {
    match verdicts {
        Verdicts::Scores(t) => (t, 0),
        Verdicts::LogOdds(t) => (t, 1),
    }
}

fn groups_i32(shape: Shape) -> Result<i32> {
    i32::try_from(shape.groups)
        .map_err(|_| Error::Shape(format!("{} groups is more than the CUDA kernels index", shape.groups)))
}

/// Dynamic shared memory of one comparison block: θ, trial and 32 reduction doubles, then the f32 Newton system
/// (K²), right-hand side (K) and step (K), then the i32 Copeland scores (K); the layout of `carve` in the kernel.
fn shared_bytes(k: usize) -> u32 {
    (8 * (2 * k + 32) + 4 * (k * k + 2 * k) + 4 * k) as u32
}

pub(super) fn compare(verdicts: Verdicts<'_>, shape: Shape, cfg: &CompareConfig) -> Result<Comparison> {
    let (input, log_odds) = split(verdicts);
    let (g, k, device) = (shape.groups, shape.candidates, shape.device);
    if k > CUDA_MAX_CANDIDATES {
        return Err(Error::Shape(format!(
            "the CUDA comparison handles at most {CUDA_MAX_CANDIDATES} candidates per group, got {k}"
        )));
    }
    groups_i32(shape)?;
    let backend = input.cuda_ptr()?.1.clone();
    let f32s = |dims: &[usize]| Tensor::zeros(dims, DType::F32, device);
    let i32s = |dims: &[usize]| Tensor::zeros(dims, DType::I32, device);
    let out = Comparison {
        preference: f32s(&[g, k, k])?,
        wins: f32s(&[g, k])?,
        copeland: i32s(&[g, k])?,
        ranks: i32s(&[g, k])?,
        strengths: f32s(&[g, k])?,
        iterations: i32s(&[g])?,
        converged: i32s(&[g])?,
        best: i32s(&[g])?,
        worst: i32s(&[g])?,
        consistency: if log_odds == 1 { Some(f32s(&[g])?) } else { None },
    };
    let f = backend.function(&KERNELS, &format!("cmp_group_{}", input.dtype().name()))?;
    let hard = i32::from(log_odds == 0 && cfg.score_link == ScoreLink::Hard);
    let (k_i32, ridge, tol, max_iter) =
        (k as i32, f64::from(cfg.fit.ridge), f64::from(cfg.fit.tolerance), cfg.fit.max_iterations as i32);
    let inputs = ptr(input)?;
    let outs = [
        ptr(&out.preference)?,
        ptr(&out.wins)?,
        ptr(&out.copeland)?,
        ptr(&out.ranks)?,
        ptr(&out.strengths)?,
        ptr(&out.iterations)?,
        ptr(&out.converged)?,
        ptr(&out.best)?,
        ptr(&out.worst)?,
        out.consistency.as_ref().map_or(Ok(0), ptr)?,
    ];
    let mut launch = backend.stream().launch_builder(&f);
    launch.arg(&inputs).arg(&log_odds).arg(&hard).arg(&k_i32).arg(&ridge).arg(&tol).arg(&max_iter);
    for o in &outs {
        launch.arg(o);
    }
    let threads = k.div_ceil(32) as u32 * 32;
    // Kernel: cmp_group_<T>(const T*, int, int, int, double, double, int, float*, float*, int*, int*, float*,
    // int*, int*, int*, int*, float*), one block per group (G blocks) of ⌈K/32⌉·32 ≥ K threads.
    // SAFETY: arguments match the kernel; `inputs` holds G·K or G·K·K elements of T; the outputs G·K·K, G·K (×4)
    // and G (×5); `consistency` is null for scores (checked by the kernel); shared memory is `carve`'s for K ≤ 96.
    unsafe { launch.launch(launch_config(g, threads, shared_bytes(k))?) }?;
    Ok(out)
}

pub(super) fn select(
    verdicts: Verdicts<'_>,
    scores: &Tensor,
    shape: Shape,
    cfg: &SelectionConfig,
) -> Result<SelectionStatus> {
    let (input, log_odds) = split(verdicts);
    let (g, k, device) = (shape.groups, shape.candidates, shape.device);
    let groups = groups_i32(shape)?;
    let backend = input.cuda_ptr()?.1.clone();
    let selection = Selection {
        chosen: Tensor::zeros(&[g], DType::I32, device)?,
        rejected: Tensor::zeros(&[g], DType::I32, device)?,
        chosen_score: Tensor::zeros(&[g], DType::F32, device)?,
        rejected_score: Tensor::zeros(&[g], DType::F32, device)?,
        kept: Tensor::zeros(&[g], DType::I32, device)?,
    };
    let status = Tensor::zeros(&[g], DType::I32, device)?;
    let f = backend.function(&KERNELS, &format!("cmp_select_{}", input.dtype().name()))?;
    let all_pairs = i32::from(cfg.pairing == Pairing::AllPairs);
    let ties = match cfg.ties {
        TiePolicy::Skip => 0i32,
        TiePolicy::FirstWins => 1,
        TiePolicy::DropGroup => 2,
    };
    let nan_skip = i32::from(cfg.nans == NanPolicy::Skip);
    let (inputs, score_ptr, k_i32) = (ptr(input)?, ptr(scores)?, k as i32);
    let outs = [
        ptr(&selection.chosen)?,
        ptr(&selection.rejected)?,
        ptr(&selection.chosen_score)?,
        ptr(&selection.rejected_score)?,
        ptr(&selection.kept)?,
        ptr(&status)?,
    ];
    let mut launch = backend.stream().launch_builder(&f);
    launch.arg(&inputs).arg(&log_odds).arg(&score_ptr).arg(&groups).arg(&k_i32);
    launch.arg(&all_pairs).arg(&ties).arg(&nan_skip);
    for o in &outs {
        launch.arg(o);
    }
    let blocks = g.div_ceil(SELECT_THREADS as usize).min(MAX_SELECT_BLOCKS);
    // SAFETY: cmp_select_<T>(const T*, int, const T*, int, int, int, int, int, int*, int*, float*, float*, int*,
    // int*): a grid-stride loop over G groups; `inputs` holds G·K or G·K·K elements of T, `scores` G·K, and each
    // of the six outputs G elements.
    unsafe { launch.launch(launch_config(blocks, SELECT_THREADS, 0)?) }?;
    let nan = if cfg.nans == NanPolicy::Error {
        status.to_vec::<i32>()?.iter().enumerate().find_map(|(gi, &c)| NanKind::from_code(c).map(|kind| (gi, kind)))
    } else {
        None
    };
    Ok(SelectionStatus { selection, nan })
}
