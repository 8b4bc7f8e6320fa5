//! `unireward generate`: text from a Qwen2 checkpoint directory (config.json, safetensors weights, tokenizer.json),
//! greedy or sampled, with a KV cache; the prompt taken as is or wrapped in Qwen2's chat template.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use unireward::judge::{generate, render_chat, ChatMessage, FinishReason, GenerationConfig, Tokenizer};
use unireward::model::{LoadOptions, Qwen2Model};
use unireward::{DType, Device};

#[derive(clap::Args)]
pub struct Args {
    /// The checkpoint directory: config.json, model.safetensors (or sharded weights) and tokenizer.json.
    #[arg(long)]
    model: PathBuf,
    /// The prompt text (with --chat: the user's message).
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt in Qwen2's chat template (a user turn, then the assistant's turn to complete).
    #[arg(long)]
    chat: bool,
    /// The system message of the chat (default: Qwen2's "You are a helpful assistant.").
    #[arg(long, requires = "chat")]
    system: Option<String>,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
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
    device: Device,
    /// The compute dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32", value_parser = crate::parse_float_dtype)]
    dtype: DType,
    /// Also print (to stderr) the token ids, the speed and the KV cache's size.
    #[arg(long)]
    verbose: bool,
    /// Load a checkpoint holding tensors the model does not use (they are listed on stderr), as transformers does;
    /// by default such a checkpoint is refused.
    #[arg(long)]
    lenient: bool,
    /// Refuse weights holding NaN or infinity, naming the tensor.
    #[arg(long)]
    check_finite: bool,
}

/// The prompt's text: as given, or rendered with the chat template.
fn prompt_text(args: &Args) -> String {
    if !args.chat {
        return args.prompt.clone();
    }
    let mut messages: Vec<ChatMessage> = args.system.iter().map(ChatMessage::system).collect();
    messages.push(ChatMessage::user(&args.prompt));
    render_chat(&messages, true)
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let tokenizer = Tokenizer::from_file(&args.model)?;
    let options = LoadOptions { lenient: args.lenient, check_finite: args.check_finite };
    let (model, report) = Qwen2Model::load_with(&args.model, args.dtype, args.device, &options)
        .with_context(|| format!("loading the model in {}", args.model.display()))?;
    if !report.ignored.is_empty() {
        eprintln!("warning: ignored {} unused tensors: {}", report.ignored.len(), report.ignored.join(", "));
    }
    let prompt = tokenizer.encode(&prompt_text(args))?;
    let cfg = GenerationConfig {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
        stop_tokens: model.config.eos_token_ids.clone(),
    };
    let start = Instant::now();
    let tokens = generate(&model, std::slice::from_ref(&prompt), &cfg)?.pop().unwrap_or_default();
    let seconds = start.elapsed().as_secs_f64();
    println!("{}", tokenizer.decode(&tokens, true)?);
    if args.verbose {
        let positions = (prompt.len() + args.max_new_tokens).min(model.config.max_position_embeddings);
        let cache = model.new_cache(1, positions)?.size_in_bytes();
        eprintln!("prompt ids ({}): {prompt:?}", prompt.len());
        eprintln!("new ids ({}): {tokens:?}", tokens.len());
        eprintln!("finish reason: {}", FinishReason::of(&model, prompt.len(), &tokens, &cfg).as_str());
        let unknown = tokenizer.unknown_ids(&tokens);
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
