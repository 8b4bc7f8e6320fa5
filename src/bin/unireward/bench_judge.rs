//! `unireward bench judge`: judgments per second of one-pass verdicts against generate-then-parse on the same random
//! Qwen2 judge (Qwen2-0.5B's shapes, fewer layers) and the same synthetic prompts, and the prefill that prefix
//! sharing saves when K candidates of one prompt are scored together. Text-only: the prompts stand for a rendered
//! judge prompt whose image rows are already embedded (the LLaVA path prefills from embeddings the same way).

use std::time::Instant;

use unireward::judge::answer::parse_answer;
use unireward::judge::{generate, one_pass, AnswerClasses, GenerationConfig, JudgeModel, Mode, Task, TaskTemplate};
use unireward::{DType, Device};

use crate::bench_model::{qwen2_0_5b, random_model};

#[derive(clap::Args)]
pub struct JudgeArgs {
    /// Decoder layers (Qwen2-0.5B has 24).
    #[arg(long, default_value_t = 4)]
    layers: usize,
    /// Prompt tokens (an image-generation pair prompt is about 600 text tokens plus the images' rows).
    #[arg(long, default_value_t = 600)]
    prompt: usize,
    /// Tokens generate-then-parse decodes (UnifiedReward's pairwise answers are a sentence, its reasoned ones
    /// hundreds of tokens).
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    /// Candidates of one prompt scored pointwise together (prefix sharing).
    #[arg(long, default_value_t = 10)]
    candidates: usize,
    /// Tokens of each candidate after the shared prefix (a response and the end of the prompt).
    #[arg(long, default_value_t = 40)]
    tail: usize,
    #[arg(long, default_value = "f32", value_parser = crate::parse_float_dtype)]
    dtype: DType,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", value_parser = crate::parse_device)]
    device: Device,
}

/// Deterministic token ids in [1000, 100000).
fn tokens(seed: u64, len: usize) -> Vec<i64> {
    (0..len as u64).map(|i| 1000 + ((seed.wrapping_mul(7919) + i * 104_729) % 99_000) as i64).collect()
}

pub fn run(args: &JudgeArgs) -> anyhow::Result<()> {
    let config = qwen2_0_5b(args.layers);
    let model = JudgeModel::Text(Box::new(random_model(config, args.dtype, args.device)?));
    let JudgeModel::Text(lm) = &model else { unreachable!() };
    // The verdict classes' token lengths of "Image 1 is better than Image 2" / "… 2 … 1" / "Both images are equally
    // good" under Qwen2's tokenizer (9, 9, 5 tokens; the ids stand in), the first token telling 1/2 apart from "Both".
    let verdicts = AnswerClasses::from_tokens(
        &[
            vec![1805, 220, 16, 374, 2664, 1091, 4654, 220, 17],
            vec![1805, 220, 17, 374, 2664, 1091, 4654, 220, 16],
            vec![20629, 5335, 525, 18308, 1661],
        ],
        None,
    )?;
    let scores = AnswerClasses::from_tokens(
        &(1..=5u32).map(|v| vec![19357, 18115, 25, 220, 15 + v]).collect::<Vec<_>>(),
        Some((1..=5).map(|v| v as f32).collect()),
    )?;
    let forward = tokens(1, args.prompt);
    // The swapped order shares only the start of the prompt (the images swap right after the system turn).
    let mut swapped = forward.clone();
    swapped[20..].copy_from_slice(&tokens(2, args.prompt - 20));
    println!(
        "judge: random Qwen2-0.5B shapes with {} layers, {:?} on {}; prompt {} tokens",
        args.layers, args.dtype, args.device, args.prompt
    );

    // Warm-up (caches, thread pool).
    one_pass(&model, std::slice::from_ref(&forward), &[], &verdicts)?;
    let start = Instant::now();
    one_pass(&model, std::slice::from_ref(&forward), &[], &verdicts)?;
    let one_order = start.elapsed().as_secs_f64();
    let start = Instant::now();
    one_pass(&model, std::slice::from_ref(&forward), &[], &verdicts)?;
    one_pass(&model, std::slice::from_ref(&swapped), &[], &verdicts)?;
    let both_orders = start.elapsed().as_secs_f64();

    let prompt: Vec<u32> = forward.iter().map(|&t| t as u32).collect();
    let cfg = GenerationConfig { max_new_tokens: args.new_tokens, ..Default::default() };
    let grammar = TaskTemplate::built_in(Task::ImageGeneration, Mode::Pairwise)?.answer;
    let start = Instant::now();
    let answer = generate(lm, std::slice::from_ref(&prompt), &cfg)?;
    // The random model's tokens are not text: the parse reads a stand-in of the answer's length.
    let _ = parse_answer(&"x ".repeat(answer[0].len()), &grammar);
    let generated = start.elapsed().as_secs_f64();

    println!("\n| judgment | time | judgments/s | vs generate-then-parse |");
    println!("| --- | ---: | ---: | ---: |");
    for (name, t) in [
        (format!("generate-then-parse ({} new tokens, one order)", args.new_tokens), generated),
        ("one-pass, one order (3 verdict continuations)".to_string(), one_order),
        ("one-pass, both orders (position-debiased)".to_string(), both_orders),
    ] {
        println!("| {name} | {:.3} s | {:.2} | {:.1}x |", t, 1.0 / t, generated / t);
    }

    let k = args.candidates;
    let prompts: Vec<Vec<i64>> =
        (0..k).map(|c| forward.iter().copied().chain(tokens(10 + c as u64, args.tail)).collect()).collect();
    let start = Instant::now();
    let (_, shared) = one_pass(&model, &prompts, &[], &scores)?;
    let together = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut alone_tokens = 0;
    for p in &prompts {
        alone_tokens += one_pass(&model, std::slice::from_ref(p), &[], &scores)?.1.prefill_tokens;
    }
    let alone = start.elapsed().as_secs_f64();
    println!(
        "\npointwise, K = {k} candidates of one {}-token prefix (+{} tokens each), 5 score values: \
         prefill {} tokens shared vs {} one candidate at a time ({} saved against no sharing at all); \
         {:.3} s vs {:.3} s ({:.1}x)",
        args.prompt,
        args.tail,
        shared.prefill_tokens,
        alone_tokens,
        shared.prefill_tokens_saved,
        together,
        alone,
        alone / together
    );
    Ok(())
}
