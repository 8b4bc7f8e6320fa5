//! A policy's accuracy on held-out understanding questions with known answers: the file is JSONL, one question a
//! line,
//!
//! ```text
//! {"id": "q1", "task": "image-understanding", "context": {"question": "How many shapes?", "image": "x.png"},
//!  "answer": "3", "wrong_answers": ["4", "2"]}
//! ```
//!
//! (`id`, `task` and `context` as a prompts file writes them — video questions take `"video": "dir"` or a list of
//! frames; media paths are relative to the media folder). Two measures per question:
//! - **accuracy**: the greedy answer (the sampler's prompt, [`Policy::prompt_inputs`]) equals `answer` once both are
//!   normalised ([`normalise_answer`]: trimmed, case folded, final punctuation removed);
//! - **preference accuracy**: log p(answer | prompt) > log p(w | prompt) for every wrong answer w, each answer
//!   teacher-forced as the assistant's turn (its tokens, then the chat's end of turn `<|im_end|>` when the tokenizer
//!   has it, so that an answer is not scored as the prefix of a longer one). A question's answers are scored in one
//!   batch, the prompt and its media encoded once ([`crate::judge::JudgeModel::score`]).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::filter::candidates::{refuse_invalid, understanding_prompt, CandidatePrompt, InvalidPrompt, MAX_CANDIDATES};
use super::sample::{Policy, SampleOptions};
use crate::judge::tokenizer::IM_END;
use crate::judge::{GenerationConfig, MediaPixels, ScoredSequence};
use crate::model::files::read_text;
use crate::model::llava::MediaInput;
use crate::{Error, Result};

/// The largest questions file read.
pub const MAX_QUESTIONS_BYTES: u64 = 256 << 20;

/// One held-out question: the prompt a policy answers, its answer and the wrong answers it must rank below it.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyQuestion {
    /// The question as a prompts file's line: id, task, question and media (paths resolved), 1-based line.
    pub prompt: CandidatePrompt,
    pub answer: String,
    /// At least one; none equal to `answer` once normalised.
    pub wrong_answers: Vec<String>,
}

/// One line as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    id: String,
    task: String,
    context: BTreeMap<String, Value>,
    answer: String,
    wrong_answers: Vec<String>,
}

/// An answer as compared: trimmed, lower-cased, without final punctuation (`.`, `!`, `?`, `,`, `;`, `:`) and the
/// white space before it.
pub fn normalise_answer(answer: &str) -> String {
    answer.trim().trim_end_matches(['.', '!', '?', ',', ';', ':']).trim_end().to_lowercase()
}

fn question(line: Line, index: usize, line_no: usize, folder: &Path) -> std::result::Result<PolicyQuestion, String> {
    let Line { id, task, context, answer, wrong_answers } = line;
    let prompt = understanding_prompt(id, task, context, index, line_no, folder)?;
    if normalise_answer(&answer).is_empty() {
        return Err("`answer` is empty".into());
    }
    if wrong_answers.is_empty() || wrong_answers.len() > MAX_CANDIDATES {
        return Err(format!(
            "`wrong_answers` has {}, a question needs between 1 and {MAX_CANDIDATES}",
            wrong_answers.len()
        ));
    }
    for (i, wrong) in wrong_answers.iter().enumerate() {
        if normalise_answer(wrong).is_empty() {
            return Err(format!("`wrong_answers[{i}]` is empty"));
        }
        if normalise_answer(wrong) == normalise_answer(&answer) {
            return Err(format!("`wrong_answers[{i}]` {wrong:?} is the answer {answer:?}"));
        }
    }
    Ok(PolicyQuestion { prompt, answer, wrong_answers })
}

/// Reads and checks every question of `path` (blank lines skipped); media paths are relative to `media_folder`.
/// Bad lines are one error listing them by line number.
pub fn read_policy_questions(path: &Path, media_folder: &Path) -> Result<Vec<PolicyQuestion>> {
    let text = read_text(path, MAX_QUESTIONS_BYTES)?;
    let (mut questions, mut invalid) = (Vec::new(), Vec::new());
    let mut ids: HashMap<String, usize> = HashMap::new();
    for (index, (i, raw)) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).enumerate() {
        let line = i + 1;
        let parsed = serde_json::from_str::<Line>(raw)
            .map_err(|e| e.to_string())
            .and_then(|l| question(l, index, line, media_folder))
            .and_then(|q| match ids.insert(q.prompt.id.clone(), line) {
                Some(first) => Err(format!("`id` {:?} repeats line {first}'s", q.prompt.id)),
                None => Ok(q),
            });
        match parsed {
            Ok(q) => questions.push(q),
            Err(reason) => invalid.push(InvalidPrompt { index, line, reason }),
        }
    }
    if !invalid.is_empty() {
        return Err(refuse_invalid(path, &invalid, ""));
    }
    if questions.is_empty() {
        return Err(Error::InvalidArgument(format!("{} holds no questions", path.display())));
    }
    Ok(questions)
}

/// How the policy answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyEvalOptions {
    /// The longest greedy answer, in tokens.
    pub max_new_tokens: usize,
    /// Frames sampled evenly from each video (LLaVA-OneVision policies).
    pub frames: usize,
}

impl Default for PolicyEvalOptions {
    fn default() -> Self {
        PolicyEvalOptions { max_new_tokens: 32, frames: 8 }
    }
}

/// The two accuracies over some questions, with their counts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyTaskEvaluation {
    pub questions: usize,
    /// Greedy answers equal to the answer.
    pub correct: usize,
    /// Questions whose answer is more probable than each wrong answer.
    pub preferred: usize,
    pub accuracy: f64,
    pub preference_accuracy: f64,
}

impl PolicyTaskEvaluation {
    fn add(&mut self, answer: &PolicyAnswer) {
        self.questions += 1;
        self.correct += usize::from(answer.correct);
        self.preferred += usize::from(answer.preferred);
        self.accuracy = self.correct as f64 / self.questions as f64;
        self.preference_accuracy = self.preferred as f64 / self.questions as f64;
    }
}

/// What the policy did with one question.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyAnswer {
    pub id: String,
    /// The task's name (`image_understanding`, `video_understanding`).
    pub task: String,
    /// The greedy answer, decoded without special tokens.
    pub greedy: String,
    /// The greedy answer equals the answer (normalised).
    pub correct: bool,
    /// log p(answer | prompt), and log p(w | prompt) of each wrong answer in the file's order.
    pub answer_log_prob: f64,
    pub wrong_log_probs: Vec<f64>,
    /// `answer_log_prob` above every wrong answer's.
    pub preferred: bool,
}

/// A policy's accuracy on held-out questions, overall and per task (keyed by task name).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyEvaluation {
    pub questions: usize,
    /// Greedy answer == answer (normalised: trimmed, case, final punctuation).
    pub accuracy: f64,
    /// log p(answer | prompt) > log p(w | prompt) for every wrong answer w.
    pub preference_accuracy: f64,
    pub per_task: BTreeMap<String, PolicyTaskEvaluation>,
    /// In question order.
    pub answers: Vec<PolicyAnswer>,
}

/// Answers every question greedily and scores its answers (see the module's documentation). A NaN log-probability
/// is an error naming the question.
pub fn evaluate_policy(
    policy: &Policy,
    questions: &[PolicyQuestion],
    options: &PolicyEvalOptions,
) -> Result<PolicyEvaluation> {
    if questions.is_empty() {
        return Err(Error::InvalidArgument("no questions to evaluate the policy on".into()));
    }
    if options.frames == 0 {
        return Err(Error::InvalidArgument("--frames must be at least 1".into()));
    }
    let cfg = GenerationConfig {
        max_new_tokens: options.max_new_tokens,
        temperature: 0.0,
        top_p: 1.0,
        seed: 0,
        stop_tokens: policy.stop_tokens(),
        suppress_tokens: Vec::new(),
    };
    cfg.validate().map_err(|e| Error::InvalidArgument(format!("--max-new-tokens: {e}")))?;
    let inputs = SampleOptions { frames: options.frames, ..SampleOptions::default() };
    let end_of_turn = policy.tokenizer.token_to_id(IM_END);
    let mut answers = Vec::with_capacity(questions.len());
    for q in questions {
        let in_question = |e: Error| match e {
            Error::InvalidArgument(m) => {
                Error::InvalidArgument(format!("question {:?} (line {}): {m}", q.prompt.id, q.prompt.line))
            }
            other => other,
        };
        let (ids, pixels) = policy.prompt_inputs(&q.prompt, &inputs).map_err(in_question)?;
        let greedy = policy.generate(&ids, &pixels, &[Vec::new()], &cfg).map_err(in_question)?.remove(0);
        let greedy = policy.tokenizer.decode(&greedy, true)?;
        let sequences = std::iter::once(&q.answer)
            .chain(&q.wrong_answers)
            .map(|a| {
                let mut sequence = ids.clone();
                sequence.extend(policy.tokenizer.encode(a)?.into_iter().chain(end_of_turn).map(i64::from));
                Ok(ScoredSequence { ids: sequence, scored_from: ids.len() })
            })
            .collect::<Result<Vec<_>>>()?;
        let media: Vec<MediaInput<'_>> = pixels.iter().map(MediaPixels::input).collect();
        let scores = policy.model.score(&sequences, &media).map_err(in_question)?;
        let log_probs: Vec<f64> = scores.log_probs.iter().map(|&lp| f64::from(lp)).collect();
        if log_probs.iter().any(|lp| lp.is_nan()) {
            return Err(Error::InvalidArgument(format!(
                "question {:?} (line {}): the policy gives NaN log-probabilities {log_probs:?}",
                q.prompt.id, q.prompt.line
            )));
        }
        let (answer_log_prob, wrong) = (log_probs[0], log_probs[1..].to_vec());
        answers.push(PolicyAnswer {
            id: q.prompt.id.clone(),
            task: q.prompt.task.name().into(),
            correct: normalise_answer(&greedy) == normalise_answer(&q.answer),
            greedy,
            preferred: wrong.iter().all(|&w| answer_log_prob > w),
            answer_log_prob,
            wrong_log_probs: wrong,
        });
    }
    let mut overall = PolicyTaskEvaluation::default();
    let mut per_task: BTreeMap<String, PolicyTaskEvaluation> = BTreeMap::new();
    for a in &answers {
        overall.add(a);
        per_task.entry(a.task.clone()).or_default().add(a);
    }
    Ok(PolicyEvaluation {
        questions: overall.questions,
        accuracy: overall.accuracy,
        preference_accuracy: overall.preference_accuracy,
        per_task,
        answers,
    })
}
