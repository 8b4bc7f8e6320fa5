//! Forward, loss and backward of tiny Qwen2 checkpoints against transformers in float64.

use unireward::model::qwen2::Qwen2Gradients;
use unireward::model::{ForwardOptions, Qwen2Model};
use unireward::ops::fused_linear::FusedLinearConfig;
use unireward::{DType, Device, Tensor};

use super::reference::{model_dir, relative_error, values, Reference};

const MODELS: [&str; 4] = ["gqa_untied", "mha_tied", "mqa_tied_bf16", "sharded_f16"];

fn batch(r: &Reference) -> (Tensor, Tensor) {
    let shape = r.shape("input_ids").to_vec();
    let ids = Tensor::from_slice(&r.ids("input_ids"), &shape, Device::Cpu).unwrap();
    let mask = Tensor::from_slice(&r.ids("attention_mask"), &shape, Device::Cpu).unwrap();
    (ids, mask)
}

/// Loss and gradients of one model through the fused causal-LM loss.
fn loss_and_grads(model: &Qwen2Model, ids: &Tensor, mask: &Tensor, opts: ForwardOptions) -> (f32, Qwen2Gradients) {
    let pass = model.forward(ids, mask, opts).unwrap();
    let loss = model.causal_lm_loss(&pass, ids, &FusedLinearConfig::default()).unwrap();
    (loss.loss, model.backward(pass, loss.grads).unwrap())
}

/// Worst relative error of the logits (real tokens), the loss, every parameter gradient and the input-embedding
/// gradient against the reference.
fn errors(model: &Qwen2Model, r: &Reference) -> Vec<(String, f64)> {
    let (ids, mask) = batch(r);
    let real = r.ids("attention_mask");
    let vocab = model.config.vocab_size;
    let pass = model.forward(&ids, &mask, ForwardOptions::default()).unwrap();
    let logits = values(&model.logits(&pass).unwrap());
    let mut errs = vec![("logits".to_string(), relative_error(&logits, r.get("logits"), |i| real[i / vocab] != 0))];
    let loss = model.causal_lm_loss(&pass, &ids, &FusedLinearConfig::default()).unwrap();
    let t = r.shape("input_ids")[1];
    let next_tokens: usize = real.chunks(t).map(|row| row.iter().filter(|&&m| m != 0).count().saturating_sub(1)).sum();
    assert_eq!(loss.tokens, next_tokens);
    errs.push(("loss".into(), relative_error(&[f64::from(loss.loss)], r.get("loss"), |_| true)));
    let grads = model.backward(pass, loss.grads).unwrap();
    let named = grads.weights.named();
    let expected = r.tensors_named("grad.").into_iter().filter(|n| n != "grad.inputs_embeds").count();
    assert_eq!(named.len(), expected, "one gradient per parameter");
    for (name, g) in named {
        errs.push((name.clone(), relative_error(&values(g), r.get(&format!("grad.{name}")), |_| true)));
    }
    let embeds = values(&grads.inputs_embeds);
    errs.push(("inputs_embeds".into(), relative_error(&embeds, r.get("grad.inputs_embeds"), |_| true)));
    errs
}

#[test]
fn f32_logits_loss_and_every_gradient_match_transformers() {
    for name in MODELS {
        let model = Qwen2Model::load(&model_dir(name), DType::F32, Device::Cpu).unwrap();
        let errs = errors(&model, &Reference::load(name));
        let worst = errs.iter().cloned().fold(("".to_string(), 0.0), |a, b| if b.1 > a.1 { b } else { a });
        println!("{name}: worst relative error {:.2e} ({}) over {} checks", worst.1, worst.0, errs.len());
        for (what, err) in errs {
            assert!(err < 1e-4, "{name}: {what} relative error {err:.3e}");
        }
    }
}

fn load(name: &str, dtype: DType) -> (Qwen2Model, Reference) {
    (Qwen2Model::load(&model_dir(name), dtype, Device::Cpu).unwrap(), Reference::load(name))
}

fn assert_same_grads(a: &Qwen2Gradients, b: &Qwen2Gradients, tol: f64, what: &str) {
    for ((name, x), (_, y)) in a.weights.named().into_iter().zip(b.weights.named()) {
        let err = relative_error(&values(x), &values(y), |_| true);
        assert!(err <= tol, "{what}: {name} differs by {err:.3e}");
    }
    let err = relative_error(&values(&a.inputs_embeds), &values(&b.inputs_embeds), |_| true);
    assert!(err <= tol, "{what}: inputs_embeds differs by {err:.3e}");
}

#[test]
fn recomputation_gives_the_same_gradients_with_less_activation_memory() {
    let (model, r) = load("gqa_untied", DType::F32);
    let (ids, mask) = batch(&r);
    let full = model.forward(&ids, &mask, ForwardOptions { recompute: false }).unwrap();
    let lean = model.forward(&ids, &mask, ForwardOptions { recompute: true }).unwrap();
    let (full_report, lean_report) = (model.memory_report(&full), model.memory_report(&lean));
    println!("full: {full_report}\nrecompute: {lean_report}");
    assert_eq!(full_report.parameters, model.weights.numel() * 4);
    assert!(lean_report.activations < full_report.activations, "{lean_report} vs {full_report}");
    drop((full, lean));
    let (loss_a, a) = loss_and_grads(&model, &ids, &mask, ForwardOptions { recompute: false });
    let (loss_b, b) = loss_and_grads(&model, &ids, &mask, ForwardOptions { recompute: true });
    assert_eq!(loss_a, loss_b);
    // The same ops on the same inputs in the same order: bit for bit.
    assert_same_grads(&a, &b, 0.0, "recompute");
}

#[test]
fn recomputation_keeps_one_layer_of_activations_in_a_deep_model() {
    // gqa_untied's shapes at 12 layers, random weights: the arena holds every layer's activations, or (recompute)
    // each layer's input plus one layer's worth.
    let (small, _) = load("gqa_untied", DType::F32);
    let config = unireward::model::Qwen2Config { num_hidden_layers: 12, ..small.config.clone() };
    let mut state = 1u64;
    let weights = unireward::model::qwen2::Qwen2Weights::from_fn(&config, |_, shape| {
        let values: Vec<f32> = (0..shape.iter().product())
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
            })
            .collect();
        Tensor::from_slice(&values, shape, Device::Cpu)
    })
    .unwrap();
    let model = Qwen2Model::new(config, weights).unwrap();
    let (n, t) = (2usize, 48usize);
    let ids: Vec<i64> = (0..(n * t) as i64).map(|i| (i * 7) % 128).collect();
    let ids = Tensor::from_slice(&ids, &[n, t], Device::Cpu).unwrap();
    let mask = Tensor::from_slice(&vec![1i64; n * t], &[n, t], Device::Cpu).unwrap();
    let report = |recompute| {
        let pass = model.forward(&ids, &mask, ForwardOptions { recompute }).unwrap();
        model.memory_report(&pass).activations
    };
    let (full, lean) = (report(false), report(true));
    println!("12 layers, N·T = {}: activations {full} B, with recomputation {lean} B", n * t);
    assert!(lean * 3 < full, "{lean} vs {full}");
    let (loss_a, a) = loss_and_grads(&model, &ids, &mask, ForwardOptions { recompute: false });
    let (loss_b, b) = loss_and_grads(&model, &ids, &mask, ForwardOptions { recompute: true });
    assert_eq!(loss_a, loss_b);
    assert_same_grads(&a, &b, 0.0, "recompute, 12 layers");
}

/// The summed next-token NLL's gradient on materialised logits, divided by the token count: (softmax − onehot)/n.
fn causal_lm_logits_grad(logits: &Tensor, ids: &[i64], mask: &[i64], t: usize) -> Tensor {
    let vocab = *logits.shape().last().unwrap();
    let l = logits.to_vec::<f32>().unwrap();
    let counted: Vec<usize> = (0..ids.len()).filter(|&i| (i + 1) % t != 0 && mask[i + 1] != 0).collect();
    let mut g = vec![0f32; l.len()];
    for &i in &counted {
        let row = &l[i * vocab..(i + 1) * vocab];
        let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
        for (v, &x) in row.iter().enumerate() {
            let p = (x as f64 - max).exp() / sum - if v as i64 == ids[i + 1] { 1.0 } else { 0.0 };
            g[i * vocab + v] = (p / counted.len() as f64) as f32;
        }
    }
    Tensor::from_slice(&g, logits.shape(), Device::Cpu).unwrap()
}

#[test]
fn materialised_logits_and_the_fused_loss_give_the_same_gradients() {
    for name in ["gqa_untied", "mha_tied"] {
        let (model, r) = load(name, DType::F32);
        let (ids, mask) = batch(&r);
        let (_, fused) = loss_and_grads(&model, &ids, &mask, ForwardOptions::default());
        let pass = model.forward(&ids, &mask, ForwardOptions::default()).unwrap();
        let logits = model.logits(&pass).unwrap();
        let grad = causal_lm_logits_grad(&logits, &r.ids("input_ids"), &r.ids("attention_mask"), ids.shape()[1]);
        let materialised = model.backward_from_logits(pass, &grad).unwrap();
        assert_same_grads(&fused, &materialised, 1e-5, name);
    }
}

/// `causal_lm_loss_into` + `backward_into` over kept buffers (holding the previous step's gradients): the head's
/// gradient goes straight into its buffer — the embedding's when tied, which then gains the embedding's share —
/// and every gradient equals the allocating path's and transformers'.
#[test]
fn the_head_gradient_written_into_kept_buffers_matches_transformers() {
    for name in MODELS {
        let (model, r) = load(name, DType::F32);
        let (ids, mask) = batch(&r);
        let (_, fresh) = loss_and_grads(&model, &ids, &mask, ForwardOptions::default());
        let mut kept = loss_and_grads(&model, &ids, &mask, ForwardOptions::default()).1;
        for step in 0..2 {
            let pass = model.forward(&ids, &mask, ForwardOptions::default()).unwrap();
            let loss = model.causal_lm_loss_into(&pass, &ids, &FusedLinearConfig::default(), &mut kept).unwrap();
            model.backward_into(pass, loss.grads, &mut kept).unwrap();
            assert_same_grads(&kept, &fresh, 1e-6, &format!("{name} step {step}"));
        }
        for (name, g) in kept.weights.named() {
            let err = relative_error(&values(g), r.get(&format!("grad.{name}")), |_| true);
            assert!(err < 1e-4, "{name}: {err:.3e}");
        }
        let pass = model.forward(&ids, &mask, ForwardOptions::default()).unwrap();
        let loss = model.causal_lm_loss_into(&pass, &ids, &FusedLinearConfig::default(), &mut kept).unwrap();
        let err = model.backward(pass, loss.grads).unwrap_err().to_string();
        assert!(err.contains("backward_into"), "{err}");
    }
}

#[test]
fn forward_from_embeddings_equals_forward_from_ids() {
    let (model, r) = load("mha_tied", DType::F32);
    let (ids, mask) = batch(&r);
    let embeds = unireward::ops::embedding::embedding(&model.weights.embed_tokens, &ids).unwrap();
    let from_ids = model.forward(&ids, &mask, ForwardOptions::default()).unwrap();
    let from_embeds = model.forward_embeds(&embeds, &mask, ForwardOptions::default()).unwrap();
    assert_eq!(values(from_ids.hidden()), values(from_embeds.hidden()));
    let loss = model.causal_lm_loss(&from_embeds, &ids, &FusedLinearConfig::default()).unwrap();
    let grads = model.backward(from_embeds, loss.grads).unwrap();
    let err = relative_error(&values(&grads.inputs_embeds), r.get("grad.inputs_embeds"), |_| true);
    assert!(err < 1e-4, "inputs_embeds gradient: {err:.3e}");
}

#[test]
fn bf16_compute_stays_within_its_stated_bound() {
    // The bf16 checkpoint loaded as bf16: every weight exact, activations rounded to 8 bits of mantissa per op.
    let (model, r) = load("mqa_tied_bf16", DType::BF16);
    let (ids, mask) = batch(&r);
    let real = r.ids("attention_mask");
    let vocab = model.config.vocab_size;
    let pass = model.forward(&ids, &mask, ForwardOptions::default()).unwrap();
    let logits = relative_error(&values(&model.logits(&pass).unwrap()), r.get("logits"), |i| real[i / vocab] != 0);
    let loss = model.causal_lm_loss(&pass, &ids, &FusedLinearConfig::default()).unwrap();
    let loss_err = relative_error(&[f64::from(loss.loss)], r.get("loss"), |_| true);
    let grads = model.backward(pass, loss.grads).unwrap();
    let worst_grad = grads
        .weights
        .named()
        .into_iter()
        .map(|(name, g)| relative_error(&values(g), r.get(&format!("grad.{name}")), |_| true))
        .fold(0.0, f64::max);
    println!("bf16: logits {logits:.2e}, loss {loss_err:.2e}, worst gradient {worst_grad:.2e}");
    assert!(logits < 3e-2 && loss_err < 1e-2 && worst_grad < 1e-1, "{logits} {loss_err} {worst_grad}");
}

#[test]
fn bad_batches_are_clear_errors() {
    let (model, _) = load("mha_tied", DType::F32);
    let ids = Tensor::from_slice(&[1i64, 2, 3, 4], &[2, 2], Device::Cpu).unwrap();
    let ok_mask = Tensor::from_slice(&[1i64; 4], &[2, 2], Device::Cpu).unwrap();
    let message = |r: unireward::Result<unireward::model::qwen2::ForwardPass>| r.unwrap_err().to_string();
    let flat = ids.try_clone().unwrap().reshape(&[4]).unwrap();
    assert!(message(model.forward(&flat, &ok_mask, ForwardOptions::default())).contains("`ids`"));
    let short_mask = Tensor::from_slice(&[1i64; 2], &[1, 2], Device::Cpu).unwrap();
    assert!(message(model.forward(&ids, &short_mask, ForwardOptions::default())).contains("`mask`"));
    let float_ids = Tensor::from_slice(&[1f32; 4], &[2, 2], Device::Cpu).unwrap();
    assert!(message(model.forward(&float_ids, &ok_mask, ForwardOptions::default())).contains("`ids`"));
    let out_of_vocab = Tensor::from_slice(&[1i64, 2, 3, 96], &[2, 2], Device::Cpu).unwrap();
    assert!(message(model.forward(&out_of_vocab, &ok_mask, ForwardOptions::default())).contains("96"));
    let t = model.config.max_position_embeddings + 1;
    let (long_ids, long_mask) = (vec![0i64; t], vec![1i64; t]);
    let long = model.forward(
        &Tensor::from_slice(&long_ids, &[1, t], Device::Cpu).unwrap(),
        &Tensor::from_slice(&long_mask, &[1, t], Device::Cpu).unwrap(),
        ForwardOptions::default(),
    );
    assert!(message(long).contains("max_position_embeddings"));
    let wrong_width = Tensor::zeros(&[2, 2, 3], DType::F32, Device::Cpu).unwrap();
    assert!(message(model.forward_embeds(&wrong_width, &ok_mask, ForwardOptions::default())).contains("width"));

    let pass = model.forward(&ids, &ok_mask, ForwardOptions::default()).unwrap();
    let bad = unireward::model::qwen2::OutputGrads {
        hidden: Tensor::zeros(&[2, 3, 16], DType::F32, Device::Cpu).unwrap(),
        lm_head: unireward::model::qwen2::HeadGradient::None,
    };
    assert!(model.backward(pass, bad).unwrap_err().to_string().contains("grad hidden"));
    let pass = model
        .forward(&ids, &Tensor::from_slice(&[1i64, 0, 1, 0], &[2, 2], Device::Cpu).unwrap(), ForwardOptions::default())
        .unwrap();
    let err = model.causal_lm_loss(&pass, &ids, &FusedLinearConfig::default()).unwrap_err().to_string();
    assert!(err.contains("no next token"), "{err}");
}

#[test]
fn a_checkpoint_that_does_not_match_its_config_is_refused_by_name() {
    let dir = std::env::temp_dir().join(format!("unireward-qwen2-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = model_dir("gqa_untied");
    std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    let config = std::fs::read_to_string(src.join("config.json")).unwrap();
    std::fs::write(dir.join("config.json"), config.replace("\"intermediate_size\": 64", "\"intermediate_size\": 65"))
        .unwrap();
    let err = Qwen2Model::load(&dir, DType::F32, Device::Cpu).unwrap_err().to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(err.contains("mlp.gate_proj.weight") && err.contains("65"), "{err}");
    let err = Qwen2Model::load(&src, DType::I32, Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("dtype"), "{err}");
}
