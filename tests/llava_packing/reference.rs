//! Every fixture's embeddings and gradients in f32 against transformers' float64.

use unireward::model::llava::packing::{PackingConfig, PackingPlan, UnpadRounding};
use unireward::{DType, Device};

use crate::common::{assert_close, Fixture};

const CASES: [&str; 9] = [
    "wide_unpad",
    "tall_unpad",
    "downsample",
    "two_images",
    "unpad_rounding",
    "video_even",
    "video_odd",
    "text_only",
    "batch_mixed",
];

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
fn bf16_and_f16_storage_stay_near_float64() {
    for name in ["downsample", "batch_mixed"] {
        let f = Fixture::load(name);
        for (dtype, tol) in [(DType::BF16, 5e-2), (DType::F16, 1e-2)] {
            let out = f.inputs().run(dtype, Device::Cpu);
            for (key, got) in out.named() {
                assert_close(&format!("{name} {key} {dtype}"), got, &f.f64s(key), tol);
            }
        }
    }
}

#[test]
fn plans_give_transformers_lengths() {
    for name in CASES {
        let f = Fixture::load(name);
        let inputs = f.inputs();
        let plan = PackingPlan::new(&inputs.config, &inputs.media, [inputs.x_shape[0], inputs.x_shape[1]]).unwrap();
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

#[test]
fn llava_next_rounding_truncates_where_transformers_rounds() {
    // 47 x 188 pixels on a 4 x 12 patch grid: the unpadded height is 2.9999999999999996 in floats.
    let f = Fixture::load("unpad_rounding");
    let inputs = f.inputs();
    let shape = [inputs.x_shape[0], inputs.x_shape[1]];
    let plan = |unpad_rounding| {
        let config = PackingConfig { unpad_rounding, ..inputs.config.clone() };
        PackingPlan::new(&config, &inputs.media, shape).unwrap().image_rows()
    };
    assert_eq!(plan(UnpadRounding::Transformers), f.usizes("image_lengths")[0]);
    assert_eq!(plan(UnpadRounding::LlavaNext), f.usize("llava_next_image_rows"));
    assert_ne!(plan(UnpadRounding::Transformers), plan(UnpadRounding::LlavaNext));
}
