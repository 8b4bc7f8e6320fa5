//! KV-cache inference and generation against transformers' greedy generations, and prefix sharing against plain
//! generation.

use unireward::judge::{generate, generate_with_prefix, FinishReason, GenerationConfig};
use unireward::model::{ForwardOptions, Qwen2Model};
use unireward::{DType, Device, Tensor};

use super::reference::{model_dir, relative_error, Reference};

const MODELS: [&str; 4] = ["gqa_untied", "mha_tied", "mqa_tied_bf16", "sharded_f16"];

fn tokens(r: &Reference, name: &str) -> Vec<u32> {
    r.ids(name).into_iter().map(|t| t as u32).collect()
}

fn load(name: &str) -> (Qwen2Model, Reference) {
    (Qwen2Model::load(&model_dir(name), DType::F32, Device::Cpu).unwrap(), Reference::load(name))
}

fn greedy(max_new_tokens: usize) -> GenerationConfig {
    GenerationConfig { max_new_tokens, ..Default::default() }
}

#[test]
fn greedy_generation_is_token_identical_to_transformers() {
    for name in MODELS {
        let (model, r) = load(name);
        let prompts: Vec<Vec<u32>> = (0..3).map(|i| tokens(&r, &format!("generate.{i}.prompt"))).collect();
        let expected: Vec<Vec<u32>> = (0..3).map(|i| tokens(&r, &format!("generate.{i}.tokens"))).collect();
        for (prompt, want) in prompts.iter().zip(&expected) {
            assert_eq!(&generate(&model, std::slice::from_ref(prompt), &greedy(12)).unwrap()[0], want, "{name} alone");
        }
        // Together: prompts of lengths 5, 1 and 9 in one batch, each at its own position.
        assert_eq!(generate(&model, &prompts, &greedy(12)).unwrap(), expected, "{name} batched");
        let stop = GenerationConfig { stop_tokens: vec![r.ids("generate.stop.eos")[0] as u32], ..greedy(12) };
        assert_eq!(
            generate(&model, &prompts[..1], &stop).unwrap()[0],
            tokens(&r, "generate.stop.tokens"),
            "{name} stop"
        );
    }
}

#[test]
fn cached_logits_equal_the_full_forward() {
    let (model, r) = load("gqa_untied");
    let (ids, mask) = (r.ids("input_ids"), r.ids("attention_mask"));
    let (n, t) = (3, 7);
    let pass = model
        .forward(
            &Tensor::from_slice(&ids, &[n, t], Device::Cpu).unwrap(),
            &Tensor::from_slice(&mask, &[n, t], Device::Cpu).unwrap(),
            ForwardOptions::default(),
        )
        .unwrap();
    let full = model.logits(&pass).unwrap().to_vec::<f32>().unwrap();
    let vocab = model.config.vocab_size;
    // Feed each row's real tokens in uneven pieces (3, then 1 at a time) and compare the logits after each piece.
    let rows: Vec<Vec<u32>> = (0..n)
        .map(|row| (0..t).filter(|&i| mask[row * t + i] != 0).map(|i| ids[row * t + i] as u32).collect())
        .collect();
    let mut cache = model.new_cache(n, t).unwrap();
    let mut fed = vec![0usize; n];
    while fed.iter().zip(&rows).any(|(&f, r)| f < r.len()) {
        let pieces: Vec<&[u32]> =
            rows.iter().zip(&fed).map(|(r, &f)| &r[f..(if f == 0 { 3 } else { f + 1 }).min(r.len())]).collect();
        let logits = model.extend(&mut cache, &pieces).unwrap().to_vec::<f32>().unwrap();
        for row in 0..n {
            if pieces[row].is_empty() {
                continue;
            }
            fed[row] += pieces[row].len();
            let at = (row * t + fed[row] - 1) * vocab;
            let got: Vec<f64> = logits[row * vocab..(row + 1) * vocab].iter().map(|&x| x as f64).collect();
            let want: Vec<f64> = full[at..at + vocab].iter().map(|&x| x as f64).collect();
            let err = relative_error(&got, &want, |_| true);
            assert!(err < 1e-5, "row {row} after {} tokens: {err:.3e}", fed[row]);
        }
    }
    assert_eq!(cache.lengths(), &[7, 4, 1]);
}

#[test]
fn a_shared_prefix_generates_what_each_prompt_generates_alone() {
    let (model, _) = load("mqa_tied_bf16");
    let prefix: Vec<u32> = vec![5, 17, 33, 2, 90, 41];
    let suffixes: Vec<Vec<u32>> = vec![vec![7, 8, 9], vec![], vec![100], vec![64, 1, 3, 3, 12]];
    let whole: Vec<Vec<u32>> = suffixes.iter().map(|s| [prefix.as_slice(), s].concat()).collect();
    let sampled = GenerationConfig {
        max_new_tokens: 10,
        temperature: 0.9,
        top_p: 0.8,
        seed: 7,
        stop_tokens: vec![],
        suppress_tokens: vec![],
    };
    for cfg in [greedy(10), sampled] {
        let shared = generate_with_prefix(&model, &prefix, &suffixes, &cfg).unwrap();
        assert_eq!(shared, generate(&model, &whole, &cfg).unwrap(), "{cfg:?}");
        // And each alone equals its row of the batch (row r draws from seed + r).
        for (r, prompt) in whole.iter().enumerate() {
            let alone = GenerationConfig { seed: cfg.seed + r as u64, ..cfg.clone() };
            assert_eq!(generate(&model, std::slice::from_ref(prompt), &alone).unwrap()[0], shared[r]);
        }
    }
}

#[test]
fn sampling_is_seeded_and_top_p_narrows_to_greedy() {
    let (model, _) = load("gqa_untied");
    let prompt = vec![vec![3u32, 1, 4, 1, 5]];
    let cfg = |seed, top_p| GenerationConfig {
        max_new_tokens: 16,
        temperature: 1.0,
        top_p,
        seed,
        stop_tokens: vec![],
        suppress_tokens: vec![],
    };
    let a = generate(&model, &prompt, &cfg(1, 1.0)).unwrap();
    assert_eq!(a, generate(&model, &prompt, &cfg(1, 1.0)).unwrap(), "same seed, same tokens");
    let others: Vec<_> = (2..6).map(|s| generate(&model, &prompt, &cfg(s, 1.0)).unwrap()).collect();
    assert!(others.iter().any(|o| *o != a), "different seeds should not all agree");
    // A nucleus smaller than any single token's probability keeps only the most likely token.
    assert_eq!(generate(&model, &prompt, &cfg(9, 1e-6)).unwrap(), generate(&model, &prompt, &greedy(16)).unwrap());
}

#[test]
fn bad_generation_requests_are_clear_errors() {
    let (model, _) = load("mha_tied");
    let err = |cfg: GenerationConfig, prompts: &[Vec<u32>]| generate(&model, prompts, &cfg).unwrap_err().to_string();
    let p = vec![vec![1u32, 2]];
    assert!(err(GenerationConfig { temperature: -1.0, ..greedy(4) }, &p).contains("temperature"));
    assert!(err(GenerationConfig { top_p: 0.0, ..greedy(4) }, &p).contains("top_p"));
    assert!(err(greedy(0), &p).contains("max_new_tokens"));
    assert!(err(greedy(4), &[vec![]]).contains("empty prompt"));
    assert!(err(greedy(4), &[vec![1, 96]]).contains("96"));
    assert!(err(greedy(4), &[vec![1; 64]]).contains("max_position_embeddings (64)"));
    let mut cache = model.new_cache(2, 4).unwrap();
    let e = model.extend(&mut cache, &[&[1, 2, 3], &[4, 5, 6, 7, 8]]).unwrap_err().to_string();
    assert!(e.contains("capacity"), "{e}");
    let e = model.extend(&mut cache, &[&[1]]).unwrap_err().to_string();
    assert!(e.contains("2 sequences"), "{e}");
    assert_eq!(cache.lengths(), &[0, 0], "a refused extend leaves the cache as it was");
    assert!(cache.fork(3, 8).unwrap_err().to_string().contains("batch-1"));
}

/// Generation runs up to the model's context (64 positions here) and stops there with its own reason, alone, batched
/// and from a shared prefix; only a prompt that fills the context is refused.
#[test]
fn generation_stops_at_the_context_length_instead_of_refusing() {
    let (model, _) = load("mha_tied");
    let positions = model.config.max_position_embeddings;
    let short = vec![1u32, 2, 3];
    let long: Vec<u32> = (0..positions as u32 - 5).map(|i| i % 50 + 1).collect();
    let cfg = greedy(100);
    let both = generate(&model, &[short.clone(), long.clone()], &cfg).unwrap();
    for (prompt, tokens) in [&short, &long].into_iter().zip(&both) {
        assert_eq!(prompt.len() + tokens.len(), positions, "prompt of {}", prompt.len());
        assert_eq!(FinishReason::of(&model, prompt.len(), tokens, &cfg), FinishReason::ContextLength);
        // The same tokens as a request that fits: the limit only cuts generation short.
        let fits = greedy(positions - prompt.len());
        assert_eq!(&generate(&model, std::slice::from_ref(prompt), &fits).unwrap()[0], tokens);
    }
    let shared = generate_with_prefix(&model, &long[..10], &[long[10..].to_vec(), vec![]], &cfg).unwrap();
    assert_eq!(shared[0], both[1]);
    assert_eq!(shared[1].len(), positions - 10);
    let one_left: Vec<u32> = vec![1; positions - 1];
    assert_eq!(generate(&model, &[one_left], &cfg).unwrap()[0].len(), 1);
    let few = greedy(2);
    let tokens = &generate(&model, std::slice::from_ref(&short), &few).unwrap()[0];
    assert_eq!(FinishReason::of(&model, short.len(), tokens, &few), FinishReason::MaxNewTokens);
    let stop = GenerationConfig { stop_tokens: vec![tokens[0]], ..few };
    let tokens = &generate(&model, std::slice::from_ref(&short), &stop).unwrap()[0];
    assert_eq!((tokens.len(), FinishReason::of(&model, short.len(), tokens, &stop)), (1, FinishReason::Stop));
}

/// Suppressed tokens are never generated: greedy with the greedy answer's tokens suppressed picks, at each step,
/// the most likely token of the rest (checked against the full forward's logits), and sampling never draws them.
#[test]
fn suppressed_tokens_are_never_generated() {
    let (model, _) = load("gqa_untied");
    let prompt = vec![3u32, 1, 4, 1, 5];
    let free = generate(&model, std::slice::from_ref(&prompt), &greedy(6)).unwrap().remove(0);
    let cfg = GenerationConfig { suppress_tokens: free.clone(), ..greedy(6) };
    let got = generate(&model, std::slice::from_ref(&prompt), &cfg).unwrap().remove(0);
    let mut sequence = prompt.clone();
    for &token in &got {
        assert!(!free.contains(&token), "{token} is suppressed: {got:?}");
        let ids: Vec<i64> = sequence.iter().map(|&t| i64::from(t)).collect();
        let t = Tensor::from_slice(&ids, &[1, ids.len()], Device::Cpu).unwrap();
        let mask = Tensor::from_slice(&vec![1i64; ids.len()], &[1, ids.len()], Device::Cpu).unwrap();
        let logits = model.logits(&model.forward(&t, &mask, ForwardOptions::default()).unwrap()).unwrap();
        let all = logits.to_vec::<f32>().unwrap();
        let last = &all[all.len() - model.config.vocab_size..];
        let allowed = (0..last.len()).filter(|i| !free.contains(&(*i as u32)));
        let best = allowed.clone().fold(allowed.min().unwrap(), |b, i| if last[i] > last[b] { i } else { b });
        assert_eq!(token as usize, best);
        sequence.push(token);
    }
    let sampled = GenerationConfig { temperature: 1.0, seed: 3, suppress_tokens: free.clone(), ..greedy(16) };
    let drawn = generate(&model, std::slice::from_ref(&prompt), &sampled).unwrap().remove(0);
    assert!(drawn.iter().all(|t| !free.contains(t)), "{drawn:?}");
}
