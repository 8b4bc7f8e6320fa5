//! The judge as one API for every task: a [`JudgeRequest`] (task, mode, the context's fields and media, the
//! candidates) in, a [`JudgeResult`] (probabilities, verdict or score, token counts, timing) out. One-pass by
//! default; [`Judge::reasoned`] generates the answer text, parses it and reads the one-pass probabilities of the
//! final verdict given the generated reasoning.
//!
//! Prompts follow the task's template ([`TaskTemplate`]) in the checkpoint's chat template. Each `<image>` of the
//! rendered prompt becomes one placeholder id per packed feature row of its image; video templates give each
//! sampled frame its own `<image>`, so a video is its frames, each preprocessed as one of several images.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use super::answer::{parse_answer, AnswerError, Judgment, Verdict};
use super::chat_template::ChatTemplate;
use super::generate::{generate, GenerationConfig};
use super::media_file::MediaFile;
use super::scoring::JudgeModel;
use super::templates::{
    AnswerGrammar, MediaInput as TemplateMedia, MediaSpec, Mode, Task, TaskTemplate, IMAGE_PLACEHOLDER,
};
use super::tokenizer::Tokenizer;
use super::verdict::{one_pass, AnswerClasses, ClassProbabilities, PairVerdict};
use crate::media::{ImageLayout, ImagePixels, ImageProcessor};
use crate::model::llava::packing::{Media, PackingPlan};
use crate::model::llava::{LlavaOnevisionModel, MediaInput};
use crate::model::Qwen2Model;
use crate::runtime::{DType, Device};
use crate::{Error, Result};

/// What is judged: a generated image or video (generation tasks), or a response text (understanding tasks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Candidate {
    Media(MediaFile),
    Text(String),
}

/// What the candidates are judged against: the template's fields (`caption`, `question`) and, for understanding
/// tasks, the image or video the question is about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Context {
    pub fields: BTreeMap<String, String>,
    pub media: Vec<MediaFile>,
}

impl Context {
    /// A context with one field (`caption` or `question`).
    pub fn with_field(name: &str, value: &str) -> Context {
        Context { fields: BTreeMap::from([(name.to_string(), value.to_string())]), media: Vec::new() }
    }
}

/// One judgment to make: two candidates for pairwise, one for pointwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JudgeRequest {
    pub task: Task,
    pub mode: Mode,
    pub context: Context,
    pub candidates: Vec<Candidate>,
}

/// A reasoned judgment's text and what the parser read in it.
#[derive(Clone, Debug, PartialEq)]
pub struct Reasoning {
    pub text: String,
    pub parsed: std::result::Result<Judgment, AnswerError>,
    pub generated_tokens: usize,
    /// The generated ids, the stop token included when generation stopped on one.
    pub tokens: Vec<u32>,
    /// How many of `tokens` the verdict probabilities are conditioned on: the reasoning, as generated.
    pub reasoning_tokens: usize,
}

/// One order of a reasoned judgment: its classes' probabilities after the reasoning, and the reasoning.
struct ReasonedOrder {
    probs: ClassProbabilities,
    prompt_tokens: usize,
    reasoning: Reasoning,
}

/// A judgment.
#[derive(Clone, Debug, PartialEq)]
pub struct JudgeResult {
    pub task: Task,
    pub mode: Mode,
    /// The classes' answers as scored ("Image 1 is better than Image 2", "Final Score: 4", …).
    pub labels: Vec<String>,
    /// Pairwise: the position-debiased `[A better, B better, tie]` (A is the first candidate given); pointwise: one
    /// probability per score value of the scale.
    pub probs: Vec<f32>,
    /// Pairwise: both orders and whether they agree.
    pub pair: Option<PairVerdict>,
    /// Pairwise: the debiased verdict (First = the first candidate given).
    pub verdict: Option<Verdict>,
    /// Pointwise: the expected score, and the most probable score value.
    pub score: Option<f32>,
    pub argmax_score: Option<f32>,
    /// Tokens of the (forward-order) prompt, media placeholders included.
    pub prompt_tokens: usize,
    /// The generated answer, for reasoned judgments.
    pub reasoning: Option<Reasoning>,
    /// Wall time: a reasoned judgment's own; in a batch, the batch's time shared equally by its requests.
    pub seconds: f64,
}

/// A batch's results and what it cost.
#[derive(Clone, Debug, PartialEq)]
pub struct JudgeBatch {
    pub results: Vec<JudgeResult>,
    /// Positions run through the model for the one-pass scores, and the positions prefix sharing saved.
    pub prefill_tokens: usize,
    pub prefill_tokens_saved: usize,
    pub seconds: f64,
}

/// A checkpoint ready to judge: the model, its tokenizer and chat template, the image processor, the templates.
#[derive(Debug)]
pub struct Judge {
    pub model: JudgeModel,
    pub tokenizer: Tokenizer,
    pub chat: ChatTemplate,
    processor: Option<ImageProcessor>,
    overrides: BTreeMap<(Task, Mode), TaskTemplate>,
}

/// The media of a prompt, in prompt order, and the frames sampled per video (0 for image templates).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct MediaKey {
    files: Vec<MediaFile>,
    frames_per_video: usize,
}

/// A rendered prompt and its media.
struct Rendered {
    text: String,
    media: MediaKey,
}

/// One prompt to score: a request's order (0 forward, 1 swapped) in a group of prompts that share their media.
struct Unit {
    request: usize,
    order: usize,
    ids: Vec<i64>,
}

/// The fields the text candidates fill, by mode.
fn candidate_fields(mode: Mode) -> &'static [&'static str] {
    match mode {
        Mode::Pairwise => &["first_response", "second_response"],
        Mode::Pointwise => &["response"],
    }
}

impl Judge {
    /// Loads a checkpoint directory: a LLaVA-OneVision judge, or a text-only Qwen2 (`model_type` "qwen2"), with its
    /// `tokenizer.json`, its chat template (the built-in Qwen2 one when it has none), the task templates it carries
    /// in `judge_templates/` (the built-in ones for the others) and, for LLaVA, its `preprocessor_config.json`
    /// (transformers' defaults when absent).
    pub fn load(dir: &Path, dtype: DType, device: Device) -> Result<Judge> {
        let config = crate::model::files::read_text(&dir.join("config.json"), crate::model::files::MAX_JSON_BYTES)?;
        let model_type: Option<String> = serde_json::from_str::<serde_json::Value>(&config)
            .map_err(|e| Error::Checkpoint(format!("{}: {e}", dir.join("config.json").display())))?
            .get("model_type")
            .and_then(|v| v.as_str().map(str::to_string));
        let model = if model_type.as_deref() == Some("qwen2") {
            JudgeModel::Text(Box::new(Qwen2Model::load(dir, dtype, device)?))
        } else {
            JudgeModel::Llava(Box::new(LlavaOnevisionModel::load(dir, dtype, device)?))
        };
        Judge::with_model(model, dir)
    }

    /// A judge over `model`, already in memory (a trainer's, moved in and taken back with [`Judge::into_model`]:
    /// no copy), with the rest read from the checkpoint directory `dir` as [`Judge::load`] reads it: the tokenizer,
    /// the chat template, the task templates and, for LLaVA, the image processor. On an error `model` is dropped.
    pub fn with_model(model: JudgeModel, dir: &Path) -> Result<Judge> {
        let processor = match &model {
            JudgeModel::Text(_) => None,
            JudgeModel::Llava(_) => Some(ImageProcessor::for_checkpoint_or_defaults(dir)?),
        };
        let overrides = TaskTemplate::from_checkpoint_dir(dir)?.into_iter().map(|t| ((t.task, t.mode), t)).collect();
        Ok(Judge {
            model,
            tokenizer: Tokenizer::from_file(dir)?,
            chat: ChatTemplate::from_checkpoint_dir(dir)?,
            processor,
            overrides,
        })
    }

    /// The model, given back (see [`Judge::with_model`]).
    pub fn into_model(self) -> JudgeModel {
        self.model
    }

    /// Uses `template` instead of the built-in one for its task and mode.
    pub fn set_template(&mut self, template: TaskTemplate) {
        self.overrides.insert((template.task, template.mode), template);
    }

    /// The template judging `task` × `mode`.
    pub fn template(&self, task: Task, mode: Mode) -> Result<TaskTemplate> {
        match self.overrides.get(&(task, mode)) {
            Some(t) => Ok(t.clone()),
            None => TaskTemplate::built_in(task, mode),
        }
    }

    /// Which of `a` and `b` is better (or a tie), from both orders.
    pub fn pairwise(&self, task: Task, context: &Context, a: Candidate, b: Candidate) -> Result<JudgeResult> {
        let request = JudgeRequest { task, mode: Mode::Pairwise, context: context.clone(), candidates: vec![a, b] };
        Ok(self.judge_many(&[request])?.results.remove(0))
    }

    /// The score of `candidate` on the task's scale.
    pub fn pointwise(&self, task: Task, context: &Context, candidate: Candidate) -> Result<JudgeResult> {
        let request =
            JudgeRequest { task, mode: Mode::Pointwise, context: context.clone(), candidates: vec![candidate] };
        Ok(self.judge_many(&[request])?.results.remove(0))
    }

    /// One-pass judgments of many requests. Prompts that see the same media (K responses to one image and
    /// question, both orders of an understanding pair) are scored together, their shared prefix encoded once.
    /// Every request is checked (fields, media files, counts) before the model runs.
    pub fn judge_many(&self, requests: &[JudgeRequest]) -> Result<JudgeBatch> {
        let start = Instant::now();
        let mut groups: BTreeMap<(Task, Mode, MediaKey), Vec<Unit>> = BTreeMap::new();
        let mut prompt_tokens = vec![0; requests.len()];
        let mut loaded: BTreeMap<MediaKey, Vec<ImagePixels>> = BTreeMap::new();
        for (r, request) in requests.iter().enumerate() {
            let orders = if request.mode == Mode::Pairwise { 2 } else { 1 };
            for order in 0..orders {
                let Rendered { text, media } = self.render(request, order == 1).map_err(|e| in_request(r, e))?;
                if !loaded.contains_key(&media) {
                    let pixels = self.load_media(&media).map_err(|e| in_request(r, e))?;
                    loaded.insert(media.clone(), pixels);
                }
                let ids = self.prompt_ids(&text, &loaded[&media]).map_err(|e| in_request(r, e))?;
                if order == 0 {
                    prompt_tokens[r] = ids.len();
                }
                groups.entry((request.task, request.mode, media)).or_default().push(Unit { request: r, order, ids });
            }
        }
        let mut scored: Vec<[Option<ClassProbabilities>; 2]> = vec![[None, None]; requests.len()];
        let mut labels: BTreeMap<(Task, Mode), AnswerClasses> = BTreeMap::new();
        let (mut prefill_tokens, mut prefill_tokens_saved) = (0, 0);
        for ((task, mode, media), units) in &groups {
            let answers = match labels.entry((*task, *mode)) {
                Entry::Occupied(known) => known.into_mut(),
                Entry::Vacant(slot) => {
                    slot.insert(AnswerClasses::for_grammar(&self.template(*task, *mode)?.answer, &self.tokenizer)?)
                }
            };
            let pixels = &loaded[media];
            let inputs: Vec<MediaInput<'_>> = pixels.iter().map(MediaInput::image).collect();
            let prompts: Vec<Vec<i64>> = units.iter().map(|u| u.ids.clone()).collect();
            let (probs, scores) = one_pass(&self.model, &prompts, &inputs, answers)?;
            prefill_tokens += scores.prefill_tokens;
            prefill_tokens_saved += scores.prefill_tokens_saved;
            for (unit, p) in units.iter().zip(probs) {
                scored[unit.request][unit.order] = Some(p);
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        let share = seconds / requests.len().max(1) as f64;
        let results = requests
            .iter()
            .zip(scored)
            .zip(prompt_tokens)
            .map(|((request, [forward, swapped]), prompt_tokens)| {
                let answers = &labels[&(request.task, request.mode)];
                let forward = forward.expect("every request's forward order is scored");
                JudgeResult { seconds: share, ..result(request, answers, &forward, swapped.as_ref(), prompt_tokens) }
            })
            .collect();
        Ok(JudgeBatch { results, prefill_tokens, prefill_tokens_saved, seconds })
    }

    /// Checks `request` as judging it would (its template exists and takes its fields, candidates and media; the
    /// media files exist; the model can see them) without running the model, so that a whole batch of requests can
    /// be refused before any is judged.
    pub fn check(&self, request: &JudgeRequest) -> Result<()> {
        let Rendered { media, .. } = self.render(request, false)?;
        if !media.files.is_empty() && self.processor.is_none() {
            return Err(Error::InvalidArgument(format!(
                "{}: this checkpoint is a text-only Qwen2, it cannot see images or videos",
                request.task
            )));
        }
        media.files.iter().try_for_each(MediaFile::check)
    }

    /// A reasoned judgment: the answer generated (forward order only) and parsed, and the one-pass probabilities of
    /// the final verdict or score given the generated reasoning: the generated tokens whose text ends at or before
    /// the answer's last verdict phrase or score prefix, scored as generated (never decoded and encoded again).
    pub fn reasoned(&self, request: &JudgeRequest, cfg: &GenerationConfig) -> Result<JudgeResult> {
        let start = Instant::now();
        let answers = AnswerClasses::for_grammar(&self.template(request.task, request.mode)?.answer, &self.tokenizer)?;
        let forward = self.reasoned_order(request, false, &answers, cfg)?;
        let mut out = result(request, &answers, &forward.probs, None, forward.prompt_tokens);
        out.reasoning = Some(forward.reasoning);
        out.seconds = start.elapsed().as_secs_f64();
        Ok(out)
    }

    /// A reasoned pairwise judgment from both orders: each order's answer generated and its verdict read as
    /// [`Judge::reasoned`] reads it, the two combined as one-pass verdicts are ([`PairVerdict`]: the position bias
    /// cancels). `reasoning` is the forward order's. A pointwise request is refused.
    pub fn reasoned_both_orders(&self, request: &JudgeRequest, cfg: &GenerationConfig) -> Result<JudgeResult> {
        if request.mode != Mode::Pairwise {
            return Err(Error::InvalidArgument(format!(
                "a {} judgment has one order: judge it with `reasoned`",
                request.mode
            )));
        }
        let start = Instant::now();
        let answers = AnswerClasses::for_grammar(&self.template(request.task, request.mode)?.answer, &self.tokenizer)?;
        let forward = self.reasoned_order(request, false, &answers, cfg)?;
        let swapped = self.reasoned_order(request, true, &answers, cfg)?;
        let mut out = result(request, &answers, &forward.probs, Some(&swapped.probs), forward.prompt_tokens);
        out.reasoning = Some(forward.reasoning);
        out.seconds = start.elapsed().as_secs_f64();
        Ok(out)
    }

    /// One order of a reasoned judgment (swapped when `swap`): the answer generated and parsed, and the classes'
    /// one-pass probabilities after the reasoning it generated.
    fn reasoned_order(
        &self,
        request: &JudgeRequest,
        swap: bool,
        answers: &AnswerClasses,
        cfg: &GenerationConfig,
    ) -> Result<ReasonedOrder> {
        let template = self.template(request.task, request.mode)?;
        let Rendered { text, media } = self.render(request, swap)?;
        let pixels = self.load_media(&media)?;
        let inputs: Vec<MediaInput<'_>> = pixels.iter().map(MediaInput::image).collect();
        let ids = self.prompt_ids(&text, &pixels)?;
        let mut cfg = cfg.clone();
        cfg.stop_tokens.extend_from_slice(self.tokenizer.stop_ids());
        let new_tokens = match &self.model {
            JudgeModel::Text(m) => {
                let prompt: Vec<u32> = ids.iter().map(|&id| id as u32).collect();
                generate(m, &[prompt], &cfg)?.remove(0)
            }
            JudgeModel::Llava(m) => m.generate(&ids, &inputs, &cfg)?,
        };
        let answer = self.tokenizer.decode(&new_tokens, true)?;
        let parsed = parse_answer(&answer, &template.answer);
        let reasoning = &answer[..reasoning_end(&answer, &answers.labels, &template.answer)];
        let until_stop = match new_tokens.last() {
            Some(last) if cfg.stop_tokens.contains(last) => &new_tokens[..new_tokens.len() - 1],
            _ => &new_tokens[..],
        };
        let reasoning_tokens = reasoning_tokens(&self.tokenizer, until_stop, reasoning)?;
        let mut with_reasoning = ids.clone();
        with_reasoning.extend(new_tokens[..reasoning_tokens].iter().map(|&id| i64::from(id)));
        let (mut probs, _) = one_pass(&self.model, &[with_reasoning], &inputs, answers)?;
        Ok(ReasonedOrder {
            probs: probs.remove(0),
            prompt_tokens: ids.len(),
            reasoning: Reasoning {
                text: answer,
                parsed,
                generated_tokens: new_tokens.len(),
                tokens: new_tokens,
                reasoning_tokens,
            },
        })
    }

    /// The rendered prompt of `request` (in swapped order when `swap`) and its media in prompt order, after every
    /// check of the request against the template.
    fn render(&self, request: &JudgeRequest, swap: bool) -> Result<Rendered> {
        let template = self.template(request.task, request.mode)?;
        let wanted = if request.mode == Mode::Pairwise { 2 } else { 1 };
        if request.candidates.len() != wanted {
            return Err(Error::InvalidArgument(format!(
                "`candidates`: a {} judgment takes {wanted}, {} given",
                request.mode,
                request.candidates.len()
            )));
        }
        let mut candidates = request.candidates.clone();
        if swap {
            candidates.reverse();
        }
        let generation = matches!(request.task, Task::ImageGeneration | Task::VideoGeneration);
        let mut fields = request.context.fields.clone();
        let media: Vec<MediaFile> = if generation {
            if !request.context.media.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "`context.media`: {} judges the candidates' own media; the context takes only the caption",
                    request.task
                )));
            }
            candidates
                .iter()
                .enumerate()
                .map(|(i, c)| match c {
                    Candidate::Media(m) => Ok(m.clone()),
                    Candidate::Text(_) => Err(Error::InvalidArgument(format!(
                        "`candidates[{i}]`: {} judges media files, a text was given",
                        request.task
                    ))),
                })
                .collect::<Result<_>>()?
        } else {
            for (i, (c, name)) in candidates.iter().zip(candidate_fields(request.mode)).enumerate() {
                let Candidate::Text(text) = c else {
                    return Err(Error::InvalidArgument(format!(
                        "`candidates[{i}]`: {} judges response texts, a media file was given",
                        request.task
                    )));
                };
                fields.insert(name.to_string(), text.clone());
            }
            request.context.media.clone()
        };
        let video = matches!(template.media, MediaSpec::Video { .. });
        if let Some(m) = media.iter().find(|m| m.is_video() != video) {
            return Err(Error::InvalidArgument(format!(
                "{}.{} takes {}, got {m}",
                request.task,
                request.mode,
                if video { "videos" } else { "images" }
            )));
        }
        let frames: Vec<usize>;
        let (counts, frames_per_video) = match &template.media {
            MediaSpec::Image { .. } => (TemplateMedia::Images(media.len()), 0),
            MediaSpec::Video { frames_per_video, .. } => {
                frames = vec![*frames_per_video; media.len()];
                (TemplateMedia::Videos(&frames), *frames_per_video)
            }
        };
        let text = template.render_prompt(&self.chat, &fields, counts)?;
        Ok(Rendered { text, media: MediaKey { files: media, frames_per_video } })
    }

    /// Every image (a video: its sampled frames), preprocessed: one image alone takes the anyres tiles, several
    /// (or video frames) one square tile each, as transformers does.
    fn load_media(&self, media: &MediaKey) -> Result<Vec<ImagePixels>> {
        if media.files.is_empty() {
            return Ok(Vec::new());
        }
        let processor = self.processor.as_ref().ok_or_else(|| {
            Error::InvalidArgument("this checkpoint is a text-only Qwen2: it cannot see images or videos".into())
        })?;
        let mut images = Vec::new();
        for m in &media.files {
            images.extend(m.rgb_frames(media.frames_per_video)?);
        }
        let layout = if images.len() == 1 { ImageLayout::Anyres } else { ImageLayout::Square };
        images.iter().map(|image| processor.preprocess(image, layout)).collect()
    }

    /// The token ids of a rendered prompt: each `<image>` becomes its image's packed rows of placeholders.
    fn prompt_ids(&self, text: &str, images: &[ImagePixels]) -> Result<Vec<i64>> {
        let pieces: Vec<&str> = text.split(IMAGE_PLACEHOLDER).collect();
        if pieces.len() != images.len() + 1 {
            return Err(Error::InvalidArgument(format!(
                "the prompt has {} `{IMAGE_PLACEHOLDER}` for {} images",
                pieces.len() - 1,
                images.len()
            )));
        }
        let mut ids: Vec<i64> = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            if i > 0 {
                let JudgeModel::Llava(model) = &self.model else { unreachable!("text-only models load no images") };
                let rows = image_rows(model, &images[i - 1])?;
                ids.extend(std::iter::repeat_n(model.placeholders().image, rows));
            }
            if !piece.is_empty() {
                ids.extend(self.tokenizer.encode(piece)?.into_iter().map(i64::from));
            }
        }
        Ok(ids)
    }
}

/// The packed feature rows of one image.
fn image_rows(model: &LlavaOnevisionModel, pixels: &ImagePixels) -> Result<usize> {
    let tiles = pixels.pixel_values.shape()[0];
    let media = [Media::Image { size: pixels.image_size, tiles }];
    Ok(PackingPlan::new(&model.packing, &media, [tiles, model.vision_tower.config.num_patches()])?.rows())
}

fn in_request(index: usize, e: Error) -> Error {
    match e {
        Error::InvalidArgument(m) => Error::InvalidArgument(format!("request {index}: {m}")),
        other => other,
    }
}

/// Where the reasoning of a generated answer ends: at the last answer prefix (Think's `<answer>`), else at the
/// last class answer found (ASCII case ignored), else the whole answer.
fn reasoning_end(answer: &str, labels: &[String], grammar: &AnswerGrammar) -> usize {
    let lower = answer.to_ascii_lowercase();
    let marker = match grammar {
        AnswerGrammar::Verdict(v) if !v.prefix.is_empty() => vec![v.prefix.to_ascii_lowercase()],
        AnswerGrammar::Score(s) => vec![s.prefix.to_ascii_lowercase()],
        _ => labels.iter().map(|l| l.to_ascii_lowercase()).collect(),
    };
    marker.iter().filter_map(|m| lower.rfind(m.as_str())).max().unwrap_or(answer.len())
}

/// How many of the generated `tokens` make up `reasoning` (the decoded answer's text before its verdict): the
/// longest run of them from the start whose decoded text is a prefix of `reasoning`. The verdict is then scored
/// after the very tokens the model generated: decoding and encoding again would not give them back in general
/// (merges across the token boundaries, byte fallback, special tokens). Prefixes are tried from the longest down,
/// as one ending inside a multi-byte character decodes to a replacement character and does not match.
fn reasoning_tokens(tokenizer: &Tokenizer, tokens: &[u32], reasoning: &str) -> Result<usize> {
    for k in (1..=tokens.len()).rev() {
        if reasoning.starts_with(tokenizer.decode(&tokens[..k], true)?.as_str()) {
            return Ok(k);
        }
    }
    Ok(0)
}

/// A request's result from its forward order's class probabilities (and the swapped order's, pairwise).
fn result(
    request: &JudgeRequest,
    answers: &AnswerClasses,
    forward: &ClassProbabilities,
    swapped: Option<&ClassProbabilities>,
    prompt_tokens: usize,
) -> JudgeResult {
    let mut out = JudgeResult {
        task: request.task,
        mode: request.mode,
        labels: answers.labels.clone(),
        probs: forward.probs.clone(),
        pair: None,
        verdict: None,
        score: forward.expected,
        argmax_score: answers.values.as_ref().map(|v| v[forward.argmax]),
        prompt_tokens,
        reasoning: None,
        seconds: 0.0,
    };
    if request.mode == Mode::Pairwise {
        match swapped {
            Some(s) => {
                let pair = PairVerdict::from_orders(forward, s);
                out.probs = pair.debiased.to_vec();
                out.verdict = Some(pair.verdict);
                out.pair = Some(pair);
            }
            // A reasoned judgment reads its one order.
            None => out.verdict = Some([Verdict::First, Verdict::Second, Verdict::Tie][forward.argmax]),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::templates::{ScoreGrammar, VerdictGrammar};

    fn tokenizer() -> Tokenizer {
        Tokenizer::from_file(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2/tokenizer")).unwrap()
    }

    #[test]
    fn reasoning_tokens_are_the_generated_ones_up_to_the_verdict() {
        let tokenizer = tokenizer();
        let id = |token: &str| tokenizer.token_to_id(token).unwrap();
        // "h" "e" "r" "e" one letter a token, as a model may generate them; the text encodes to merged tokens.
        let letters = [id("h"), id("e"), id("r"), id("e")];
        assert_ne!(tokenizer.encode("here").unwrap(), letters);
        assert_eq!(reasoning_tokens(&tokenizer, &letters, "here").unwrap(), 4);
        assert_eq!(reasoning_tokens(&tokenizer, &letters, "her").unwrap(), 3);
        // A token that crosses the reasoning's end is not part of it.
        let merged = [id("t"), id("he")];
        assert_eq!(reasoning_tokens(&tokenizer, &merged, "th").unwrap(), 1);
        assert_eq!(reasoning_tokens(&tokenizer, &merged, "").unwrap(), 0);
        // "é" as its two byte tokens: half a character decodes to U+FFFD, which the reasoning does not hold.
        let accent = [id("a"), id("Ã"), id("©")];
        assert_eq!(tokenizer.decode(&accent, true).unwrap(), "aé");
        assert_eq!(reasoning_tokens(&tokenizer, &accent, "aé").unwrap(), 3);
        assert_eq!(reasoning_tokens(&tokenizer, &accent, "a").unwrap(), 1);
        // Special tokens decode to nothing: they stay inside the reasoning they were generated in.
        let special = [id("h"), id("<|im_start|>"), id("e"), id("<|im_start|>")];
        assert_eq!(reasoning_tokens(&tokenizer, &special, "he").unwrap(), 4);
        assert_eq!(reasoning_tokens(&tokenizer, &special, "h").unwrap(), 2);
    }

    #[test]
    fn reasoning_ends_before_the_last_answer() {
        let labels = vec!["Image 1 is better than Image 2".to_string(), "Image 2 is better than Image 1".to_string()];
        let verdict = AnswerGrammar::Verdict(VerdictGrammar {
            prefix: String::new(),
            first: vec![labels[0].clone()],
            second: vec![labels[1].clone()],
            tie: vec![],
        });
        let answer = "Image 1 is better than Image 2 at colour. Overall, image 2 is better than image 1.";
        assert_eq!(reasoning_end(answer, &labels, &verdict), answer.find("image 2 is better").unwrap());
        assert_eq!(reasoning_end("no verdict", &labels, &verdict), "no verdict".len());
        let think = AnswerGrammar::Verdict(VerdictGrammar {
            prefix: "<answer>".into(),
            ..match verdict {
                AnswerGrammar::Verdict(v) => v,
                AnswerGrammar::Score(_) => unreachable!(),
            }
        });
        let answer = "<think>Image 1 is better than Image 2</think><answer>Image 2 is better than Image 1</answer>";
        assert_eq!(reasoning_end(answer, &labels, &think), answer.find("<answer>").unwrap());
        let score = AnswerGrammar::Score(ScoreGrammar { prefix: "Final Score:".into(), min: 1, max: 5 });
        let answer = "cat (object): 1\nFINAL SCORE: 4";
        assert_eq!(reasoning_end(answer, &[], &score), answer.find("FINAL").unwrap());
    }
}
