//! Features and every gradient of the fixtures' towers against transformers in float64, in f32 and bf16, with and
//! without recomputation.

use unireward::model::{ForwardOptions, SiglipGradients, SiglipVisionTower};
use unireward::{DType, Device};

use super::fixtures::{load, tensor, CASES};
use super::reference::{relative_error, values, Reference};

/// Worst relative error of the features, every parameter gradient and the pixel gradient against the reference.
pub fn errors(tower: &SiglipVisionTower, r: &Reference, opts: ForwardOptions) -> Vec<(String, f64)> {
    let (dtype, device) = (tower.dtype(), tower.device());
    let pass = tower.forward(&tensor(r, "pixel_values", DType::F32, device), opts).unwrap();
    let mut errs =
        vec![("features".to_string(), relative_error(&values(pass.features()), r.get("features"), |_| true))];
    let grads = tower.backward(pass, &tensor(r, "projection", dtype, device)).unwrap();
    errs.extend(gradient_errors(&grads, r));
    errs
}

fn gradient_errors(grads: &SiglipGradients, r: &Reference) -> Vec<(String, f64)> {
    let named = grads.weights.named();
    let expected = r.tensors_named("grad.").len() - 1;
    assert_eq!(named.len(), expected, "one gradient per parameter the selected layers use");
    let mut errs: Vec<(String, f64)> = named
        .into_iter()
        .map(|(name, g)| {
            let (got, want) = (values(g), r.get(&format!("grad.{name}")));
            let err = match name.strip_suffix("k_proj.bias") {
                // The key bias adds q·b to every score of a query alike, which the softmax cancels: its true
                // gradient is 0 (the reference holds rounding noise), so the error is measured against the scale of
                // the query bias's gradient, of the same shape and layer.
                Some(layer) => {
                    let scale = r.get(&format!("grad.{layer}q_proj.bias")).iter().fold(0.0f64, |m, v| m.max(v.abs()));
                    got.iter().zip(want).fold(0.0f64, |m, (g, w)| m.max((g - w).abs())) / scale
                }
                None => relative_error(&got, want, |_| true),
            };
            (name, err)
        })
        .collect();
    errs.push((
        "pixel_values".into(),
        relative_error(&values(&grads.pixel_values), r.get("grad.pixel_values"), |_| true),
    ));
    errs
}

fn assert_within(case: &str, what: &str, errs: &[(String, f64)], tol: f64) {
    let worst = errs.iter().cloned().fold((String::new(), 0.0), |a, b| if b.1 > a.1 { b } else { a });
    println!("{case} {what}: worst relative error {:.2e} ({}) over {} checks", worst.1, worst.0, errs.len());
    for (name, err) in errs {
        assert!(*err < tol, "{case} {what}: {name} relative error {err:.3e} (tolerance {tol:.0e})");
    }
}

#[test]
fn f32_features_and_every_gradient_match_transformers() {
    for case in CASES {
        let (tower, r) = load(case, DType::F32, Device::Cpu);
        assert_within(case, "f32", &errors(&tower, &r, ForwardOptions::default()), 1e-4);
    }
}

#[test]
fn recomputation_gives_the_same_gradients_with_less_activation_memory() {
    let (tower, r) = load("select_minus2", DType::F32, Device::Cpu);
    let pixels = tensor(&r, "pixel_values", DType::F32, Device::Cpu);
    let grad = tensor(&r, "projection", DType::F32, Device::Cpu);
    let kept = tower.forward(&pixels, ForwardOptions::default()).unwrap();
    let kept_bytes = kept.activation_bytes();
    let a = tower.backward(kept, &grad).unwrap();
    let recomputed = tower.forward(&pixels, ForwardOptions { recompute: true }).unwrap();
    assert!(recomputed.activation_bytes() < kept_bytes, "{} vs {kept_bytes}", recomputed.activation_bytes());
    let b = tower.backward(recomputed, &grad).unwrap();
    for ((name, x), (_, y)) in a.weights.named().into_iter().zip(b.weights.named()) {
        assert_eq!(values(x), values(y), "{name}");
    }
    assert_eq!(values(&a.pixel_values), values(&b.pixel_values));
}

#[test]
fn a_reused_arena_gives_the_same_results_for_a_smaller_batch() {
    // The first pass lays out the arena for two images; the second runs one image in it.
    let (tower, r) = load("ragged_bf16", DType::F32, Device::Cpu);
    let pixels = tensor(&r, "pixel_values", DType::F32, Device::Cpu);
    drop(tower.forward(&pixels, ForwardOptions::default()).unwrap());
    let all = values(&pixels);
    let one = unireward::Tensor::from_f32(
        &all[..all.len() / 2].iter().map(|&v| v as f32).collect::<Vec<_>>(),
        &[1, 3, 23, 23],
        DType::F32,
        Device::Cpu,
    )
    .unwrap();
    let pass = tower.forward(&one, ForwardOptions::default()).unwrap();
    let want = r.get("features");
    let got = values(pass.features());
    assert!(relative_error(&got, &want[..got.len()], |_| true) < 1e-4);
}

#[test]
fn bf16_towers_run_close_to_transformers() {
    // bf16 weights and activations (8 bits of mantissa) through two layers: features within a few per cent of the
    // float64 truth, gradients (sums of many rounded products) within five per cent (they measure under two).
    for case in CASES {
        let (tower, r) = load(case, DType::BF16, Device::Cpu);
        let errs = errors(&tower, &r, ForwardOptions::default());
        assert_within(case, "bf16 features", &errs[..1], 3e-2);
        assert_within(case, "bf16 gradients", &errs[1..], 5e-2);
    }
}
