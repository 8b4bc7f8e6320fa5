//! The tower on CUDA against the CPU and transformers (run by scripts/gpu_check.sh).

use unireward::model::{ForwardOptions, SiglipVisionConfig, SiglipVisionTower, SiglipWeights};
use unireward::{DType, Device, Tensor};

use super::fixtures::{load, random, random_tower, CASES};
use super::reference::{relative_error, values};
use super::tower::errors;

/// Features, every parameter gradient and the pixel gradient of one pass.
fn step(tower: &SiglipVisionTower, pixels: &Tensor, grad: &Tensor, recompute: bool) -> Vec<(String, Vec<f64>)> {
    let pass = tower.forward(pixels, ForwardOptions { recompute }).unwrap();
    let mut out = vec![("features".to_string(), values(pass.features()))];
    let grads =
        tower.backward(pass, &grad.to_dtype(tower.dtype()).unwrap().to_device(tower.device()).unwrap()).unwrap();
    out.extend(grads.weights.named().into_iter().map(|(n, g)| (n, values(g))));
    out.push(("pixel_values".into(), values(&grads.pixel_values)));
    out
}

/// `tower`'s weights in `dtype` on `device`.
fn moved(tower: &SiglipVisionTower, dtype: DType, device: Device) -> SiglipVisionTower {
    let mut t = tower.weights.tensors().into_iter();
    let layers = tower.layers();
    let weights =
        SiglipWeights::from_fn(&tower.config, layers, |_, _| t.next().unwrap().to_dtype(dtype)?.to_device(device))
            .unwrap();
    SiglipVisionTower::new(tower.config.clone(), weights).unwrap()
}

#[test]
#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
fn cuda_fixtures_match_transformers() {
    for case in CASES {
        let (tower, r) = load(case, DType::F32, Device::Cuda(0));
        for recompute in [false, true] {
            for (what, err) in errors(&tower, &r, ForwardOptions { recompute }) {
                assert!(err < 1e-4, "{case} recompute={recompute}: {what} CUDA vs transformers {err:.3e}");
            }
        }
    }
}

#[test]
#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
fn cuda_matches_cpu_at_head_dim_72() {
    // so400m's head dimension (72) and a ragged patch grid (40 = 5·7 + 5) on a small tower.
    let config = SiglipVisionConfig {
        hidden_size: 144,
        intermediate_size: 100,
        num_hidden_layers: 3,
        num_attention_heads: 2,
        num_channels: 3,
        image_size: 40,
        patch_size: 7,
        layer_norm_eps: 1e-6,
        hidden_act: "gelu_pytorch_tanh".into(),
    };
    let tower = random_tower(&config, 2, 11, 0.2);
    let pixels = random(&[3, 3, 40, 40], 12);
    let grad = random(&[3, 25, 144], 13);
    let want = step(&tower, &pixels, &grad, false);
    for (dtype, tol) in [(DType::F32, 1e-4), (DType::BF16, 1e-1)] {
        let cpu = moved(&tower, dtype, Device::Cpu);
        let gpu = moved(&tower, dtype, Device::Cuda(0));
        let reference = if dtype == DType::F32 { want.clone() } else { step(&cpu, &pixels, &grad, false) };
        for recompute in [false, true] {
            for ((what, got), (_, want)) in step(&gpu, &pixels, &grad, recompute).iter().zip(&reference) {
                let err = relative_error(got, want, |_| true);
                assert!(err < tol, "{dtype:?} recompute={recompute}: {what} CUDA vs CPU {err:.3e}");
            }
        }
    }
}
