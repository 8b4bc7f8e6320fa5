//! K candidates per prompt from a policy: for each understanding prompt (a question about an image or video), K
//! sampled answers of a Qwen2 or LLaVA-OneVision checkpoint, the prompt's media and question encoded once and the KV
//! cache forked K ways ([`LlavaOnevisionModel::generate_with_prefix`] with K empty suffixes). The output is a
//! candidates file ([`super::filter::read_candidates`]) for the filter, appended and flushed prompt by prompt so that
//! a killed run resumes where it stopped.
//!
//! The prompt is the one DPO trains on for the pairs the filter writes: the checkpoint's chat template around a
//! system turn and the user turn [`CandidatePrompt::user_text`] (one `<image>` / `<video>` line per media file, then
//! the question), with each marker expanded to its media's placeholder ids. A text-only Qwen2 policy sees the text
//! alone (the markers as its tokenizer spells them). Row r of a prompt draws from the seed
//! `prompt_seed(seed, id) + r`, so a prompt's samples depend on the seed and its id alone, not on the other prompts,
//! their order or a shard.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::append::JsonlAppender;
use super::filter::candidates::{fingerprint, refuse_invalid, CandidateFile, CandidatePrompt, MAX_CANDIDATES};
use crate::judge::tokenizer::DEFAULT_SYSTEM_PROMPT;
use crate::judge::{
    expand_media_markers, generate_with_prefix, load_media, Candidate, ChatMessage, ChatTemplate, GenerationConfig,
    JudgeModel, MediaPixels, Tokenizer,
};
use crate::media::ImageProcessor;
use crate::model::llava::{LlavaOnevisionModel, MediaInput};
use crate::model::{Architecture, Qwen2Model};
use crate::runtime::{DType, Device};
use crate::{Error, Result};

/// The largest candidates file a resumed run reads back.
const MAX_OUTPUT_BYTES: u64 = 1 << 30;

/// How the candidates are drawn; also the pipeline config's `[sample]` section (its keys are these fields, any
/// left out takes `unireward sample`'s default).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SampleOptions {
    /// Candidates per prompt (2 to [`MAX_CANDIDATES`]).
    pub k: usize,
    /// Above 0: sampling from softmax(logits / temperature) (0, greedy, would give K equal answers).
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u64,
    pub max_new_tokens: usize,
    /// Frames sampled evenly from each video (LLaVA-OneVision policies).
    pub frames: usize,
}

impl Default for SampleOptions {
    fn default() -> Self {
        SampleOptions { k: 10, temperature: 1.0, top_p: 0.95, seed: 0, max_new_tokens: 256, frames: 8 }
    }
}

impl SampleOptions {
    /// Refuses what cannot give K distinct draws, naming the CLI's flag.
    pub fn validate(&self) -> Result<()> {
        if !(2..=MAX_CANDIDATES).contains(&self.k) {
            return Err(Error::InvalidArgument(format!(
                "--k {}: a prompt needs between 2 and {MAX_CANDIDATES} candidates",
                self.k
            )));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(Error::InvalidArgument(format!(
                "--temperature {}: sampling needs a finite temperature above 0 (0 is greedy: K equal answers)",
                self.temperature
            )));
        }
        if self.frames == 0 {
            return Err(Error::InvalidArgument("--frames must be at least 1".into()));
        }
        let cfg = GenerationConfig {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            ..GenerationConfig::default()
        };
        cfg.validate()
    }
}

/// The seed of a prompt's first row: a hash of the run's seed and the prompt's id.
pub fn prompt_seed(seed: u64, id: &str) -> u64 {
    fingerprint(&[&seed.to_le_bytes(), id.as_bytes()].concat())
}

/// A policy's model: the judge's model type (a text-only Qwen2 or a LLaVA-OneVision), so that a policy scores
/// continuations as a judge does ([`JudgeModel::score`]).
pub type PolicyModel = JudgeModel;

/// A checkpoint that answers questions: the model, its tokenizer, chat template and (LLaVA) image processor.
#[derive(Debug)]
pub struct Policy {
    pub model: PolicyModel,
    pub tokenizer: Tokenizer,
    pub chat: ChatTemplate,
    processor: Option<ImageProcessor>,
}

impl Policy {
    /// Loads a Qwen2 or LLaVA-OneVision checkpoint directory (`preprocessor_config.json`: transformers' defaults when
    /// absent).
    pub fn load(dir: &Path, dtype: DType, device: Device) -> Result<Policy> {
        let (model, processor) = match Architecture::of_checkpoint(dir)? {
            Architecture::LlavaOnevision => {
                let model = LlavaOnevisionModel::load(dir, dtype, device)?;
                (PolicyModel::Llava(Box::new(model)), Some(ImageProcessor::for_checkpoint_or_defaults(dir)?))
            }
            _ => (PolicyModel::Text(Box::new(Qwen2Model::load(dir, dtype, device)?)), None),
        };
        Ok(Policy {
            model,
            tokenizer: Tokenizer::from_file(dir)?,
            chat: ChatTemplate::from_checkpoint_dir(dir)?,
            processor,
        })
    }

    /// The rendered prompt of `prompt`: the chat template around the system turn and the user turn.
    pub fn prompt_text(&self, prompt: &CandidatePrompt) -> Result<String> {
        let messages = [ChatMessage::system(DEFAULT_SYSTEM_PROMPT), ChatMessage::user(prompt.user_text())];
        self.chat.render(&messages, true)
    }

    /// How row 0 of `prompt` draws (row r: the seed plus r), stopping at the checkpoint's eos and the chat's end.
    pub fn generation_config(&self, options: &SampleOptions, prompt: &CandidatePrompt) -> GenerationConfig {
        GenerationConfig {
            max_new_tokens: options.max_new_tokens,
            temperature: options.temperature,
            top_p: options.top_p,
            seed: prompt_seed(options.seed, &prompt.id),
            stop_tokens: self.stop_tokens(),
            suppress_tokens: Vec::new(),
        }
    }

    /// Where an answer ends: the checkpoint's eos tokens and the chat's end of turn.
    pub fn stop_tokens(&self) -> Vec<u32> {
        let mut stop_tokens = self.model.language_model().config.eos_token_ids.clone();
        stop_tokens.extend(self.tokenizer.stop_ids().iter().filter(|id| !stop_tokens.contains(id)).collect::<Vec<_>>());
        stop_tokens
    }

    /// The prompt's ids (placeholders expanded) and its preprocessed media (none for a text-only policy).
    pub fn prompt_inputs(
        &self,
        prompt: &CandidatePrompt,
        options: &SampleOptions,
    ) -> Result<(Vec<i64>, Vec<MediaPixels>)> {
        if prompt.is_generation() {
            return Err(Error::InvalidArgument(format!(
                "prompt {:?}: {} is a generation task; a policy answers understanding questions",
                prompt.id, prompt.task
            )));
        }
        let text = self.prompt_text(prompt)?;
        let (PolicyModel::Llava(model), Some(processor)) = (&self.model, &self.processor) else {
            return Ok((self.tokenizer.encode(&text)?.into_iter().map(i64::from).collect(), Vec::new()));
        };
        let pixels = load_media(processor, &prompt.context.media, options.frames)?;
        let inputs: Vec<MediaInput<'_>> = pixels.iter().map(MediaPixels::input).collect();
        let counts = model.placeholder_counts(&inputs)?;
        let (images, videos) = if prompt.is_video() { (&[][..], &counts[..]) } else { (&counts[..], &[][..]) };
        let ids = expand_media_markers(&self.tokenizer, &text, model.placeholders(), images, videos)?;
        Ok((ids, pixels))
    }

    /// `options.k` answers to `prompt`, its media and question encoded once and forked K ways.
    pub fn sample(&self, prompt: &CandidatePrompt, options: &SampleOptions) -> Result<Vec<String>> {
        options.validate()?;
        let (ids, pixels) = self.prompt_inputs(prompt, options)?;
        let cfg = self.generation_config(options, prompt);
        let tokens = self.generate(&ids, &pixels, &vec![Vec::new(); options.k], &cfg)?;
        tokens.iter().map(|t| self.tokenizer.decode(t, true)).collect()
    }

    /// The new tokens after the prompt `ids` (from [`Policy::prompt_inputs`], with its media `pixels`) followed by
    /// each of `suffixes`: the prompt and its media encoded once, the cache forked to every suffix.
    pub fn generate(
        &self,
        ids: &[i64],
        pixels: &[MediaPixels],
        suffixes: &[Vec<u32>],
        cfg: &GenerationConfig,
    ) -> Result<Vec<Vec<u32>>> {
        match &self.model {
            PolicyModel::Text(model) => {
                let prefix: Vec<u32> = ids.iter().map(|&id| id as u32).collect();
                generate_with_prefix(model, &prefix, suffixes, cfg)
            }
            PolicyModel::Llava(model) => {
                let inputs: Vec<MediaInput<'_>> = pixels.iter().map(MediaPixels::input).collect();
                model.generate_with_prefix(ids, &inputs, suffixes, cfg)
            }
        }
    }

    /// `prompt` with `options.k` sampled answers as its candidates: what the filter judges.
    pub fn sample_candidates(&self, prompt: &CandidatePrompt, options: &SampleOptions) -> Result<CandidatePrompt> {
        let answers = self.sample(prompt, options)?;
        Ok(CandidatePrompt {
            candidates: answers.iter().map(|a| Candidate::Text(a.clone())).collect(),
            written: answers,
            ..prompt.clone()
        })
    }
}

/// One line of the candidates file.
#[derive(Serialize)]
struct Line<'a> {
    id: &'a str,
    task: &'static str,
    context: BTreeMap<&'a str, Value>,
    candidates: &'a [String],
}

/// The candidates-file line (with its newline) of a sampled prompt: its id, task and context as the prompts file
/// wrote them, and its candidates.
pub fn candidates_line(prompt: &CandidatePrompt) -> String {
    let mut context: BTreeMap<&str, Value> =
        prompt.context.fields.iter().map(|(k, v)| (k.as_str(), Value::String(v.clone()))).collect();
    let media = match prompt.context_media.as_slice() {
        [one] => Value::String(one.clone()),
        many => Value::from(many.to_vec()),
    };
    context.insert(if prompt.is_video() { "video" } else { "image" }, media);
    let line = Line { id: &prompt.id, task: prompt.task.name(), context, candidates: &prompt.written };
    serde_json::to_string(&line).expect("candidates lines serialize") + "\n"
}

/// How a sampling run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SampleOutcome {
    /// Prompts in the file, and how many an earlier run had finished.
    pub total: usize,
    pub resumed_from: usize,
    /// Stopped by the stop flag before the last prompt.
    pub interrupted: bool,
}

/// Samples every prompt of `file` into the candidates file `out`, one line per prompt in file order, each flushed to
/// disk before the next prompt starts. Everything (the options, every prompt) is checked before `out` is written;
/// `resume` continues a run's `out` after its last complete line (a line cut short is removed). `stop` is read
/// before each prompt; `on_prompt(done, total)` follows each.
pub fn run_sample(
    file: &CandidateFile,
    policy: &Policy,
    options: &SampleOptions,
    out: &Path,
    resume: bool,
    stop: &AtomicBool,
    mut on_prompt: impl FnMut(usize, usize),
) -> Result<SampleOutcome> {
    options.validate()?;
    if !file.invalid.is_empty() {
        return Err(refuse_invalid(&file.path, &file.invalid, ""));
    }
    if file.prompts.is_empty() {
        return Err(Error::InvalidArgument(format!("{} holds no prompts", file.path.display())));
    }
    if let Some(p) = file.prompts.iter().find(|p| p.is_generation()) {
        return Err(Error::InvalidArgument(format!(
            "{} line {}: {} is a generation task; a policy answers understanding questions",
            file.path.display(),
            p.line,
            p.task
        )));
    }
    let (mut output, done) = if resume {
        let (output, lines) = JsonlAppender::resume(out, 1, MAX_OUTPUT_BYTES)?;
        check_resumed(out, &lines, &file.prompts)?;
        (output, lines.len())
    } else {
        (JsonlAppender::create(out)?, 0)
    };
    let total = file.prompts.len();
    let mut outcome = SampleOutcome { total, resumed_from: done, interrupted: false };
    for (i, prompt) in file.prompts.iter().enumerate().skip(done) {
        if stop.load(Ordering::SeqCst) {
            outcome.interrupted = true;
            break;
        }
        output.append(&candidates_line(&policy.sample_candidates(prompt, options)?))?;
        on_prompt(i + 1, total);
    }
    Ok(outcome)
}

/// Refuses to continue an output whose lines are not the first prompts' (another prompts file's run).
fn check_resumed(out: &Path, lines: &[String], prompts: &[CandidatePrompt]) -> Result<()> {
    if lines.len() > prompts.len() {
        return Err(Error::InvalidArgument(format!(
            "--resume: {} has {} prompts, the prompts file {}: another run's output",
            out.display(),
            lines.len(),
            prompts.len()
        )));
    }
    for (i, (line, prompt)) in lines.iter().zip(prompts).enumerate() {
        let id = serde_json::from_str::<Value>(line)
            .ok()
            .and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_string));
        if id.as_deref() != Some(prompt.id.as_str()) {
            return Err(Error::InvalidArgument(format!(
                "--resume: {} line {} is not prompt {:?} (the prompts file's line {}): another run's output",
                out.display(),
                i + 1,
                prompt.id,
                prompt.line
            )));
        }
    }
    Ok(())
}
