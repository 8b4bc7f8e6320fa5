//! The CPU path: groups in parallel with rayon, each by the per-group functions of this family.

use rayon::prelude::*;

use super::bradley_terry::{self, Workspace};
use super::group::{Group, Link};
use super::preference;
use super::selection::{self, NanKind};
use super::{CompareConfig, Comparison, Selection, SelectionConfig, SelectionStatus, Shape, Verdicts};
use crate::runtime::{Device, Tensor};
use crate::Result;

/// Groups handed to one rayon task: about 64K units of work when one group costs `cost_per_pair`·K² units.
fn groups_per_task(k: usize, cost_per_pair: usize) -> usize {
    ((1 << 16) / (cost_per_pair * k * k).max(1)).max(1)
}

/// The fit costs a few Newton steps of an exponential and a logarithm per pair, plus the K³/3 elimination.
const FIT_COST_PER_PAIR: usize = 64;

/// The verdicts as f32, and whether they are log-odds.
fn host_verdicts(verdicts: Verdicts<'_>) -> Result<(std::borrow::Cow<'_, [f32]>, bool)> {
    Ok(match verdicts {
        Verdicts::Scores(t) => (t.to_f32_cow()?, false),
        Verdicts::LogOdds(t) => (t.to_f32_cow()?, true),
    })
}

fn group_of(values: &[f32], log_odds: bool, k: usize, g: usize) -> Group<'_> {
    if log_odds {
        Group::LogOdds(&values[g * k * k..(g + 1) * k * k], k)
    } else {
        Group::Scores(&values[g * k..(g + 1) * k])
    }
}

/// One group's slices of the outputs.
struct GroupOut<'a> {
    preference: &'a mut [f32],
    wins: &'a mut [f32],
    copeland: &'a mut [i32],
    ranks: &'a mut [i32],
    strengths: &'a mut [f32],
    report: &'a mut [i32],
    extremes: &'a mut [i32],
    consistency: &'a mut f32,
}

pub(super) fn compare(verdicts: Verdicts<'_>, shape: Shape, cfg: &CompareConfig) -> Result<Comparison> {
    let (g, k) = (shape.groups, shape.candidates);
    let (values, log_odds) = host_verdicts(verdicts)?;
    let link = Link::of(log_odds, cfg.score_link);
    let mut preference = vec![0.0f32; g * k * k];
    let (mut wins, mut strengths) = (vec![0.0f32; g * k], vec![0.0f32; g * k]);
    let (mut copeland, mut ranks) = (vec![0i32; g * k], vec![0i32; g * k]);
    // (iterations, converged) and (best, worst) per group, interleaved.
    let (mut report, mut extremes) = (vec![0i32; 2 * g], vec![0i32; 2 * g]);
    let mut consistency = vec![0.0f32; g];

    let mut outs: Vec<GroupOut<'_>> = preference
        .chunks_mut(k * k)
        .zip(wins.chunks_mut(k))
        .zip(copeland.chunks_mut(k))
        .zip(ranks.chunks_mut(k))
        .zip(strengths.chunks_mut(k))
        .zip(report.chunks_mut(2))
        .zip(extremes.chunks_mut(2))
        .zip(consistency.iter_mut())
        .map(|(((((((preference, wins), copeland), ranks), strengths), report), extremes), consistency)| GroupOut {
            preference,
            wins,
            copeland,
            ranks,
            strengths,
            report,
            extremes,
            consistency,
        })
        .collect();
    outs.par_iter_mut().enumerate().with_min_len(groups_per_task(k, FIT_COST_PER_PAIR)).for_each_init(
        || Workspace::new(k),
        |ws, (gi, out)| {
            let group = group_of(&values, log_odds, k, gi);
            let fit = bradley_terry::fit(group, link, &cfg.fit, ws, out.strengths);
            preference::fill_preference(ws.probabilities(), out.preference);
            preference::wins_and_copeland(group, out.wins, out.copeland);
            preference::ranks(out.copeland, out.ranks);
            out.report.copy_from_slice(&[fit.iterations, i32::from(fit.converged)]);
            let (best, worst) = preference::best_and_worst(out.copeland, out.strengths);
            out.extremes.copy_from_slice(&[best, worst]);
            if let Group::LogOdds(l, _) = group {
                *out.consistency = preference::consistency(l, k);
            }
        },
    );
    drop(outs);

    let column = |v: &[i32], c: usize| -> Vec<i32> { v.chunks(2).map(|p| p[c]).collect() };
    let cpu = Device::Cpu;
    Ok(Comparison {
        preference: Tensor::from_slice(&preference, &[g, k, k], cpu)?,
        wins: Tensor::from_slice(&wins, &[g, k], cpu)?,
        copeland: Tensor::from_slice(&copeland, &[g, k], cpu)?,
        ranks: Tensor::from_slice(&ranks, &[g, k], cpu)?,
        strengths: Tensor::from_slice(&strengths, &[g, k], cpu)?,
        iterations: Tensor::from_slice(&column(&report, 0), &[g], cpu)?,
        converged: Tensor::from_slice(&column(&report, 1), &[g], cpu)?,
        best: Tensor::from_slice(&column(&extremes, 0), &[g], cpu)?,
        worst: Tensor::from_slice(&column(&extremes, 1), &[g], cpu)?,
        consistency: if log_odds { Some(Tensor::from_slice(&consistency, &[g], cpu)?) } else { None },
    })
}

pub(super) fn select(
    verdicts: Verdicts<'_>,
    scores: &Tensor,
    shape: Shape,
    cfg: &SelectionConfig,
) -> Result<SelectionStatus> {
    let (g, k) = (shape.groups, shape.candidates);
    let (values, log_odds) = host_verdicts(verdicts)?;
    let scores = scores.to_f32_cow()?;
    let picks: Vec<std::result::Result<selection::Pick, NanKind>> = (0..g)
        .into_par_iter()
        .with_min_len(groups_per_task(k, 1))
        .map(|gi| selection::select_group(group_of(&values, log_odds, k, gi), &scores[gi * k..(gi + 1) * k], cfg))
        .collect();
    let nan = picks.iter().enumerate().find_map(|(gi, p)| p.as_ref().err().map(|&kind| (gi, kind)));
    let mut chosen = vec![-1i32; g];
    let mut rejected = vec![-1i32; g];
    let mut chosen_score = vec![f32::NAN; g];
    let mut rejected_score = vec![f32::NAN; g];
    let mut kept = vec![0i32; g];
    for (gi, pick) in picks.iter().enumerate() {
        if let Ok(p) = pick {
            (chosen[gi], rejected[gi], kept[gi]) = (p.chosen, p.rejected, i32::from(p.kept));
            (chosen_score[gi], rejected_score[gi]) = (p.chosen_score, p.rejected_score);
        }
    }
    let cpu = Device::Cpu;
    Ok(SelectionStatus {
        selection: Selection {
            chosen: Tensor::from_slice(&chosen, &[g], cpu)?,
            rejected: Tensor::from_slice(&rejected, &[g], cpu)?,
            chosen_score: Tensor::from_slice(&chosen_score, &[g], cpu)?,
            rejected_score: Tensor::from_slice(&rejected_score, &[g], cpu)?,
            kept: Tensor::from_slice(&kept, &[g], cpu)?,
        },
        nan,
    })
}
