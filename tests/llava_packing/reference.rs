//! Every fixture's embeddings and gradients in f32 against transformers' float64.

use unireward::{DType, Device};

use crate::common::{assert_close, Fixture};

const CASES: [&str; 8] =
    ["wide_unpad", "tall_unpad", "downsample", "two_images", "video_even", "video_odd", "text_only", "batch_mixed"];

#[test]
fn f32_matches_transformers_float64() {
    for name in CASES {
        let f = Fixture::load(name);
        let out = f.inputs().run(DType::F32, Device::Cpu);
        for (key, got) in out.named() {
            assert_close(&format!("{name} {key}"), got, &f.f64s(key), 1e-5);
        }
    }
}

#[test]
fn plans_give_transformers_lengths() {
    for name in CASES {
        let f = Fixture::load(name);
        let inputs = f.inputs();
        let plan = unireward::model::llava::packing::PackingPlan::new(
            &inputs.config,
            &inputs.media,
            [inputs.x_shape[0], inputs.x_shape[1]],
        )
        .unwrap();
        let (images, videos) = (f.usizes("image_lengths"), f.usizes("video_lengths"));
        assert_eq!(plan.image_rows(), images.iter().sum::<usize>(), "{name}");
        assert_eq!(plan.video_rows(), videos.iter().sum::<usize>(), "{name}");
    }
}

#[test]
fn placeholder_rows_feed_no_embedding_gradient() {
    // The image and video token ids occur in the batch, but every occurrence is overwritten by features: their
    // embedding rows' gradient is exactly zero (transformers' masked_scatter backward).
    let f = Fixture::load("batch_mixed");
    let inputs = f.inputs();
    let out = inputs.run(DType::F32, Device::Cpu);
    let h = inputs.hidden;
    for id in [inputs.tokens.image as usize, inputs.tokens.video as usize] {
        assert!(inputs.ids.contains(&(id as i64)));
        assert!(out.grad_table[id * h..(id + 1) * h].iter().all(|&g| g == 0.0), "row {id}");
    }
}
