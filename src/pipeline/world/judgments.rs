//! The world's judgments: for each of the judge's four tasks, two candidates of which the world knows the better one
//! (the picture or video its caption describes, the true answer to a question), with their media drawn to files.
//! They become the judge's training conversations — both modes, in the demo's templates, as UnifiedReward trains
//! its judge — and evaluation lines of `unireward eval`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::Rng;
use serde_json::{json, Value};

use super::draw::{render, render_frames};
use super::motion::Motion;
use super::scene::Scene;
use super::text::{caption, corrupt, described_answer, question};
use crate::judge::{MediaInput, Mode, Task, TaskTemplate, Variant};
use crate::{Error, Result};

/// Pixels per side of the world's images and frames.
pub const IMAGE_SIZE: u32 = 48;
/// Frames per video (the demo templates' `frames_per_video`).
pub const FRAMES: usize = 4;
/// Shapes per scene at most.
pub(super) const MAX_SHAPES: usize = 2;
/// The score of the better and of the worse candidate in the pointwise conversations (the templates' 1–5 scale).
const SCORES: [u32; 2] = [5, 1];

/// A candidate: a media file (an image, or a video as a folder of frames) or an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorldCandidate {
    Media(PathBuf),
    Text(String),
}

/// One judgment the world knows the answer to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorldJudgment {
    pub task: Task,
    /// The caption (generation tasks) or the question (understanding tasks).
    pub text: String,
    /// Understanding tasks: the image or the video asked about.
    pub context_media: Option<PathBuf>,
    pub better: WorldCandidate,
    pub worse: WorldCandidate,
    /// What the judge says before its verdict or score.
    pub rationale: Rationale,
}

/// What the judge says before its verdict or score: what it sees. A judge trained on the verdict alone never learns
/// to look at these sizes; one that first writes what it sees does (BENCHMARKS.md, "A judge that reasons looks").
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rationale {
    /// Understanding: the caption of the picture or video asked about, then the true answer ("one red circle. no.").
    Answer(String),
    /// Generation: the caption of what each candidate shows — the better one's is the prompt's caption — said in
    /// the order the candidates are shown ("one red circle. one blue circle.").
    Shown { better: String, worse: String },
}

/// Writes the frames of `motion` into the folder `dir` (`frame_0.png`, …).
pub(super) fn write_video(motion: &Motion, dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::InvalidArgument(format!("creating {}: {e}", dir.display())))?;
    for (i, frame) in render_frames(motion, IMAGE_SIZE, FRAMES).iter().enumerate() {
        save(frame, &dir.join(format!("frame_{i}.png")))?;
    }
    Ok(dir.to_path_buf())
}

fn save(image: &image::RgbImage, path: &Path) -> Result<()> {
    image.save(path).map_err(|e| Error::InvalidArgument(format!("writing {}: {e}", path.display())))
}

/// `count` judgments of `task`, their media drawn into `media_dir` under names starting with `prefix`.
pub fn judgments(
    task: Task,
    count: usize,
    media_dir: &Path,
    prefix: &str,
    rng: &mut impl Rng,
) -> Result<Vec<WorldJudgment>> {
    std::fs::create_dir_all(media_dir)
        .map_err(|e| Error::InvalidArgument(format!("creating {}: {e}", media_dir.display())))?;
    let name = |i: usize, part: &str| media_dir.join(format!("{prefix}{}-{i}-{part}", task.name()));
    (0..count)
        .map(|i| {
            Ok(match task {
                Task::ImageGeneration => {
                    let scene = Scene::random(rng, MAX_SHAPES);
                    let other = corrupt(&scene, rng);
                    let [good, bad] = [name(i, "match.png"), name(i, "mismatch.png")];
                    save(&render(&scene, IMAGE_SIZE), &good)?;
                    save(&render(&other, IMAGE_SIZE), &bad)?;
                    let (better, worse) = (WorldCandidate::Media(good), WorldCandidate::Media(bad));
                    let rationale = Rationale::Shown { better: caption(&scene), worse: caption(&other) };
                    WorldJudgment { task, text: caption(&scene), context_media: None, better, worse, rationale }
                }
                Task::ImageUnderstanding => {
                    let scene = Scene::random(rng, MAX_SHAPES);
                    let q = question(&scene, MAX_SHAPES, rng);
                    let image = name(i, "scene.png");
                    save(&render(&scene, IMAGE_SIZE), &image)?;
                    let rationale = Rationale::Answer(described_answer(&caption(&scene), &q.answer));
                    let (better, worse) = (WorldCandidate::Text(q.answer), WorldCandidate::Text(q.wrong_answer));
                    WorldJudgment { task, text: q.text, context_media: Some(image), better, worse, rationale }
                }
                Task::VideoGeneration => {
                    let motion = Motion::random(rng);
                    let other = motion.corrupt(rng);
                    let good = write_video(&motion, &name(i, "match"))?;
                    let bad = write_video(&other, &name(i, "mismatch"))?;
                    let (better, worse) = (WorldCandidate::Media(good), WorldCandidate::Media(bad));
                    let rationale = Rationale::Shown { better: motion.caption(), worse: other.caption() };
                    WorldJudgment { task, text: motion.caption(), context_media: None, better, worse, rationale }
                }
                Task::VideoUnderstanding => {
                    let motion = Motion::random(rng);
                    let q = motion.question(rng);
                    let video = write_video(&motion, &name(i, "video"))?;
                    let rationale = Rationale::Answer(described_answer(&motion.caption(), &q.answer));
                    let (better, worse) = (WorldCandidate::Text(q.answer), WorldCandidate::Text(q.wrong_answer));
                    WorldJudgment { task, text: q.text, context_media: Some(video), better, worse, rationale }
                }
            })
        })
        .collect()
}

fn is_video(task: Task) -> bool {
    matches!(task, Task::VideoGeneration | Task::VideoUnderstanding)
}

/// The image files a prompt shows, in placeholder order: each image, or each frame of each video (the judge gives
/// every frame its own `<image>`).
fn image_files(task: Task, media: &[&Path]) -> Vec<String> {
    let mut files = Vec::new();
    for m in media {
        if is_video(task) {
            files.extend((0..FRAMES).map(|f| m.join(format!("frame_{f}.png")).display().to_string()));
        } else {
            files.push(m.display().to_string());
        }
    }
    files
}

/// A training conversation: the template's instruction filled with `fields` over `media`, and `answer`.
fn conversation(task: Task, mode: Mode, fields: &[(&str, &str)], media: &[&Path], answer: &str) -> Result<Value> {
    let template = TaskTemplate::built_in_variant(Variant::Demo, task, mode)?;
    let fields: BTreeMap<String, String> = fields.iter().map(|&(k, v)| (k.to_string(), v.to_string())).collect();
    let frames = vec![FRAMES; media.len()];
    let input = if is_video(task) { MediaInput::Videos(&frames) } else { MediaInput::Images(media.len()) };
    let instruction = template.render_instruction(&fields, input)?;
    Ok(json!({
        "task": task.name(),
        "image": image_files(task, media),
        "conversations": [{"from": "human", "value": instruction}, {"from": "gpt", "value": answer}],
    }))
}

/// The field the task's text fills.
fn text_field(task: Task) -> &'static str {
    match task {
        Task::ImageGeneration | Task::VideoGeneration => "caption",
        Task::ImageUnderstanding | Task::VideoUnderstanding => "question",
    }
}

impl WorldJudgment {
    /// The candidates, the better one first or second.
    fn ordered(&self, better_first: bool) -> [&WorldCandidate; 2] {
        if better_first {
            [&self.better, &self.worse]
        } else {
            [&self.worse, &self.better]
        }
    }

    /// The judge's training conversations for this judgment: the pairwise one in both orders (the verdict the
    /// template's canonical phrase) and a pointwise one per candidate (scores 5 and 1), each answer after the
    /// judgment's rationale. Both orders, so that the position of a candidate says nothing about the verdict:
    /// trained on one random order per pair, the demo's judge learned to answer by position (both orders agreed on
    /// under a fifth of held-out pairs) and at some seeds never learned the image questions (BENCHMARKS.md, "The
    /// demo").
    pub fn conversations(&self) -> Result<Vec<Value>> {
        let task = self.task;
        let pairwise = TaskTemplate::built_in_variant(Variant::Demo, task, Mode::Pairwise)?;
        let crate::judge::AnswerGrammar::Verdict(verdict) = &pairwise.answer else {
            return Err(Error::InvalidArgument(format!("the demo's {task} pairwise template has no verdict")));
        };
        let text = (text_field(task), self.text.as_str());
        let mut out = Vec::with_capacity(4);
        for better_first in [true, false] {
            let said = match &self.rationale {
                Rationale::Answer(rationale) => rationale.clone(),
                Rationale::Shown { better, worse } if better_first => format!("{better}. {worse}."),
                Rationale::Shown { better, worse } => format!("{worse}. {better}."),
            };
            let phrase = if better_first { &verdict.first[0] } else { &verdict.second[0] };
            let answer = &format!("{said} {phrase}");
            out.push(match (self.ordered(better_first), &self.context_media) {
                ([WorldCandidate::Media(a), WorldCandidate::Media(b)], None) => {
                    conversation(task, Mode::Pairwise, &[text], &[a, b], answer)?
                }
                ([WorldCandidate::Text(a), WorldCandidate::Text(b)], Some(m)) => {
                    let fields = [text, ("first_response", a), ("second_response", b)];
                    conversation(task, Mode::Pairwise, &fields, &[m], answer)?
                }
                _ => return Err(Error::InvalidArgument(format!("a {task} judgment with mismatched candidates"))),
            });
        }
        for (is_better, score) in [true, false].into_iter().zip(SCORES) {
            let candidate = if is_better { &self.better } else { &self.worse };
            // An understanding rationale is followed by the response repeated: the score is then whether two
            // neighbouring words are the same, not a search of the prompt for the response.
            let answer = match (&self.rationale, candidate) {
                (Rationale::Answer(rationale), WorldCandidate::Text(response)) => {
                    format!("{rationale} Response: {response}. Final Score: {score}")
                }
                (Rationale::Shown { better, worse }, WorldCandidate::Media(_)) => {
                    format!("{}. Final Score: {score}", if is_better { better } else { worse })
                }
                _ => return Err(Error::InvalidArgument(format!("a {task} judgment with a mismatched rationale"))),
            };
            out.push(match (candidate, &self.context_media) {
                (WorldCandidate::Media(c), _) => conversation(task, Mode::Pointwise, &[text], &[c], &answer)?,
                (WorldCandidate::Text(c), Some(m)) => {
                    conversation(task, Mode::Pointwise, &[text, ("response", c)], &[m], &answer)?
                }
                (WorldCandidate::Text(_), None) => {
                    return Err(Error::InvalidArgument(format!("a {task} answer without the media it is about")))
                }
            });
        }
        Ok(out)
    }

    /// The candidates' texts (none for media candidates).
    pub fn candidate_texts(&self) -> Vec<String> {
        [&self.better, &self.worse]
            .into_iter()
            .filter_map(|c| match c {
                WorldCandidate::Text(text) => Some(text.clone()),
                WorldCandidate::Media(_) => None,
            })
            .collect()
    }

    /// A line of `unireward eval`'s pairwise benchmark file: the candidates in a random order, `label` the better's
    /// position (`A` or `B`).
    pub fn eval_line(&self, rng: &mut impl Rng) -> Value {
        let better_first = rng.gen_bool(0.5);
        let [a, b] = self.ordered(better_first);
        let shown = |c: &WorldCandidate| match c {
            WorldCandidate::Media(path) => path.display().to_string(),
            WorldCandidate::Text(text) => text.clone(),
        };
        let mut line = json!({
            "task": self.task.name().replace('_', "-"),
            "candidates": [shown(a), shown(b)],
            "label": if better_first { "A" } else { "B" },
        });
        line[text_field(self.task)] = json!(self.text);
        if let Some(media) = &self.context_media {
            line["media"] = json!(media.display().to_string());
        }
        line
    }
}
