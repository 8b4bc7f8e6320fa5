//! Benchmark metrics of a judge, computed from (ground truth, prediction) records.
//!
//! Definitions follow UnifiedReward's own evaluation scripts, which produced the numbers its paper reports
//! (CodeGoat24/UnifiedReward, commit ff6f520247a2d36e2aff7b2ba53a935afd437f66, `benchmark_evaluation/LLaVA_evaluation/`):
//! - **GenAI-Bench (image, video) and VideoGen-RewardBench**: `tau` = accuracy with ties, a tie being a third class
//!   (`correct / num_all`); `diff` = accuracy without ties, the items whose ground truth is a tie dropped (`(correct -
//!   correct_tie) / (num_all - num_tie)`; a non-tie item predicted as a tie stays wrong). GenAI-Bench's `vote_type`
//!   `tievote` and `bothbad_vote` are both tie ground truths (test_llava_genAI_bench_video.py).
//! - **VL-RewardBench**: accuracy per category (general: vlfeedback, wildvision-battle; hallucination: povid, rlhf-v,
//!   rlaif-v; reasoning: mathverse, mmmu), overall accuracy over all items, and the macro average of the three
//!   category accuracies (test_llava_vlrewardbench.py).
//!
//! An unparsable prediction (`None`) is wrong everywhere and counted apart. (The VideoGen-RewardBench script reads any
//! answer it cannot match as a tie; here such answers never score as ties.) A rate over no items is `None`.

use super::answer::Verdict;
use crate::{Error, Result};

/// `num / den`, or `None` when there is nothing to divide.
fn rate(num: usize, den: usize) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// Pairwise accuracy with and without ties (GenAI-Bench, VideoGen-RewardBench).
#[derive(Clone, Debug, PartialEq)]
pub struct PairwiseAccuracy {
    pub total: usize,
    pub correct: usize,
    /// Items whose ground truth is a tie, and how many of them were predicted as ties.
    pub ties: usize,
    pub correct_ties: usize,
    pub unparsable: usize,
    /// Accuracy with ties as a class.
    pub tau: Option<f64>,
    /// Accuracy over the items whose ground truth is not a tie.
    pub diff: Option<f64>,
}

/// Accuracy of `(ground truth, prediction)` pairs, with and without ties.
pub fn pairwise_accuracy(records: &[(Verdict, Option<Verdict>)]) -> PairwiseAccuracy {
    let correct = records.iter().filter(|(truth, pred)| Some(*truth) == *pred).count();
    let ties = records.iter().filter(|(truth, _)| *truth == Verdict::Tie).count();
    let correct_ties =
        records.iter().filter(|(truth, pred)| *truth == Verdict::Tie && *pred == Some(Verdict::Tie)).count();
    PairwiseAccuracy {
        total: records.len(),
        correct,
        ties,
        correct_ties,
        unparsable: records.iter().filter(|(_, pred)| pred.is_none()).count(),
        tau: rate(correct, records.len()),
        diff: rate(correct - correct_ties, records.len() - ties),
    }
}

/// VL-RewardBench's three categories.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VlCategory {
    General,
    Hallucination,
    Reasoning,
}

impl VlCategory {
    pub const ALL: [VlCategory; 3] = [VlCategory::General, VlCategory::Hallucination, VlCategory::Reasoning];

    /// The category of a VL-RewardBench source subset (the script's `group_mapping`).
    pub fn from_subset(subset: &str) -> Result<VlCategory> {
        match subset {
            "vlfeedback" | "wildvision-battle" => Ok(VlCategory::General),
            "povid" | "rlhf-v" | "rlaif-v" => Ok(VlCategory::Hallucination),
            "reasoning_tasks" | "mathverse" | "mmmu" => Ok(VlCategory::Reasoning),
            other => Err(Error::InvalidArgument(format!(
                "unknown VL-RewardBench subset `{other}`; expected vlfeedback, wildvision-battle, povid, rlhf-v, \
                 rlaif-v, reasoning_tasks, mathverse or mmmu"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            VlCategory::General => "general",
            VlCategory::Hallucination => "hallucination",
            VlCategory::Reasoning => "reasoning",
        }
    }
}

/// Correct over total, and their ratio.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Accuracy {
    pub correct: usize,
    pub total: usize,
    pub accuracy: Option<f64>,
}

impl Accuracy {
    fn new(correct: usize, total: usize) -> Accuracy {
        Accuracy { correct, total, accuracy: rate(correct, total) }
    }
}

/// VL-RewardBench: per category (in [`VlCategory::ALL`] order), overall, and the macro average of the categories
/// (`None` unless every category has items).
#[derive(Clone, Debug, PartialEq)]
pub struct VlRewardBenchAccuracy {
    pub categories: [Accuracy; 3],
    pub overall: Accuracy,
    pub macro_average: Option<f64>,
    pub unparsable: usize,
}

/// VL-RewardBench accuracy of `(category, ground truth, prediction)` records.
pub fn vl_reward_bench_accuracy(records: &[(VlCategory, Verdict, Option<Verdict>)]) -> VlRewardBenchAccuracy {
    let categories = VlCategory::ALL.map(|category| {
        let of = records.iter().filter(|(c, _, _)| *c == category);
        Accuracy::new(of.clone().filter(|(_, truth, pred)| Some(*truth) == *pred).count(), of.count())
    });
    let correct = records.iter().filter(|(_, truth, pred)| Some(*truth) == *pred).count();
    let macro_average =
        categories.iter().map(|c| c.accuracy).sum::<Option<f64>>().map(|sum| sum / categories.len() as f64);
    VlRewardBenchAccuracy {
        categories,
        overall: Accuracy::new(correct, records.len()),
        macro_average,
        unparsable: records.iter().filter(|(_, _, pred)| pred.is_none()).count(),
    }
}

/// The verdict as seen from the other order of the pair.
pub fn swapped(verdict: Verdict) -> Verdict {
    match verdict {
        Verdict::First => Verdict::Second,
        Verdict::Second => Verdict::First,
        Verdict::Tie => Verdict::Tie,
    }
}

/// Position consistency: the share of pairs judged the same way in both orders (the verdict on (a, b) equal to the
/// swapped verdict on (b, a)); a pair with an unparsable verdict in either order is inconsistent.
pub fn position_consistency(records: &[(Option<Verdict>, Option<Verdict>)]) -> Accuracy {
    let consistent = records.iter().filter(|(ab, ba)| ab.is_some() && *ab == ba.map(swapped)).count();
    Accuracy::new(consistent, records.len())
}

/// One bin of a calibration histogram: predictions whose confidence falls in `(lower, upper]` (the first bin also
/// holds confidence 0).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CalibrationBin {
    pub lower: f64,
    pub upper: f64,
    pub count: usize,
    pub mean_confidence: Option<f64>,
    pub accuracy: Option<f64>,
}

/// Expected calibration error and its histogram.
#[derive(Clone, Debug, PartialEq)]
pub struct Calibration {
    /// Σ over bins of (bin count / N) · |accuracy − mean confidence|; `None` with no records.
    pub ece: Option<f64>,
    pub bins: Vec<CalibrationBin>,
}

/// The number of equal-width bins the `eval` command uses, as in Guo et al. 2017 ("On Calibration of Modern Neural
/// Networks"), whose bin convention this follows.
pub const DEFAULT_CALIBRATION_BINS: usize = 10;

/// Expected calibration error of verdict probabilities: each record is the probabilities of (first better, second
/// better, tie) and the ground truth; the prediction is the most probable verdict (the first on equal probabilities)
/// and its probability the confidence, sorted into `bins` equal-width bins over [0, 1].
pub fn expected_calibration_error(records: &[([f64; 3], Verdict)], bins: usize) -> Result<Calibration> {
    if bins == 0 {
        return Err(Error::InvalidArgument("calibration needs at least one bin".into()));
    }
    if let Some(i) = records.iter().position(|(p, _)| p.iter().any(|x| !(0.0..=1.0).contains(x))) {
        return Err(Error::InvalidArgument(format!(
            "record {i}: verdict probabilities {:?} are not all in [0, 1] (NaN included)",
            records[i].0
        )));
    }
    let mut count = vec![0usize; bins];
    let mut confidence = vec![0f64; bins];
    let mut correct = vec![0usize; bins];
    for (probs, truth) in records {
        let (predicted, p) = [Verdict::First, Verdict::Second, Verdict::Tie]
            .into_iter()
            .zip(*probs)
            .fold((Verdict::First, probs[0]), |best, (v, p)| if p > best.1 { (v, p) } else { best });
        let bin = calibration_bin(p, bins);
        count[bin] += 1;
        confidence[bin] += p;
        correct[bin] += usize::from(predicted == *truth);
    }
    let n = records.len();
    let ece = (n > 0).then(|| {
        (0..bins)
            .filter(|&b| count[b] > 0)
            .map(|b| {
                count[b] as f64 / n as f64
                    * (correct[b] as f64 / count[b] as f64 - confidence[b] / count[b] as f64).abs()
            })
            .sum()
    });
    let bins = (0..bins)
        .map(|b| CalibrationBin {
            lower: b as f64 / bins as f64,
            upper: (b + 1) as f64 / bins as f64,
            count: count[b],
            mean_confidence: (count[b] > 0).then(|| confidence[b] / count[b] as f64),
            accuracy: rate(correct[b], count[b]),
        })
        .collect();
    Ok(Calibration { ece, bins })
}

/// The bin `b` with `b / bins < p <= (b + 1) / bins` (bin 0 for p = 0), compared against the same bounds the
/// histogram reports: `ceil(p · bins)` alone misplaces edges (0.3 · 10 = 3.0000000000000004).
fn calibration_bin(p: f64, bins: usize) -> usize {
    let bound = |b: usize| b as f64 / bins as f64;
    let mut bin = ((p * bins as f64).ceil() as usize).clamp(1, bins) - 1;
    while bin > 0 && p <= bound(bin) {
        bin -= 1;
    }
    while bin + 1 < bins && p > bound(bin + 1) {
        bin += 1;
    }
    bin
}
