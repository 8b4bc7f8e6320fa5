//! One-pass verdicts: no decoding. The prompt plus the answer's fixed prefix, then every class's continuation
//! ("Image 1 is better than Image 2" / "Image 2 is better …" / "Both images are equally good", or the scale's
//! scores after "Final Score:") scored exactly as the sum of its token log-probabilities under teacher forcing
//! ([`JudgeModel::score`]); the verdict head renormalises the classes' sums into probabilities, with the expected
//! score of a scale. Pairwise judgments run both orders of the pair, giving position-debiased probabilities and
//! whether the two orders agree.

use super::answer::Verdict;
use super::metrics::swapped;
use super::scoring::{JudgeModel, ScoredSequence, SequenceScores};
use super::templates::AnswerGrammar;
use super::tokenizer::{Tokenizer, IM_END};
use crate::model::llava::MediaInput;
use crate::ops::heads::{verdict_head, VerdictClasses};
use crate::runtime::Tensor;
use crate::{Error, Result};

/// The most score values a scale may list (each is one more continuation to score).
pub const MAX_SCALE_VALUES: i64 = 101;

/// The continuations one-pass scoring compares: after the answer's shared `prefix` tokens, one token sequence per
/// class, with its label and (for a score scale) its value.
#[derive(Clone, Debug, PartialEq)]
pub struct AnswerClasses {
    pub prefix: Vec<u32>,
    pub continuations: Vec<Vec<u32>>,
    pub labels: Vec<String>,
    pub values: Option<Vec<f32>>,
}

impl AnswerClasses {
    /// The classes of `grammar`: the canonical (first) phrase of first / second / tie (tie only when the grammar has
    /// one) after the verdict prefix, or `"{prefix} {value}"` for each value of the score scale (followed by the end
    /// of the turn, `<|im_end|>`, when one value's tokens begin another's, as "1" begins "10"). The answers' common
    /// leading tokens become the fixed prefix.
    pub fn for_grammar(grammar: &AnswerGrammar, tokenizer: &Tokenizer) -> Result<AnswerClasses> {
        let (texts, values): (Vec<String>, Option<Vec<f32>>) = match grammar {
            AnswerGrammar::Verdict(v) => {
                let canonical = [v.first.first(), v.second.first(), v.tie.first()];
                (canonical.into_iter().flatten().map(|phrase| format!("{}{phrase}", v.prefix)).collect(), None)
            }
            AnswerGrammar::Score(s) => {
                if s.max - s.min + 1 > MAX_SCALE_VALUES {
                    return Err(Error::InvalidArgument(format!(
                        "a score scale of {}..={} has more than {MAX_SCALE_VALUES} values to score",
                        s.min, s.max
                    )));
                }
                let space = if s.prefix.ends_with(char::is_whitespace) { "" } else { " " };
                let scale: Vec<i64> = (s.min..=s.max).collect();
                (
                    scale.iter().map(|v| format!("{}{space}{v}", s.prefix)).collect(),
                    Some(scale.iter().map(|&v| v as f32).collect()),
                )
            }
        };
        let mut tokens = texts.iter().map(|t| tokenizer.encode(t)).collect::<Result<Vec<_>>>()?;
        // "Final Score: 1" is a token prefix of "Final Score: 10" where digits are single tokens: there each answer
        // ends the turn, so that "1" means the number 1 and not the start of 10.
        let ambiguous = tokens.iter().any(|a| tokens.iter().any(|b| b.len() > a.len() && b.starts_with(a)));
        if ambiguous {
            let end = tokenizer.token_to_id(IM_END).ok_or_else(|| {
                Error::Checkpoint(format!("the tokenizer has no `{IM_END}` to end the answers of a multi-digit scale"))
            })?;
            tokens.iter_mut().for_each(|t| t.push(end));
        }
        let mut classes = AnswerClasses::from_tokens(&tokens, values)?;
        classes.labels = texts;
        Ok(classes)
    }

    /// Classes from each answer's whole token sequence; their common leading tokens become the prefix. Labels are
    /// the class indices until set.
    pub fn from_tokens(answers: &[Vec<u32>], values: Option<Vec<f32>>) -> Result<AnswerClasses> {
        if answers.len() < 2 {
            return Err(Error::InvalidArgument(format!(
                "one-pass scoring needs at least 2 classes, got {}",
                answers.len()
            )));
        }
        if values.as_ref().is_some_and(|v| v.len() != answers.len()) {
            return Err(Error::Shape(format!(
                "{} class values for {} classes",
                values.map_or(0, |v| v.len()),
                answers.len()
            )));
        }
        let shared = answers[1..]
            .iter()
            .fold(answers[0].len(), |len, a| answers[0].iter().zip(a).take(len).take_while(|(x, y)| x == y).count());
        if let Some(k) = answers.iter().position(|a| a.len() == shared) {
            return Err(Error::InvalidArgument(format!(
                "answer class {k}'s tokens are a prefix of another class's: the classes cannot be told apart"
            )));
        }
        Ok(AnswerClasses {
            prefix: answers[0][..shared].to_vec(),
            continuations: answers.iter().map(|a| a[shared..].to_vec()).collect(),
            labels: (0..answers.len()).map(|k| k.to_string()).collect(),
            values,
        })
    }

    pub fn num_classes(&self) -> usize {
        self.continuations.len()
    }
}

/// One prompt's one-pass result.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassProbabilities {
    /// Per class: Σ log p of its continuation's tokens given the prompt and the answer prefix.
    pub log_probs: Vec<f32>,
    /// Per class, summing to 1 (the verdict head over the classes' log-probabilities).
    pub probs: Vec<f32>,
    /// The most probable class (the first on a tie).
    pub argmax: usize,
    /// `Σ_k probs[k] · values[k]` for a score scale.
    pub expected: Option<f32>,
}

/// One-pass probabilities of every class after each of `prompts` (token ids with their media placeholders
/// expanded), which all see `media`; the prompts' shared start is prefilled once.
pub fn one_pass(
    model: &JudgeModel,
    prompts: &[Vec<i64>],
    media: &[MediaInput<'_>],
    answers: &AnswerClasses,
) -> Result<(Vec<ClassProbabilities>, SequenceScores)> {
    let sequences: Vec<ScoredSequence> = prompts
        .iter()
        .flat_map(|prompt| {
            answers.continuations.iter().map(move |c| {
                let scored_from = prompt.len() + answers.prefix.len();
                let ids = prompt.iter().copied().chain(answers.prefix.iter().chain(c).map(|&t| i64::from(t))).collect();
                ScoredSequence { ids, scored_from }
            })
        })
        .collect();
    let scores = model.score(&sequences, media)?;
    Ok((class_probabilities(&scores.log_probs, answers)?, scores))
}

/// The verdict head over the classes' summed log-probabilities (`log_probs` `[prompts × classes]`): each class is
/// a one-"token" class of a `[prompts, classes]` logit row, so the head's renormalisation is a softmax over the
/// classes and its expected score the scale's expectation.
pub fn class_probabilities(log_probs: &[f32], answers: &AnswerClasses) -> Result<Vec<ClassProbabilities>> {
    let k = answers.num_classes();
    let rows = log_probs.len() / k;
    let ids: Vec<u32> = (0..k as u32).collect();
    let sets: Vec<&[u32]> = ids.chunks(1).collect();
    let mut classes = VerdictClasses::from_sets(&sets)?;
    if let Some(values) = &answers.values {
        classes = classes.with_values(values)?;
    }
    let head = verdict_head(&Tensor::from_slice(log_probs, &[rows, k], crate::Device::Cpu)?, &classes)?;
    let probs = head.probs.to_vec::<f32>()?;
    let expected = head.expected_score.map(|e| e.to_vec::<f32>()).transpose()?;
    Ok((0..rows)
        .map(|r| {
            let p = probs[r * k..(r + 1) * k].to_vec();
            let argmax = (0..k).fold(0, |best, i| if p[i] > p[best] { i } else { best });
            ClassProbabilities {
                log_probs: log_probs[r * k..(r + 1) * k].to_vec(),
                probs: p,
                argmax,
                expected: expected.as_ref().map(|e| e[r]),
            }
        })
        .collect())
}

/// A pair judged in both orders, in terms of the candidates (A shown first in the forward order, B second).
#[derive(Clone, Debug, PartialEq)]
pub struct PairVerdict {
    /// `[A better, B better, tie]` from the forward order (A first).
    pub forward: [f32; 3],
    /// `[A better, B better, tie]` from the swapped order (B first), mapped back to the candidates.
    pub swapped: [f32; 3],
    /// The mean of the two: the position bias of the prompt cancels.
    pub debiased: [f32; 3],
    /// The most probable of the debiased `[A, B, tie]`.
    pub verdict: Verdict,
    /// Whether the two orders' most probable verdicts name the same candidate (or both a tie).
    pub position_consistent: bool,
}

/// `[first, second, tie]` of a verdict class distribution (tie 0 when the grammar has none).
fn by_position(p: &ClassProbabilities) -> [f32; 3] {
    [p.probs[0], p.probs[1], p.probs.get(2).copied().unwrap_or(0.0)]
}

fn most_probable(p: [f32; 3]) -> Verdict {
    let best = (0..3).fold(0, |best, i| if p[i] > p[best] { i } else { best });
    [Verdict::First, Verdict::Second, Verdict::Tie][best]
}

impl PairVerdict {
    /// Combines the forward order's and the swapped order's verdict probabilities.
    pub fn from_orders(forward: &ClassProbabilities, swapped_order: &ClassProbabilities) -> PairVerdict {
        let forward = by_position(forward);
        let [b_first, a_second, tie] = by_position(swapped_order);
        let swapped_back = [a_second, b_first, tie];
        let debiased = [0, 1, 2].map(|i| 0.5 * (forward[i] + swapped_back[i]));
        PairVerdict {
            forward,
            swapped: swapped_back,
            debiased,
            verdict: most_probable(debiased),
            position_consistent: most_probable(forward) == swapped(most_probable([b_first, a_second, tie])),
        }
    }
}
