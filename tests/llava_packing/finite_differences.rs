//! The whole pipeline's gradients against central differences of its own forward, on fresh random inputs: an anyres
//! image down-sampled under anyres_max, two videos on an odd patch grid, a single-tile image, over two padded samples.

use rand::rngs::StdRng;
use rand::Rng;
use unireward::media::select_best_resolution;
use unireward::model::llava::packing::{
    FeatureSelect, Media, PackingConfig, PackingPlan, PlaceholderTokens, UnpadRounding,
};
use unireward::{DType, Device};

use crate::common::{normal, seed, Inputs};

const IMAGE: i64 = 10;
const VIDEO: i64 = 11;

/// Random inputs for `media` under `config` (a side of `side` patches), the placeholders in the first sample.
fn random_inputs(rng: &mut StdRng, config: PackingConfig, media: Vec<Media>, hidden: usize, cv: usize) -> Inputs {
    let side = config.patches_per_side();
    let tiles: usize = media.iter().map(|m| m.tiles()).sum();
    let x_shape = vec![tiles, side * side, cv];
    let plan = PackingPlan::new(&config, &media, [tiles, side * side]).unwrap();
    let text = |rng: &mut StdRng, n: usize| (0..n).map(|_| rng.gen_range(1..IMAGE)).collect::<Vec<i64>>();
    let mut first = text(rng, 2);
    first.extend(std::iter::repeat_n(IMAGE, plan.image_rows()));
    first.extend(text(rng, 3));
    first.extend(std::iter::repeat_n(VIDEO, plan.video_rows()));
    let t = first.len();
    let mut second = text(rng, 5);
    second.resize(t, 0);
    let vocab = 12;
    Inputs {
        x: normal(rng, tiles * side * side * cv),
        x_shape,
        w1: normal(rng, hidden * cv),
        b1: normal(rng, hidden),
        w2: normal(rng, hidden * hidden),
        b2: normal(rng, hidden),
        newline: normal(rng, hidden),
        table: normal(rng, vocab * hidden),
        ids: [first, second].concat(),
        ids_shape: vec![2, t],
        r: normal(rng, 2 * t * hidden),
        vocab,
        hidden,
        tokens: PlaceholderTokens { image: IMAGE, video: VIDEO },
        config,
        media,
    }
}

/// Picks one input vector of [`Inputs`] to perturb.
type Field = fn(&mut Inputs) -> &mut Vec<f64>;

/// The central difference of the loss along one input, perturbed through `field`.
fn central(inputs: &Inputs, field: Field, i: usize, eps: f64) -> f64 {
    let at = |delta: f64| {
        let mut p = inputs.clone();
        field(&mut p)[i] += delta;
        p.loss()
    };
    (at(eps) - at(-eps)) / (2.0 * eps)
}

#[test]
fn gradients_match_central_differences() {
    let mut rng = seed();
    let pinpoints: Vec<(usize, usize)> = [8, 16, 24].iter().flat_map(|&h| [8, 16, 24].map(|w| (h, w))).collect();
    // A tile of 5×5 patches (odd: the video pools to 3×3); the anyres image's grid is unpadded then down-sampled.
    let config = PackingConfig {
        image_size: 10,
        patch_size: 2,
        grid_pinpoints: pinpoints.iter().map(|&(h, w)| (h * 10 / 8, w * 10 / 8)).collect(),
        anyres_max: Some(1),
        feature_select: FeatureSelect::Full,
        unpad_rounding: UnpadRounding::Transformers,
    };
    let size = (rng.gen_range(20..30), rng.gen_range(14..30));
    let best = select_best_resolution(size, &config.grid_pinpoints).unwrap();
    let tiles = 1 + (best.0 / 10) * (best.1 / 10);
    let media = vec![
        Media::Image { size, tiles },
        Media::Video { frames: 2 },
        Media::Image { size: (3, 4), tiles: 1 },
        Media::Video { frames: 1 },
    ];
    println!("image {size:?} on a {best:?} grid: {tiles} tiles");
    let inputs = random_inputs(&mut rng, config, media, 3, 4);
    let out = inputs.run(DType::F32, Device::Cpu);
    let fields: [(&str, Field, &[f64]); 6] = [
        ("x", |p| &mut p.x, &out.grad_x),
        ("w1", |p| &mut p.w1, &out.grad_w1),
        ("b1", |p| &mut p.b1, &out.grad_b1),
        ("w2", |p| &mut p.w2, &out.grad_w2),
        ("b2", |p| &mut p.b2, &out.grad_b2),
        ("newline", |p| &mut p.newline, &out.grad_newline),
    ];
    for (name, field, analytic) in fields {
        let picks: Vec<usize> = if analytic.len() <= 12 {
            (0..analytic.len()).collect()
        } else {
            (0..12).map(|_| rng.gen_range(0..analytic.len())).collect()
        };
        for i in picks {
            let numeric = central(&inputs, field, i, 1e-2);
            let tol = 5e-3 + 1e-2 * analytic[i].abs();
            assert!(
                (numeric - analytic[i]).abs() <= tol,
                "d loss / d {name}[{i}]: analytic {}, numeric {numeric}",
                analytic[i]
            );
        }
    }
}
