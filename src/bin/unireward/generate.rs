//! `unireward generate`: text from a checkpoint directory (config.json, safetensors weights, tokenizer.json) — a
//! Qwen2 decoder, or LLaVA-OneVision with `--image` / `--video` inputs (`generate_media.rs`) — greedy or sampled,
//! with a KV cache; the prompt taken as is or wrapped in Qwen2's chat template.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use unireward::judge::{generate, render_chat, ChatMessage, FinishReason, GenerationConfig, Tokenizer};
use unireward::model::{Architecture, LoadOptions, Qwen2Model};
use unireward::{DType, Device};

use crate::generate_media;

#[derive(clap::Args)]
pub struct Args {
    /// The checkpoint directory: config.json, model.safetensors (or sharded weights) and tokenizer.json.
    #[arg(long)]
    pub model: PathBuf,
    /// The prompt text (with --chat: the user's message). With --image / --video, each `<image>` / `<video>` in it
    /// stands for the next image / video; without any, they are put before the text, one a line.
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt in Qwen2's chat template (a user turn, then the assistant's turn to complete).
    #[arg(long)]
    pub chat: bool,
    /// The system message of the chat (default: Qwen2's "You are a helpful assistant.").
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// An image file (PNG, JPEG, WebP, GIF) for a LLaVA-OneVision checkpoint; repeatable. Preprocessed with the
    /// checkpoint's preprocessor_config.json: one image takes the anyres tiles, several are each padded to a square.
    #[arg(long)]
    pub image: Vec<PathBuf>,
    /// A video (a folder of frame images in name order, or an animated GIF) for a LLaVA-OneVision checkpoint;
    /// repeatable.
    #[arg(long)]
    pub video: Vec<PathBuf>,
    /// Frames sampled evenly from each video.
    #[arg(long, default_value_t = 8)]
    pub frames: usize,
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// 0 picks the most likely token; above 0 samples.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling mass in (0, 1].
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", value_parser = crate::parse_device)]
    pub device: Device,
    /// The compute dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32", value_parser = crate::parse_float_dtype)]
    pub dtype: DType,
    /// Also print (to stderr) the token ids, the speed and the KV cache's size.
    #[arg(long)]
    pub verbose: bool,
    /// Load a checkpoint holding tensors the model does not use (they are listed on stderr), as transformers does;
    /// by default such a checkpoint is refused.
    #[arg(long)]
    lenient: bool,
    /// Refuse weights holding NaN or infinity, naming the tensor.
    #[arg(long)]
    check_finite: bool,
}

/// The prompt's text (`user` the user's message): as given, or rendered with the chat template.
pub fn prompt_text(args: &Args, user: &str) -> String {
    if !args.chat {
        return user.to_string();
    }
    let mut messages: Vec<ChatMessage> = args.system.iter().map(ChatMessage::system).collect();
    messages.push(ChatMessage::user(user));
    render_chat(&messages, true)
}

/// How the model picks tokens, stopping at the checkpoint's eos tokens.
pub fn generation_config(args: &Args, model: &Qwen2Model) -> GenerationConfig {
    GenerationConfig {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
        stop_tokens: model.config.eos_token_ids.clone(),
        suppress_tokens: Vec::new(),
    }
}

pub fn load_options(args: &Args) -> LoadOptions {
    LoadOptions { lenient: args.lenient, check_finite: args.check_finite }
}

/// Warns about the tensors a lenient load ignored.
pub fn warn_ignored(ignored: &[String]) {
    if !ignored.is_empty() {
        eprintln!("warning: ignored {} unused tensors: {}", ignored.len(), ignored.join(", "));
    }
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let tokenizer = Tokenizer::from_file(&args.model)?;
    if Architecture::of_checkpoint(&args.model)? == Architecture::LlavaOnevision {
        return generate_media::run(args, &tokenizer);
    }
    anyhow::ensure!(
        args.image.is_empty() && args.video.is_empty(),
        "--image and --video need a LLaVA-OneVision checkpoint; {} holds a Qwen2 decoder",
        args.model.display()
    );
    let (model, report) = Qwen2Model::load_with(&args.model, args.dtype, args.device, &load_options(args))
        .with_context(|| format!("loading the model in {}", args.model.display()))?;
    warn_ignored(&report.ignored);
    let prompt = tokenizer.encode(&prompt_text(args, &args.prompt))?;
    let cfg = generation_config(args, &model);
    let start = Instant::now();
    let tokens = generate(&model, std::slice::from_ref(&prompt), &cfg)?.pop().unwrap_or_default();
    let prompt: Vec<i64> = prompt.into_iter().map(i64::from).collect();
    report_output(args, &tokenizer, &model, &prompt, &tokens, &cfg, start.elapsed().as_secs_f64())
}

/// Prints the text of `tokens`, and with --verbose the ids, why generation ended, the speed and the cache size.
pub fn report_output(
    args: &Args,
    tokenizer: &Tokenizer,
    model: &Qwen2Model,
    prompt: &[i64],
    tokens: &[u32],
    cfg: &GenerationConfig,
    seconds: f64,
) -> anyhow::Result<()> {
    println!("{}", tokenizer.decode(tokens, true)?);
    if args.verbose {
        let positions = (prompt.len() + args.max_new_tokens).min(model.config.max_position_embeddings);
        let cache = model.new_cache(1, positions)?.size_in_bytes();
        eprintln!("prompt ids ({}): {prompt:?}", prompt.len());
        eprintln!("new ids ({}): {tokens:?}", tokens.len());
        eprintln!("finish reason: {}", FinishReason::of(model, prompt.len(), tokens, cfg).as_str());
        let unknown = tokenizer.unknown_ids(tokens);
        if !unknown.is_empty() {
            eprintln!(
                "warning: ids {unknown:?} are past the tokenizer's {} tokens (a padded embedding) and were skipped",
                tokenizer.vocab_size()
            );
        }
        eprintln!(
            "{:.1} tokens/s ({} tokens in {:.3} s, prompt included in the time); KV cache {:.2} MiB on {}",
            tokens.len() as f64 / seconds,
            tokens.len(),
            seconds,
            cache as f64 / (1 << 20) as f64,
            args.device
        );
    }
    Ok(())
}
