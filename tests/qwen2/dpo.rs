//! A DPO step through the model, as the align stage runs it: policy and frozen reference forwards over
//! [chosen; rejected], completion log-probs through the fused LM head, the DPO loss, and the policy's backward.
//! Checked against the same step through materialised logits and against finite differences of the loss.

use unireward::model::qwen2::{HeadGradient, OutputGrads, Qwen2Gradients};
use unireward::model::{ForwardOptions, Qwen2Model};
use unireward::ops::fused_linear::{
    fused_linear_logprobs, fused_linear_logprobs_backward, FusedLinearConfig, LinearHead,
};
use unireward::ops::logprobs::{sequence_logprobs, sequence_logprobs_backward, LogProbsConfig};
use unireward::ops::preference::{dpo_loss, DpoConfig, PreferenceLogps};
use unireward::{DType, Device, Tensor};

use super::reference::{model_dir, relative_error, values};

const T: usize = 8;

/// [chosen; rejected] for 2 pairs sharing their prompts: ids, mask and completion-only next-token labels.
struct Batch {
    ids: Tensor,
    mask: Tensor,
    labels: Tensor,
}

fn batch() -> Batch {
    // (prompt length, real length) per row: chosen 0, chosen 1, rejected 0, rejected 1.
    let rows = [(3, 8), (2, 6), (3, 7), (2, 8)];
    let prompts = [[11i64, 40, 7], [90, 3, 0]];
    let (mut ids, mut mask, mut labels) = (vec![0i64; 4 * T], vec![0i64; 4 * T], vec![-100i64; 4 * T]);
    for (r, &(prompt, len)) in rows.iter().enumerate() {
        for t in 0..len {
            let id = if t < prompt { prompts[r % 2][t] } else { ((r * 37 + t * 11) % 128) as i64 };
            ids[r * T + t] = id;
            mask[r * T + t] = 1;
            if t >= prompt {
                labels[r * T + t - 1] = id;
            }
        }
    }
    let tensor = |v: &[i64]| Tensor::from_slice(v, &[4, T], Device::Cpu).unwrap();
    Batch { ids: tensor(&ids), mask: tensor(&mask), labels: tensor(&labels) }
}

fn split(logps: &Tensor) -> (Tensor, Tensor) {
    let v = logps.to_vec::<f32>().unwrap();
    (Tensor::from_slice(&v[..2], &[2], Device::Cpu).unwrap(), Tensor::from_slice(&v[2..], &[2], Device::Cpu).unwrap())
}

fn load() -> Qwen2Model {
    Qwen2Model::load(&model_dir("gqa_untied"), DType::F32, Device::Cpu).unwrap()
}

/// Per-sequence completion log-probs of a model over the batch (fused head), with the pass.
fn logps(
    model: &Qwen2Model,
    b: &Batch,
) -> (unireward::model::qwen2::ForwardPass, unireward::ops::logprobs::SequenceLogProbs) {
    let pass = model.forward(&b.ids, &b.mask, ForwardOptions::default()).unwrap();
    let head = LinearHead { hidden: pass.hidden(), weight: model.weights.head(), bias: None };
    let out = fused_linear_logprobs(head, &b.labels, None, &FusedLinearConfig::default()).unwrap();
    (pass, out)
}

/// The DPO loss of the policy against the reference's log-probs, and d loss / d logps [4].
fn dpo(policy_logps: &Tensor, reference_logps: &Tensor) -> (f32, Tensor) {
    let ((pc, pr), (rc, rr)) = (split(policy_logps), split(reference_logps));
    let cfg = DpoConfig { beta: 0.5, ..Default::default() };
    let out = dpo_loss(&PreferenceLogps::new(&pc, &pr).with_reference(&rc, &rr), &cfg).unwrap();
    let grad =
        [out.grad_policy_chosen.to_vec::<f32>().unwrap(), out.grad_policy_rejected.to_vec::<f32>().unwrap()].concat();
    (out.loss, Tensor::from_slice(&grad, &[4], Device::Cpu).unwrap())
}

/// Perturbs the reference model's weights so that policy and reference differ (a nonzero margin).
fn perturbed_reference() -> Qwen2Model {
    let mut reference = load();
    for (i, x) in reference.weights.layers[1].down_proj.as_mut_slice::<f32>().unwrap().iter_mut().enumerate() {
        *x += 0.05 * ((i % 7) as f32 - 3.0);
    }
    reference
}

/// One of the parameters the finite-difference check perturbs.
fn weight<'a>(model: &'a mut Qwen2Model, name: &str) -> &'a mut Tensor {
    match name {
        "lm_head.weight" => model.weights.lm_head.as_mut().unwrap(),
        "model.layers.0.self_attn.q_proj.weight" => &mut model.weights.layers[0].q_proj,
        _ => &mut model.weights.layers[1].up_proj,
    }
}

fn fused_step(policy: &Qwen2Model, reference_logps: &Tensor, b: &Batch) -> (f32, Qwen2Gradients) {
    let (pass, out) = logps(policy, b);
    let (loss, grad_logps) = dpo(&out.logps, reference_logps);
    let head = LinearHead { hidden: pass.hidden(), weight: policy.weights.head(), bias: None };
    let g = fused_linear_logprobs_backward(head, &b.labels, None, &out, &grad_logps, &FusedLinearConfig::default())
        .unwrap();
    let grads = policy
        .backward(pass, OutputGrads { hidden: g.grad_hidden, lm_head: HeadGradient::Tensor(g.grad_weight) })
        .unwrap();
    (loss, grads)
}

#[test]
fn a_dpo_step_through_the_model_matches_materialised_logits_and_finite_differences() {
    let (policy, reference, b) = (load(), perturbed_reference(), batch());
    let reference_logps = logps(&reference, &b).1.logps;
    let (loss, fused) = fused_step(&policy, &reference_logps, &b);
    assert!(loss.is_finite() && (loss - std::f32::consts::LN_2).abs() > 1e-3, "a nonzero margin: loss {loss}");

    // The same step through materialised [4, T, V] logits.
    let pass = policy.forward(&b.ids, &b.mask, ForwardOptions::default()).unwrap();
    let logits = policy.logits(&pass).unwrap();
    let cfg = LogProbsConfig::default();
    let out = sequence_logprobs(&logits, &b.labels, None, &cfg).unwrap();
    let (loss_m, grad_logps) = dpo(&out.logps, &reference_logps);
    // Two f32 paths summing in different orders (the product kernels differ by ISA level: UNIREWARD_CPU_ISA).
    assert!((loss - loss_m).abs() <= 4e-6 * loss_m.abs().max(1.0), "{loss} vs {loss_m}");
    let grad_logits = sequence_logprobs_backward(&logits, &b.labels, None, &out, &grad_logps, &cfg).unwrap();
    let materialised = policy.backward_from_logits(pass, &grad_logits).unwrap();
    for ((name, a), (_, m)) in fused.weights.named().into_iter().zip(materialised.weights.named()) {
        let err = relative_error(&values(a), &values(m), |_| true);
        assert!(err < 1e-5, "{name}: fused vs materialised {err:.3e}");
    }

    // Central differences of the loss at the largest gradient entries of three parameters.
    let loss_at = |model: &Qwen2Model| dpo(&logps(model, &b).1.logps, &reference_logps).0 as f64;
    let mut policy = policy;
    for name in ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.up_proj.weight", "lm_head.weight"] {
        let grad = values(fused.weights.named().into_iter().find(|(n, _)| n == name).unwrap().1);
        let i = (0..grad.len()).max_by(|&a, &b| grad[a].abs().total_cmp(&grad[b].abs())).unwrap();
        let eps = 1e-2f32;
        let original = weight(&mut policy, name).as_slice::<f32>().unwrap()[i];
        weight(&mut policy, name).as_mut_slice::<f32>().unwrap()[i] = original + eps;
        let up = loss_at(&policy);
        weight(&mut policy, name).as_mut_slice::<f32>().unwrap()[i] = original - eps;
        let down = loss_at(&policy);
        weight(&mut policy, name).as_mut_slice::<f32>().unwrap()[i] = original;
        let fd = (up - down) / (2.0 * eps as f64);
        println!("{name}[{i}]: gradient {:.6e}, central difference {fd:.6e}", grad[i]);
        assert!((fd - grad[i]).abs() <= 2e-3 * grad[i].abs() + 1e-5, "{name}[{i}]: {} vs {fd}", grad[i]);
    }
}
