//! Bad input gives an error naming what is wrong, before anything is written; nothing panics.

use unireward::model::llava::packing::{
    pack, pack_backward, FeatureSelect, Media, PackingConfig, PackingPlan, PlaceholderTokens, ScatterMap, UnpadRounding,
};
use unireward::model::llava::projector::{Projector, ProjectorActivations, ProjectorWeights};
use unireward::{DType, Device, Tensor};

use crate::common::{tensor, values};

fn config() -> PackingConfig {
    PackingConfig {
        image_size: 8,
        patch_size: 2,
        grid_pinpoints: vec![(8, 16), (16, 8), (16, 16)],
        anyres_max: Some(9),
        feature_select: FeatureSelect::Full,
        unpad_rounding: UnpadRounding::Transformers,
    }
}

fn err<T: std::fmt::Debug>(r: unireward::Result<T>) -> String {
    r.unwrap_err().to_string()
}

fn zeros(shape: &[usize]) -> Tensor {
    Tensor::zeros(shape, DType::F32, Device::Cpu).unwrap()
}

#[test]
fn plan_errors_name_the_item_and_the_counts() {
    let c = config();
    // (5, 12) takes the 8x16 grid: 1 + 2 tiles.
    let image = |tiles| Media::Image { size: (5, 12), tiles };
    let e = err(PackingPlan::new(&c, &[image(3)], [4, 16]));
    assert!(e.contains("3 tiles") && e.contains("4 tiles"), "{e}");
    let e = err(PackingPlan::new(&c, &[image(4)], [4, 16]));
    assert!(e.contains("1x2 tiles") && e.contains("has 4 tiles"), "{e}");
    let e = err(PackingPlan::new(&c, &[Media::Image { size: (0, 12), tiles: 3 }], [3, 16]));
    assert!(e.contains("size 0x12"), "{e}");
    let e = err(PackingPlan::new(&c, &[Media::Image { size: (5, 0), tiles: 1 }], [1, 16]));
    assert!(e.contains("size 5x0"), "{e}");
    let huge = usize::MAX / 2;
    let e =
        err(PackingPlan::new(&c, &[Media::Video { frames: 1 }, Media::Image { size: (huge, 3), tiles: 3 }], [4, 16]));
    assert!(e.contains("image 1") && e.contains(&format!("{huge}x3")), "{e}");
    let e = err(PackingPlan::new(&PackingConfig { grid_pinpoints: vec![(8, 0)], ..c.clone() }, &[], [0, 16]));
    assert!(e.contains("pinpoint 8x0"), "{e}");
    let e = err(PackingPlan::new(&PackingConfig { image_size: 1 << 20, ..c.clone() }, &[], [0, 16]));
    assert!(e.contains("image_size"), "{e}");
    // A huge anyres_max never down-samples (and does not overflow): the 4x8 grid unpads to 3 rows, cut (4 − 3) / 2 = 0
    // from each end, so all 4 rows of 8 and a newline each follow the 16 base rows.
    let big = PackingConfig { anyres_max: Some(usize::MAX), ..c.clone() };
    assert_eq!(PackingPlan::new(&big, &[image(3)], [3, 16]).unwrap().image_rows(), 16 + 4 * 9);
    let e = err(PackingPlan::new(&c, &[image(3)], [3, 15]));
    assert!(e.contains("15 features") && e.contains("4x4"), "{e}");
    let e = err(PackingPlan::new(&c, &[Media::Video { frames: 2 }], [2, 17]));
    assert!(e.contains("video 0") && e.contains("17 features"), "{e}");
    let e = err(PackingPlan::new(&c, &[Media::Video { frames: 0 }], [0, 16]));
    assert!(e.contains("0 frames"), "{e}");
    let e = err(PackingPlan::new(&PackingConfig { patch_size: 0, ..c.clone() }, &[], [0, 16]));
    assert!(e.contains("patch_size"), "{e}");
    let e = err(PackingPlan::new(&PackingConfig { grid_pinpoints: vec![], ..c.clone() }, &[image(3)], [3, 16]));
    assert!(e.contains("no grid pinpoints"), "{e}");
    let d = PackingConfig { feature_select: FeatureSelect::Default, ..c };
    let e = err(PackingPlan::new(&d, &[Media::Image { size: (4, 4), tiles: 1 }], [1, 1]));
    assert!(e.contains("none left"), "{e}");
}

#[test]
fn pack_checks_shapes() {
    let plan = PackingPlan::new(&config(), &[Media::Image { size: (5, 12), tiles: 3 }], [3, 16]).unwrap();
    let e = err(pack(&plan, &zeros(&[4, 16, 3]), &zeros(&[3])));
    assert!(e.contains("[4, 16, 3]") && e.contains("[3, 16]"), "{e}");
    let e = err(pack(&plan, &zeros(&[3, 16, 3]), &zeros(&[4])));
    assert!(e.contains("image_newline"), "{e}");
    let e = err(pack(&plan, &zeros(&[48, 3]), &zeros(&[3])));
    assert!(e.contains("[tiles, rows, C]"), "{e}");
    let e = err(pack_backward(&plan, &zeros(&[plan.rows() + 1, 3])));
    assert!(e.contains(&format!("{} rows", plan.rows() + 1)), "{e}");
}

#[test]
fn placeholder_count_mismatch_names_the_counts() {
    let plan = PackingPlan::new(&config(), &[Media::Image { size: (4, 4), tiles: 1 }], [1, 16]).unwrap();
    // 16 features + 1 newline = 17 rows; 16 image tokens given.
    let mut ids = vec![10i64; 16];
    ids.extend([1, 2, 3]);
    let ids = Tensor::from_slice(&ids, &[1, 19], Device::Cpu).unwrap();
    let tokens = PlaceholderTokens { image: 10, video: 11 };
    let e = err(ScatterMap::new(&ids, tokens, &plan));
    assert!(e.contains("16 image placeholder tokens (id 10)") && e.contains("17 rows"), "{e}");
    let ids17 = Tensor::from_slice(&[vec![10i64; 17], vec![11]].concat(), &[1, 18], Device::Cpu).unwrap();
    let e = err(ScatterMap::new(&ids17, tokens, &plan));
    assert!(e.contains("1 video placeholder tokens (id 11)") && e.contains("0 rows"), "{e}");
    let e = err(ScatterMap::new(&ids17, PlaceholderTokens { image: 10, video: 10 }, &plan));
    assert!(e.contains("both 10"), "{e}");
    let ok = Tensor::from_slice(&[10i64; 17], &[1, 17], Device::Cpu).unwrap();
    let map = ScatterMap::new(&ok, tokens, &plan).unwrap();
    let mut embeds = zeros(&[1, 18, 3]);
    let e = err(map.scatter(&zeros(&[17, 3]), &mut embeds));
    assert!(e.contains("17 tokens"), "{e}");
    let mut embeds = zeros(&[1, 17, 3]);
    let e = err(map.scatter(&zeros(&[16, 3]), &mut embeds));
    assert!(e.contains("packed"), "{e}");
    let e = err(ScatterMap::new(&zeros(&[1, 17]), tokens, &plan));
    assert!(e.contains("ids"), "{e}");
}

#[test]
fn projector_checks_weights() {
    let w = |s: &[usize]| zeros(s);
    let good = || ProjectorWeights { linear_1: (w(&[3, 4]), w(&[3])), linear_2: (w(&[3, 3]), w(&[3])) };
    assert!(Projector::new(good(), "gelu").is_ok());
    let e = err(Projector::new(good(), "relu"));
    assert!(e.contains("relu"), "{e}");
    let e = err(Projector::new(ProjectorWeights { linear_2: (w(&[3, 4]), w(&[3])), ..good() }, "gelu"));
    assert!(e.contains("linear_2.weight") && e.contains("[3, 3]"), "{e}");
    let e = err(Projector::new(ProjectorWeights { linear_1: (w(&[3, 4]), w(&[4])), ..good() }, "gelu"));
    assert!(e.contains("linear_1.bias"), "{e}");
    let bf = Tensor::zeros(&[3], DType::BF16, Device::Cpu).unwrap();
    let e = err(Projector::new(ProjectorWeights { linear_2: (w(&[3, 3]), bf), ..good() }, "gelu"));
    assert!(e.contains("linear_2.bias") && e.contains("bf16"), "{e}");
    let p = Projector::new(good(), "gelu_pytorch_tanh").unwrap();
    let e = err(p.forward(&zeros(&[2, 5])));
    assert!(e.contains("4 features per row") && e.contains("[2, 5]"), "{e}");
    // No rows: an empty output and zero parameter gradients.
    let x = zeros(&[0, 7, 4]);
    let (y, saved) = p.forward(&x).unwrap();
    assert_eq!(y.shape(), &[0, 7, 3]);
    let g = p.backward(&y, &x, &saved).unwrap();
    assert_eq!((g.grad_x.shape(), values(&g.linear_1.0)), (&[0usize, 7, 4][..], vec![0.0; 12]));
}

#[test]
fn nan_in_features_shows_in_the_packed_rows() {
    let plan = PackingPlan::new(&config(), &[Media::Video { frames: 1 }], [1, 16]).unwrap();
    let mut x = vec![1.0; 16 * 2];
    x[0] = f64::NAN;
    let packed = pack(&plan, &tensor(&x, &[1, 16, 2], DType::F32, Device::Cpu), &zeros(&[2])).unwrap();
    let v = values(&packed);
    assert!(v[0].is_nan(), "{v:?}");
    assert!(v[v.len() - 2..].iter().all(|&n| n == 0.0), "the newline row: {v:?}");
}

#[test]
fn into_variants_overwrite_garbage() {
    let c = PackingConfig { anyres_max: Some(1), ..config() };
    // (13, 15) takes the 16x16 grid: 1 + 4 tiles, 8x8 patches, down-sampled under anyres_max_1.
    let media = [Media::Image { size: (13, 15), tiles: 5 }, Media::Video { frames: 2 }];
    let plan = PackingPlan::new(&c, &media, [7, 16]).unwrap();
    let x: Vec<f64> = (0..7 * 16 * 2).map(|i| (i as f64 * 0.37).sin()).collect();
    let features = tensor(&x, &[7, 16, 2], DType::F32, Device::Cpu);
    let newline = tensor(&[0.5, -2.0], &[2], DType::F32, Device::Cpu);
    let packed = pack(&plan, &features, &newline).unwrap();
    let mut into = tensor(&vec![f64::NAN; plan.rows() * 2], &[plan.rows(), 2], DType::F32, Device::Cpu);
    unireward::model::llava::packing::pack_into(&plan, &features, &newline, &mut into).unwrap();
    assert_eq!(values(&into), values(&packed));
    let g: Vec<f64> = (0..plan.rows() * 2).map(|i| (i as f64 * 0.11).cos()).collect();
    let g = tensor(&g, &[plan.rows(), 2], DType::F32, Device::Cpu);
    let grads = pack_backward(&plan, &g).unwrap();
    let mut gf = tensor(&vec![f64::NAN; 7 * 16 * 2], &[7, 16, 2], DType::F32, Device::Cpu);
    let mut gn = tensor(&[f64::NAN; 2], &[2], DType::F32, Device::Cpu);
    unireward::model::llava::packing::pack_backward_into(&plan, &g, &mut gf, &mut gn).unwrap();
    assert_eq!(values(&gf), values(&grads.features));
    assert_eq!(values(&gn), values(&grads.newline));
    let mut wrong = zeros(&[plan.rows() + 1, 2]);
    let e = err(unireward::model::llava::packing::pack_into(&plan, &features, &newline, &mut wrong));
    assert!(e.contains("packed"), "{e}");
}

#[test]
fn scatter_and_projector_into_variants_overwrite_garbage_and_refuse_wrong_buffers() {
    let nan = |shape: &[usize]| tensor(&vec![f64::NAN; shape.iter().product()], shape, DType::F32, Device::Cpu);
    let noise = |shape: &[usize], k: f64| {
        let v: Vec<f64> = (0..shape.iter().product()).map(|i| (i as f64 * k).sin()).collect();
        tensor(&v, shape, DType::F32, Device::Cpu)
    };
    // The scatter's backward: a video frame's packed rows at the placeholders between 2 tokens and 1.
    let plan = PackingPlan::new(&config(), &[Media::Video { frames: 1 }], [1, 16]).unwrap();
    let rows = plan.rows();
    let ids = Tensor::from_slice(&[vec![3i64; 2], vec![11; rows], vec![3]].concat(), &[1, rows + 3], Device::Cpu);
    let map = ScatterMap::new(&ids.unwrap(), PlaceholderTokens { image: 10, video: 11 }, &plan).unwrap();
    let grad = noise(&[1, rows + 3, 3], 0.7);
    let (mut fresh_embeds, mut into_embeds) = (grad.try_clone().unwrap(), grad.try_clone().unwrap());
    let fresh = map.backward(&mut fresh_embeds).unwrap();
    let mut into = nan(&[rows, 3]);
    map.backward_into(&mut into_embeds, &mut into).unwrap();
    assert_eq!((values(&into), values(&into_embeds)), (values(&fresh), values(&fresh_embeds)));
    let e = err(map.backward_into(&mut grad.try_clone().unwrap(), &mut zeros(&[rows + 1, 3])));
    assert!(e.contains("grad_packed"), "{e}");

    // The projector's forward into views and its backward through given scratch.
    let w = ProjectorWeights {
        linear_1: (noise(&[3, 4], 0.3), noise(&[3], 0.5)),
        linear_2: (noise(&[3, 3], 0.9), noise(&[3], 1.1)),
    };
    let p = Projector::new(w, "gelu").unwrap();
    let x = noise(&[2, 5, 4], 0.13);
    let (y, saved) = p.forward(&x).unwrap();
    let mut into_saved = ProjectorActivations { pre_activation: nan(&[2, 5, 3]), activation: nan(&[2, 5, 3]) };
    let mut into_y = nan(&[2, 5, 3]);
    p.forward_into(&x, &mut into_saved, &mut into_y).unwrap();
    assert_eq!(values(&into_y), values(&y));
    assert_eq!(values(&into_saved.pre_activation), values(&saved.pre_activation));
    assert_eq!(values(&into_saved.activation), values(&saved.activation));
    let e = err(p.forward_into(&zeros(&[0, 4]), &mut into_saved, &mut into_y));
    assert!(e.contains("no rows"), "{e}");

    let grad_y = noise(&[2, 5, 3], 0.29);
    let want = p.backward(&grad_y, &x, &saved).unwrap();
    let params = || [(nan(&[3, 4]), nan(&[3])), (nan(&[3, 3]), nan(&[3]))];
    let (mut grad_x, mut got) = (nan(&[2, 5, 4]), params());
    let mut scratch = ProjectorActivations { pre_activation: nan(&[2, 5, 3]), activation: nan(&[2, 5, 3]) };
    p.backward_into(&grad_y, &x, &saved, &mut grad_x, &mut got, Some(&mut scratch)).unwrap();
    assert_eq!(values(&grad_x), values(&want.grad_x));
    assert_eq!((values(&got[0].0), values(&got[1].1)), (values(&want.linear_1.0), values(&want.linear_2.1)));
    let mut wrong = ProjectorActivations { pre_activation: zeros(&[2, 5, 3]), activation: zeros(&[10, 3]) };
    let mut untouched = params();
    let e = err(p.backward_into(&grad_y, &x, &saved, &mut nan(&[2, 5, 4]), &mut untouched, Some(&mut wrong)));
    assert!(e.contains("activation's gradient scratch"), "{e}");
    assert!(values(&untouched[0].0).iter().all(|v| v.is_nan()), "nothing is written before the check");
}
