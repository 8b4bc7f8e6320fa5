//! Shared helpers: fixtures, tensors from f64, the whole packing pipeline run forward and backward.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use unireward::model::llava::packing::{
    pack, pack_backward, FeatureSelect, Media, PackingConfig, PackingPlan, PlaceholderTokens, ScatterMap, UnpadRounding,
};
use unireward::model::llava::projector::{Projector, ProjectorWeights};
use unireward::ops::embedding::{embedding, embedding_backward};
use unireward::{DType, Device, Tensor};

/// A fixture of `tests/fixtures/llava_packing/`.
pub struct Fixture(pub Value);

impl Fixture {
    pub fn load(name: &str) -> Fixture {
        let path = format!("{}/tests/fixtures/llava_packing/{name}.json", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        Fixture(serde_json::from_str(&text).unwrap())
    }

    pub fn f64s(&self, key: &str) -> Vec<f64> {
        self.0[key].as_array().unwrap_or_else(|| panic!("no {key}")).iter().map(|v| v.as_f64().unwrap()).collect()
    }

    pub fn usize(&self, key: &str) -> usize {
        self.0[key].as_u64().unwrap_or_else(|| panic!("no {key}")) as usize
    }

    pub fn usizes(&self, key: &str) -> Vec<usize> {
        self.0[key].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect()
    }

    pub fn str(&self, key: &str) -> &str {
        self.0[key].as_str().unwrap_or_else(|| panic!("no {key}"))
    }

    pub fn config(&self) -> PackingConfig {
        let pinpoints = self.0["pinpoints"].as_array().unwrap();
        PackingConfig {
            image_size: self.usize("tile"),
            patch_size: self.usize("patch"),
            grid_pinpoints: pinpoints
                .iter()
                .map(|p| (p[0].as_u64().unwrap() as usize, p[1].as_u64().unwrap() as usize))
                .collect(),
            anyres_max: PackingConfig::parse_anyres_max(self.str("aspect")).unwrap(),
            feature_select: FeatureSelect::from_name(self.str("select")).unwrap(),
            unpad_rounding: UnpadRounding::Transformers,
        }
    }

    pub fn media(&self) -> Vec<Media> {
        let list = self.0["media"].as_array().unwrap();
        list.iter()
            .map(|m| {
                let tiles = m["tiles"].as_u64().unwrap() as usize;
                match m["kind"].as_str().unwrap() {
                    "image" => {
                        let s = m["size"].as_array().unwrap();
                        let size = (s[0].as_u64().unwrap() as usize, s[1].as_u64().unwrap() as usize);
                        Media::Image { size, tiles }
                    }
                    _ => Media::Video { frames: tiles },
                }
            })
            .collect()
    }

    /// The pipeline's inputs as f64.
    pub fn inputs(&self) -> Inputs {
        let ids = self.f64s("ids").into_iter().map(|v| v as i64).collect();
        Inputs {
            config: self.config(),
            media: self.media(),
            x_shape: self.usizes("x_shape"),
            x: self.f64s("x"),
            w1: self.f64s("w1"),
            b1: self.f64s("b1"),
            w2: self.f64s("w2"),
            b2: self.f64s("b2"),
            newline: self.f64s("newline"),
            table: self.f64s("table"),
            ids,
            ids_shape: self.usizes("ids_shape"),
            r: self.f64s("r"),
            vocab: self.usize("vocab"),
            hidden: self.usize("hidden"),
            tokens: PlaceholderTokens {
                image: self.usize("image_token") as i64,
                video: self.usize("video_token") as i64,
            },
        }
    }
}

pub fn seed() -> StdRng {
    let seed = rand::random::<u64>();
    println!("seed {seed}");
    StdRng::seed_from_u64(seed)
}

pub fn normal(rng: &mut StdRng, len: usize) -> Vec<f64> {
    (0..len).map(|_| (0..4).map(|_| rng.gen_range(-1.0..1.0)).sum::<f64>() * 0.866).collect()
}

pub fn tensor(data: &[f64], shape: &[usize], dtype: DType, device: Device) -> Tensor {
    let f: Vec<f32> = data.iter().map(|&v| v as f32).collect();
    Tensor::from_f32(&f, shape, dtype, device).unwrap()
}

pub fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap().into_iter().map(f64::from).collect()
}

/// `|got − want| ≤ tol · max|want|` element-wise (`tol` relative to the tensor's scale), NaN where `want` is NaN.
pub fn assert_close(name: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{name}: {} values, expected {}", got.len(), want.len());
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_nan() { g.is_nan() } else { (g - w).abs() <= tol * scale };
        assert!(ok, "{name}[{i}]: got {g}, expected {w} (scale {scale}, tolerance {tol})");
    }
}

/// Everything the pipeline takes, as f64.
#[derive(Clone)]
pub struct Inputs {
    pub config: PackingConfig,
    pub media: Vec<Media>,
    pub x_shape: Vec<usize>,
    pub x: Vec<f64>,
    pub w1: Vec<f64>,
    pub b1: Vec<f64>,
    pub w2: Vec<f64>,
    pub b2: Vec<f64>,
    pub newline: Vec<f64>,
    pub table: Vec<f64>,
    pub ids: Vec<i64>,
    pub ids_shape: Vec<usize>,
    /// The loss is `Σ r · embeddings`.
    pub r: Vec<f64>,
    pub vocab: usize,
    pub hidden: usize,
    pub tokens: PlaceholderTokens,
}

/// The pipeline's outputs as f64.
pub struct Outputs {
    pub embeds: Vec<f64>,
    pub grad_x: Vec<f64>,
    pub grad_w1: Vec<f64>,
    pub grad_b1: Vec<f64>,
    pub grad_w2: Vec<f64>,
    pub grad_b2: Vec<f64>,
    pub grad_newline: Vec<f64>,
    pub grad_table: Vec<f64>,
}

impl Outputs {
    pub fn named(&self) -> [(&'static str, &[f64]); 8] {
        [
            ("embeds", &self.embeds),
            ("grad_x", &self.grad_x),
            ("grad_w1", &self.grad_w1),
            ("grad_b1", &self.grad_b1),
            ("grad_w2", &self.grad_w2),
            ("grad_b2", &self.grad_b2),
            ("grad_newline", &self.grad_newline),
            ("grad_table", &self.grad_table),
        ]
    }
}

impl Inputs {
    /// Projector, packing, token embeddings with the features scattered in; then the backward of `Σ r · embeddings`
    /// down to every input.
    pub fn run(&self, dtype: DType, device: Device) -> Outputs {
        let t = |v: &[f64], shape: &[usize]| tensor(v, shape, dtype, device);
        let (h, cv) = (self.hidden, self.x_shape[2]);
        let weights = ProjectorWeights {
            linear_1: (t(&self.w1, &[h, cv]), t(&self.b1, &[h])),
            linear_2: (t(&self.w2, &[h, h]), t(&self.b2, &[h])),
        };
        let projector = Projector::new(weights, "gelu").unwrap();
        let x = t(&self.x, &self.x_shape);
        let (y, saved) = projector.forward(&x).unwrap();
        let plan = PackingPlan::new(&self.config, &self.media, [self.x_shape[0], self.x_shape[1]]).unwrap();
        let newline = t(&self.newline, &[h]);
        let packed = pack(&plan, &y, &newline).unwrap();
        let ids = Tensor::from_slice(&self.ids, &self.ids_shape, Device::Cpu).unwrap().to_device(device).unwrap();
        let map = ScatterMap::new(&ids, self.tokens, &plan).unwrap();
        let mut embeds = embedding(&t(&self.table, &[self.vocab, h]), &ids).unwrap();
        map.scatter(&packed, &mut embeds).unwrap();

        let mut grad_embeds = t(&self.r, embeds.shape());
        let grad_packed = map.backward(&mut grad_embeds).unwrap();
        let grad_table = embedding_backward(&grad_embeds, &ids, self.vocab).unwrap();
        let grads = pack_backward(&plan, &grad_packed).unwrap();
        let p = projector.backward(&grads.features, &x, &saved).unwrap();
        Outputs {
            embeds: values(&embeds),
            grad_x: values(&p.grad_x),
            grad_w1: values(&p.linear_1.0),
            grad_b1: values(&p.linear_1.1),
            grad_w2: values(&p.linear_2.0),
            grad_b2: values(&p.linear_2.1),
            grad_newline: values(&grads.newline),
            grad_table: values(&grad_table),
        }
    }

    /// `Σ r · embeddings` of the forward alone.
    pub fn loss(&self) -> f64 {
        let out = self.run(DType::F32, Device::Cpu);
        out.embeds.iter().zip(&self.r).map(|(e, r)| e * r).sum()
    }
}
