//! Central finite differences of `Σ features · projection` against the backward on a tiny random tower.

use unireward::model::{ForwardOptions, SiglipVisionTower};
use unireward::{DType, Device, Tensor};

use super::fixtures::{random, random_tower, tiny_config};
use super::reference::values;

fn loss(tower: &SiglipVisionTower, pixels: &Tensor, projection: &[f64]) -> f64 {
    let pass = tower.forward(pixels, ForwardOptions::default()).unwrap();
    values(pass.features()).iter().zip(projection).map(|(f, p)| f * p).sum()
}

/// `t` with `delta` added at flat index `i`.
fn nudged(t: &Tensor, i: usize, delta: f32) -> Tensor {
    let mut v = t.to_vec::<f32>().unwrap();
    v[i] += delta;
    Tensor::from_slice(&v, t.shape(), Device::Cpu).unwrap()
}

#[test]
fn gradients_match_finite_differences() {
    let config = tiny_config();
    let tower = random_tower(&config, 2, 7, 0.5);
    let pixels = random(&[2, 3, 10, 10], 8);
    let projection_t = random(&[2, 9, 12], 9);
    let projection = values(&projection_t);
    let pass = tower.forward(&pixels, ForwardOptions::default()).unwrap();
    let grads = tower.backward(pass, &projection_t).unwrap();

    let eps = 1e-2f32;
    let check = |what: &str, analytic: f64, plus: f64, minus: f64| {
        let numeric = (plus - minus) / (2.0 * eps as f64);
        let err = (analytic - numeric).abs();
        assert!(err < 2e-3 + 1e-2 * numeric.abs(), "{what}: backward {analytic:.6} vs finite difference {numeric:.6}");
    };
    // Pixels, including one in the unread last row (gradient zero).
    for i in [0, 37, 2 * 300 - 1 - 15, 9 * 10 + 4] {
        let analytic = values(&grads.pixel_values)[i];
        check(
            &format!("pixel {i}"),
            analytic,
            loss(&tower, &nudged(&pixels, i, eps), &projection),
            loss(&tower, &nudged(&pixels, i, -eps), &projection),
        );
    }
    assert_eq!(values(&grads.pixel_values)[9 * 10 + 4], 0.0, "row 9 is past the last whole patch");

    // A few parameters of every kind, each nudged in a copy of the weights.
    let picks = [
        ("embeddings.patch_embedding.weight", 5),
        ("embeddings.patch_embedding.bias", 3),
        ("embeddings.position_embedding.weight", 40),
        ("encoder.layers.0.self_attn.q_proj.weight", 17),
        ("encoder.layers.0.self_attn.k_proj.bias", 1),
        ("encoder.layers.0.self_attn.v_proj.bias", 7),
        ("encoder.layers.0.self_attn.out_proj.weight", 100),
        ("encoder.layers.1.layer_norm1.weight", 4),
        ("encoder.layers.1.layer_norm1.bias", 2),
        ("encoder.layers.1.mlp.fc1.weight", 33),
        ("encoder.layers.1.mlp.fc2.bias", 11),
        ("encoder.layers.1.layer_norm2.weight", 9),
    ];
    let grad_named = grads.weights.named();
    for (name, i) in picks {
        let analytic = values(grad_named.iter().find(|(n, _)| n == name).unwrap().1)[i];
        let with = |delta: f32| {
            let mut t = 0;
            let weights = unireward::model::SiglipWeights::from_fn(&config, 2, |n, _| {
                let w = tower.weights.tensors()[t];
                t += 1;
                Ok(if n == name { nudged(w, i, delta) } else { w.try_clone()? })
            })
            .unwrap();
            let nudged_tower = SiglipVisionTower::new(config.clone(), weights).unwrap();
            loss(&nudged_tower, &pixels, &projection)
        };
        check(name, analytic, with(eps), with(-eps));
    }
    assert_eq!(tower.dtype(), DType::F32);
}
