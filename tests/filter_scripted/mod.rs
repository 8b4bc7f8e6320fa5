//! A scripted judge for the filter tests: every pairwise and pointwise answer is a text written by the test (a
//! verdict phrase, "Final Score: N", or something unparsable), read with the task template's own answer grammar,
//! and candidates files written from the same script into a temporary folder (with empty media files).
// Each test binary that includes this module uses part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rand::Rng;
use unireward::judge::answer::{parse_answer, Judgment};
use unireward::judge::{AnswerGrammar, Mode, Task, TaskTemplate};
use unireward::pipeline::filter::{CandidatePrompt, Judgments, PairJudgment, PointJudgment};
use unireward::{Error, Result};

/// What the script says of a pair (a, b), a shown first.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PairTruth {
    /// The first is better, with this log-odds magnitude.
    First(f32),
    Second(f32),
    Tie,
    Garbage,
}

/// One scripted prompt.
#[derive(Clone, Debug)]
pub struct ScriptedPrompt {
    pub id: String,
    pub task: Task,
    pub k: usize,
    /// Every ordered pair (a < b) the strategies may ask for.
    pub pairs: HashMap<(usize, usize), PairTruth>,
    /// None: unparsable.
    pub scores: Vec<Option<i64>>,
}

impl ScriptedPrompt {
    /// The margin a plain rule reads from the script: ±magnitude, 0 for a tie, None when unparsable.
    pub fn margin(&self, a: usize, b: usize) -> Option<f32> {
        match self.pairs[&(a, b)] {
            PairTruth::First(m) => Some(m),
            PairTruth::Second(m) => Some(-m),
            PairTruth::Tie => Some(0.0),
            PairTruth::Garbage => None,
        }
    }
}

/// A random prompt of `task` with K in 2..=7: ties where the task's grammar has a tie phrase, scores on its scale.
pub fn random_prompt(rng: &mut impl Rng, id: String, task: Task) -> ScriptedPrompt {
    let k = rng.gen_range(2..=7);
    let AnswerGrammar::Verdict(verdicts) = grammar(task, Mode::Pairwise) else { unreachable!() };
    let AnswerGrammar::Score(scale) = grammar(task, Mode::Pointwise) else { unreachable!() };
    let tie_allowed = !verdicts.tie.is_empty();
    let mut pairs = HashMap::new();
    for a in 0..k {
        for b in a + 1..k {
            let truth = match rng.gen_range(0..10) {
                0 => PairTruth::Garbage,
                1 | 2 if tie_allowed => PairTruth::Tie,
                n if n % 2 == 0 => PairTruth::First(rng.gen_range(0.5..3.0)),
                _ => PairTruth::Second(rng.gen_range(0.5..3.0)),
            };
            pairs.insert((a, b), truth);
        }
    }
    let scores = (0..k)
        .map(|_| match rng.gen_range(0..8) {
            0 => None,
            // Few distinct values, so that equal scores happen; 9 and 10 both on scales that reach 10.
            _ if scale.max >= 10 => Some([8, 9, 10, 10, scale.max][rng.gen_range(0..5)]),
            _ => Some(rng.gen_range(scale.min..=scale.max)),
        })
        .collect();
    ScriptedPrompt { id, task, k, pairs, scores }
}

fn grammar(task: Task, mode: Mode) -> AnswerGrammar {
    TaskTemplate::built_in(task, mode).unwrap().answer
}

fn verdict_text(task: Task, truth: PairTruth) -> String {
    let AnswerGrammar::Verdict(v) = grammar(task, Mode::Pairwise) else { unreachable!() };
    match truth {
        PairTruth::First(_) => format!("Both are fine, but {}.", v.first[0]),
        PairTruth::Second(_) => format!("Overall, {}.", v.second[0]),
        PairTruth::Tie => format!("{}.", v.tie[0]),
        PairTruth::Garbage => "I cannot tell.".into(),
    }
}

fn score_text(score: Option<i64>) -> String {
    match score {
        Some(s) => format!("Looks good.\nFinal Score: {s}"),
        None => "Final Score: N/A".into(),
    }
}

/// The scripted judge: answers by prompt id.
pub struct ScriptedJudgments {
    pub prompts: HashMap<String, ScriptedPrompt>,
    /// Tasks this judge refuses (as a judge whose templates cannot do them).
    pub refuses: Vec<Task>,
}

impl ScriptedJudgments {
    pub fn new(prompts: &[ScriptedPrompt]) -> ScriptedJudgments {
        ScriptedJudgments { prompts: prompts.iter().map(|p| (p.id.clone(), p.clone())).collect(), refuses: Vec::new() }
    }
}

impl Judgments for ScriptedJudgments {
    fn check(&self, prompt: &CandidatePrompt, _modes: &[Mode]) -> Result<()> {
        if self.refuses.contains(&prompt.task) {
            return Err(Error::InvalidArgument(format!("this judge cannot do {}", prompt.task)));
        }
        Ok(())
    }

    fn pairwise(&self, prompt: &CandidatePrompt, pairs: &[(usize, usize)]) -> Result<Vec<PairJudgment>> {
        let script = &self.prompts[&prompt.id];
        Ok(pairs
            .iter()
            .map(|&(a, b)| {
                let truth = script.pairs[&(a, b)];
                let text = verdict_text(script.task, truth);
                let verdict = match parse_answer(&text, &grammar(script.task, Mode::Pairwise)) {
                    Ok(Judgment::Verdict(v)) => Ok(v),
                    Ok(Judgment::Score(_)) => unreachable!(),
                    Err(e) => Err(e.to_string()),
                };
                let magnitude = match truth {
                    PairTruth::First(m) | PairTruth::Second(m) => m,
                    _ => 0.0,
                };
                PairJudgment::new(verdict, magnitude, vec![], Some(text))
            })
            .collect())
    }

    fn pointwise(&self, prompt: &CandidatePrompt, candidates: &[usize]) -> Result<Vec<PointJudgment>> {
        let script = &self.prompts[&prompt.id];
        Ok(candidates
            .iter()
            .map(|&c| {
                let text = score_text(script.scores[c]);
                let score = match parse_answer(&text, &grammar(script.task, Mode::Pointwise)) {
                    Ok(Judgment::Score(s)) => Ok(s),
                    Ok(Judgment::Verdict(_)) => unreachable!(),
                    Err(e) => Err(e.to_string()),
                };
                PointJudgment { score, probs: vec![], answer: Some(text) }
            })
            .collect())
    }
}

/// A temporary directory, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("unireward-filter-{name}-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// The candidates line of a scripted prompt; media files are created (empty) in `folder`.
pub fn candidates_line(p: &ScriptedPrompt, folder: &Path) -> String {
    let generation = matches!(p.task, Task::ImageGeneration | Task::VideoGeneration);
    let media_key = if matches!(p.task, Task::VideoGeneration | Task::VideoUnderstanding) { "video" } else { "image" };
    let candidates: Vec<String> = (0..p.k)
        .map(|c| {
            if generation {
                let name = format!("{}_{c}.png", p.id);
                std::fs::write(folder.join(&name), b"").unwrap();
                name
            } else {
                format!("response {c} of {}", p.id)
            }
        })
        .collect();
    let context = if generation {
        serde_json::json!({"caption": format!("caption of {}", p.id)})
    } else {
        let image = format!("{}.png", p.id);
        std::fs::write(folder.join(&image), b"").unwrap();
        serde_json::json!({"question": format!("question of {}?", p.id), media_key: image})
    };
    serde_json::json!({"id": p.id, "task": p.task.name(), "context": context, "candidates": candidates}).to_string()
}

/// Writes `prompts` as a candidates file `name` in `folder`.
pub fn write_candidates(prompts: &[ScriptedPrompt], folder: &Path, name: &str) -> PathBuf {
    let text: String = prompts.iter().map(|p| candidates_line(p, folder) + "\n").collect();
    let path = folder.join(name);
    std::fs::write(&path, text).unwrap();
    path
}
