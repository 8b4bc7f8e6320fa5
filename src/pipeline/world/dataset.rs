//! The demo's data set written to a folder: the judge's training conversations (all four tasks, and each task alone
//! for the joint-versus-single comparison), held-out judgments in `unireward eval`'s format, the policy's
//! supervised answers, the prompts it samples candidates for, held-out questions with their answers, questions
//! answered with a description first that the base model is pretrained on, and the tiny base checkpoint made from
//! nothing over one word-level tokenizer of everything said.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use super::checkpoint::{word_level_tokenizer, TinyLlava};
use super::draw::render;
use super::judgments::{judgments, write_video, IMAGE_SIZE, MAX_SHAPES};
use super::motion::Motion;
use super::scene::Scene;
use super::text::{caption, described_answer, question, Question};
use crate::judge::{AnswerGrammar, Mode, Task, TaskTemplate, Variant};
use crate::train::data::{IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER};
use crate::{Error, Result};

/// How much of everything the data set holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DemoSizes {
    /// Questions about new pictures and videos answered with a description first ("one red circle. yes."): the
    /// base model's pretraining, what teaches a model made from nothing to look before the judge and the policy
    /// are fine-tuned from it (on answers alone it learns their priors and never the picture; on captions alone it
    /// began to read at some draws and not at others — BENCHMARKS.md).
    pub base_answers: usize,
    /// Judgments per task the judge trains on (each gives a pairwise conversation in each order and two pointwise
    /// ones).
    pub judge_train: usize,
    /// Held-out judgments per task.
    pub judge_held_out: usize,
    /// Questions with their answer the policy is fine-tuned on first (half about images, half about videos).
    pub policy_sft: usize,
    /// Questions the policy samples candidates for, to be judged and filtered into preference pairs.
    pub prompts: usize,
    /// Held-out questions the policy is measured on before and after alignment.
    pub policy_held_out: usize,
}

/// The files of a written data set (all inside its folder).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DemoFiles {
    pub dir: PathBuf,
    /// The judge's conversations, all tasks mixed.
    pub judge_train: PathBuf,
    /// The same conversations, one file per task.
    pub judge_train_single: BTreeMap<Task, PathBuf>,
    /// Held-out judgments (`unireward eval` lines).
    pub judge_held_out: PathBuf,
    /// The same judgments, each with the context of the next judgment of its task (its caption, or the picture or
    /// video its question is about): the candidates and labels unchanged, the context no longer theirs. A judge
    /// that relates candidates to their context falls to chance on it; one that reads only the candidates' texts
    /// (an answer's prior, "no" being more often right than "yes") keeps its accuracy.
    pub judge_held_out_mismatched: PathBuf,
    /// The policy's supervised conversations.
    pub policy_sft: PathBuf,
    /// The sampler's prompts (`unireward sample --prompts`).
    pub prompts: PathBuf,
    /// The prompts' true answers by prompt id: what the filter's pairs are checked against.
    pub prompt_answers: BTreeMap<String, String>,
    /// Held-out questions with their answers (`unireward eval-policy` lines).
    pub policy_held_out: PathBuf,
    /// The base model's described answers.
    pub base_answers: PathBuf,
    /// The untrained base checkpoint the judge and the policy are both made from (after its pretraining).
    pub base: PathBuf,
}

/// The words the demo's task templates say (instructions and verdict phrases).
pub fn template_words() -> Result<Vec<String>> {
    let mut words = Vec::new();
    for task in Task::ALL {
        for mode in Mode::ALL {
            let template = TaskTemplate::built_in_variant(Variant::Demo, task, mode)?;
            words.push(template.instruction.clone());
            if let AnswerGrammar::Verdict(v) = &template.answer {
                words.extend(v.first.iter().chain(&v.second).chain(&v.tie).cloned());
            }
        }
    }
    Ok(words)
}

/// A question the policy answers: its id, task, context media (as written, relative to the data folder) and text.
struct PolicyQuestion {
    id: String,
    task: Task,
    media: String,
    question: Question,
    /// The caption of the picture or video asked about.
    caption: String,
}

impl PolicyQuestion {
    /// A question about a new scene (even `i`) or a new video (odd `i`), its media drawn into `media_dir`.
    fn draw(i: usize, prefix: &str, media_dir: &Path, rng: &mut impl Rng) -> Result<PolicyQuestion> {
        let id = format!("{prefix}{i}");
        if i.is_multiple_of(2) {
            let scene = Scene::random(rng, MAX_SHAPES);
            let question = question(&scene, MAX_SHAPES, rng);
            let name = format!("{id}.png");
            let path = media_dir.join(&name);
            render(&scene, IMAGE_SIZE)
                .save(&path)
                .map_err(|e| Error::InvalidArgument(format!("writing {}: {e}", path.display())))?;
            let caption = caption(&scene);
            Ok(PolicyQuestion { id, task: Task::ImageUnderstanding, media: format!("media/{name}"), question, caption })
        } else {
            let motion = Motion::random(rng);
            let question = motion.question(rng);
            write_video(&motion, &media_dir.join(&id))?;
            Ok(PolicyQuestion {
                id: id.clone(),
                task: Task::VideoUnderstanding,
                media: format!("media/{id}"),
                question,
                caption: motion.caption(),
            })
        }
    }

    fn media_key(&self) -> &'static str {
        if self.task == Task::VideoUnderstanding {
            "video"
        } else {
            "image"
        }
    }

    /// A supervised conversation: the question about the media, the true answer.
    fn conversation(&self) -> Value {
        self.answered(&self.question.answer)
    }

    /// The true answer after the caption of what is asked about: the base's pretraining, the judge's rationale's form.
    fn described_answer(&self) -> String {
        described_answer(&self.caption, &self.question.answer)
    }

    /// A supervised conversation answering with [`Self::described_answer`].
    fn described(&self) -> Value {
        self.answered(&self.described_answer())
    }

    fn answered(&self, answer: &str) -> Value {
        let placeholder = if self.task == Task::VideoUnderstanding { VIDEO_PLACEHOLDER } else { IMAGE_PLACEHOLDER };
        json!({
            "task": self.task.name(),
            self.media_key(): self.media,
            "conversations": [
                {"from": "human", "value": format!("{placeholder}\n{}", self.question.text)},
                {"from": "gpt", "value": answer},
            ],
        })
    }

    /// A sampler prompt line.
    fn prompt(&self) -> Value {
        json!({"id": self.id, "task": self.task.name(), "context": {"question": self.question.text, self.media_key(): self.media}})
    }

    /// A held-out line: the prompt with its answer and the wrong one.
    fn held_out(&self) -> Value {
        let mut line = self.prompt();
        line["answer"] = json!(self.question.answer);
        line["wrong_answers"] = json!([self.question.wrong_answer]);
        line
    }
}

fn write_lines(path: &Path, lines: &str) -> Result<()> {
    std::fs::write(path, lines).map_err(|e| Error::InvalidArgument(format!("writing {}: {e}", path.display())))
}

impl DemoSizes {
    /// Writes the data set drawn from `seed` into `dir` (created), the checkpoints of `model`'s sizes.
    pub fn write(&self, dir: &Path, model: &TinyLlava, seed: u64) -> Result<DemoFiles> {
        let media = dir.join("media");
        std::fs::create_dir_all(&media)
            .map_err(|e| Error::InvalidArgument(format!("creating {}: {e}", media.display())))?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut corpus = template_words()?;

        let (mut joint, mut held_out) = (String::new(), Vec::new());
        let mut single: BTreeMap<Task, String> = BTreeMap::new();
        for task in Task::ALL {
            let drawn = judgments(task, self.judge_train + self.judge_held_out, &media, "judge-", &mut rng)?;
            for (i, judgment) in drawn.iter().enumerate() {
                corpus.push(judgment.text.clone());
                if i >= self.judge_train {
                    corpus.extend(judgment.candidate_texts());
                    held_out.push(relative(judgment.eval_line(&mut rng), dir));
                    continue;
                }
                for conversation in judgment.conversations()? {
                    corpus.push(conversation["conversations"][0]["value"].as_str().unwrap_or_default().into());
                    corpus.push(conversation["conversations"][1]["value"].as_str().unwrap_or_default().into());
                    let line = format!("{}\n", relative(conversation, dir));
                    joint.push_str(&line);
                    single.entry(task).or_default().push_str(&line);
                }
            }
        }

        let mut draw = |count: usize, prefix: &str| -> Result<Vec<PolicyQuestion>> {
            (0..count).map(|i| PolicyQuestion::draw(i, prefix, &media, &mut rng)).collect()
        };
        let (sft, prompts, policy_held_out) =
            (draw(self.policy_sft, "sft-")?, draw(self.prompts, "prompt-")?, draw(self.policy_held_out, "held-out-")?);
        let base_answers = draw(self.base_answers, "base-")?;
        for q in sft.iter().chain(&prompts).chain(&policy_held_out).chain(&base_answers) {
            corpus.extend([q.question.text.clone(), q.question.answer.clone(), q.question.wrong_answer.clone()]);
            corpus.push(q.described_answer());
        }
        let lines = |qs: &[PolicyQuestion], line: fn(&PolicyQuestion) -> Value| {
            qs.iter().map(|q| format!("{}\n", line(q))).collect::<String>()
        };

        let files = DemoFiles {
            dir: dir.to_path_buf(),
            judge_train: dir.join("judge-train.jsonl"),
            judge_train_single: Task::ALL.iter().map(|&t| (t, dir.join(format!("judge-train-{t}.jsonl")))).collect(),
            judge_held_out: dir.join("judge-held-out.jsonl"),
            judge_held_out_mismatched: dir.join("judge-held-out-mismatched.jsonl"),
            policy_sft: dir.join("policy-sft.jsonl"),
            prompts: dir.join("prompts.jsonl"),
            prompt_answers: prompts.iter().map(|q| (q.id.clone(), q.question.answer.clone())).collect(),
            policy_held_out: dir.join("policy-held-out.jsonl"),
            base_answers: dir.join("base-answers.jsonl"),
            base: dir.join("base-init"),
        };
        write_lines(&files.judge_train, &joint)?;
        for (task, path) in &files.judge_train_single {
            write_lines(path, single.get(task).map_or("", String::as_str))?;
        }
        write_lines(&files.judge_held_out, &json_lines(&held_out))?;
        write_lines(&files.judge_held_out_mismatched, &json_lines(&mismatched_contexts(&held_out)))?;
        write_lines(&files.policy_sft, &lines(&sft, PolicyQuestion::conversation))?;
        write_lines(&files.prompts, &lines(&prompts, PolicyQuestion::prompt))?;
        write_lines(&files.policy_held_out, &lines(&policy_held_out, PolicyQuestion::held_out))?;
        write_lines(&files.base_answers, &lines(&base_answers, PolicyQuestion::described))?;

        let tokenizer = word_level_tokenizer(corpus.iter().map(String::as_str))?;
        model.write(&files.base, &tokenizer, seed.wrapping_add(1))?;
        Ok(files)
    }
}

fn json_lines(values: &[Value]) -> String {
    values.iter().map(|v| format!("{v}\n")).collect()
}

/// Eval lines with the context (`caption`, or `media` of a question) of the next line of the same task, the last
/// taking the first's: a rotation, so no line keeps its own (a task with one line keeps it).
fn mismatched_contexts(lines: &[Value]) -> Vec<Value> {
    let mut out = lines.to_vec();
    let mut by_task: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, line) in lines.iter().enumerate() {
        by_task.entry(line["task"].to_string()).or_default().push(i);
    }
    for indices in by_task.values() {
        for (k, &i) in indices.iter().enumerate() {
            let next = &lines[indices[(k + 1) % indices.len()]];
            for field in ["caption", "media"] {
                if let Some(context) = next.get(field) {
                    out[i][field] = context.clone();
                }
            }
        }
    }
    out
}

/// `value` with every string that is a path inside `dir` made relative to it, so the data set can be moved.
fn relative(value: Value, dir: &Path) -> Value {
    match value {
        Value::String(s) => match Path::new(&s).strip_prefix(dir) {
            Ok(rest) => Value::String(rest.display().to_string()),
            Err(_) => Value::String(s),
        },
        Value::Array(items) => Value::Array(items.into_iter().map(|v| relative(v, dir)).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, relative(v, dir))).collect()),
        other => other,
    }
}
