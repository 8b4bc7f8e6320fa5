//! The whole LLaVA-OneVision model (tower → projector → packing → Qwen2) against transformers' float64 reference
//! (`tests/reference/llava_onevision_model.py`): logits, loss and every gradient of the padded five-row batch, from
//! both checkpoint layouts; each row alone against the batch; bf16 storage; kept gradient buffers; bad input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use unireward::judge::GenerationConfig;
use unireward::model::llava::config::{LLAVA_IMAGE_PLACEHOLDER, LLAVA_VIDEO_PLACEHOLDER};
use unireward::model::llava::{LlavaBatch, LlavaGradients, LlavaLayout, LlavaOnevisionModel, MediaInput};
use unireward::model::{save_safetensors, ForwardOptions, WeightStore};
use unireward::ops::fused_linear::FusedLinearConfig;
use unireward::{DType, Device, Tensor};

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llava").join(path)
}

/// The reference's tensors as (shape, f64 values).
fn reference() -> BTreeMap<String, (Vec<usize>, Vec<f64>)> {
    let bytes = std::fs::read(fixture("reference.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            let data = view.data();
            let values: Vec<f64> = match view.dtype() {
                Dtype::F32 => data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64).collect(),
                Dtype::F64 => data.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect(),
                Dtype::I64 => data.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64).collect(),
                other => panic!("{name}: unexpected {other:?}"),
            };
            (name, (view.shape().to_vec(), values))
        })
        .collect()
}

/// The reference batch's inputs, with the placeholders of `layout`.
struct Inputs {
    ids: Vec<i64>,
    mask: Vec<i64>,
    shape: [usize; 2],
    /// Each image's tiles and original size, then the video's frames.
    images: Vec<(Tensor, (usize, usize))>,
    video: Tensor,
}

const HF_IMAGE: i64 = 90;
const HF_VIDEO: i64 = 91;

impl Inputs {
    fn new(r: &BTreeMap<String, (Vec<usize>, Vec<f64>)>, layout: LlavaLayout) -> Inputs {
        let (shape, ids) = &r["input_ids"];
        let (image, video) = match layout {
            LlavaLayout::LlavaQwen => (LLAVA_IMAGE_PLACEHOLDER, LLAVA_VIDEO_PLACEHOLDER),
            _ => (HF_IMAGE, HF_VIDEO),
        };
        let ids = ids
            .iter()
            .map(|&v| match v as i64 {
                HF_IMAGE => image,
                HF_VIDEO => video,
                id => id,
            })
            .collect();
        let mask = r["attention_mask"].1.iter().map(|&v| v as i64).collect();
        let (tiles_shape, tiles) = &r["pixel_values"];
        let tile: usize = tiles_shape[1..].iter().product();
        let sizes = &r["image_sizes"].1;
        let mut start = 0;
        let images = r["image_tiles"]
            .1
            .iter()
            .enumerate()
            .map(|(i, &count)| {
                let count = count as usize;
                let values: Vec<f32> = tiles[start * tile..(start + count) * tile].iter().map(|&v| v as f32).collect();
                start += count;
                let mut shape = tiles_shape.clone();
                shape[0] = count;
                let t = Tensor::from_slice(&values, &shape, Device::Cpu).unwrap();
                (t, (sizes[2 * i] as usize, sizes[2 * i + 1] as usize))
            })
            .collect();
        let (video_shape, video) = &r["pixel_values_videos"];
        let frames: Vec<f32> = video.iter().map(|&v| v as f32).collect();
        let video = Tensor::from_slice(&frames, &video_shape[1..], Device::Cpu).unwrap();
        Inputs { ids, mask, shape: [shape[0], shape[1]], images, video }
    }

    fn media(&self) -> Vec<MediaInput<'_>> {
        let mut media: Vec<MediaInput<'_>> =
            self.images.iter().map(|(pixel_values, size)| MediaInput::Image { pixel_values, size: *size }).collect();
        media.push(MediaInput::Video { frames: &self.video });
        media
    }

    /// The `[·, vocab]` rows of `all` (`[N,T,vocab]`) at real (unpadded) tokens: padding's logits are unspecified.
    fn real_rows(&self, all: &[f64], vocab: usize) -> Vec<f64> {
        let real = self.mask.iter().enumerate().filter(|(_, &m)| m != 0).map(|(i, _)| i);
        real.flat_map(|i| all[i * vocab..(i + 1) * vocab].to_vec()).collect()
    }

    fn tensors(&self) -> (Tensor, Tensor) {
        let ids = Tensor::from_slice(&self.ids, &self.shape, Device::Cpu).unwrap();
        let mask = Tensor::from_slice(&self.mask, &self.shape, Device::Cpu).unwrap();
        (ids, mask)
    }
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap().into_iter().map(f64::from).collect()
}

/// max |got − want| / max |want|.
fn relative(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-12);
    got.iter().zip(want).fold(0.0f64, |m, (g, w)| m.max((g - w).abs())) / scale
}

fn layout_dir(layout: LlavaLayout) -> &'static str {
    match layout {
        LlavaLayout::LlavaQwen => "llava_qwen",
        _ => "hf",
    }
}

/// Logits of the real tokens, loss and every gradient of the reference batch, within `tol` relative.
fn check_against_reference(dir: &str, device: Device, recompute: bool, tol: f64) {
    let (r, dtype) = (reference(), DType::F32);
    let model = LlavaOnevisionModel::load(&fixture(dir), dtype, device).unwrap();
    let inputs = Inputs::new(&r, model.layout);
    let (ids, mask) = inputs.tensors();
    let media = inputs.media();
    let batch = LlavaBatch { ids: &ids, mask: &mask, media: &media };
    let pass = model.forward(&batch, ForwardOptions { recompute }).unwrap();

    let logits = values(&model.logits(&pass).unwrap());
    let (logits_shape, want_logits) = &r["logits"];
    let vocab = logits_shape[2];
    let real: Vec<usize> = inputs.mask.iter().enumerate().filter(|(_, &m)| m != 0).map(|(i, _)| i).collect();
    let pick =
        |all: &[f64]| -> Vec<f64> { real.iter().flat_map(|&i| all[i * vocab..(i + 1) * vocab].to_vec()).collect() };
    let err = relative(&pick(&logits), &pick(want_logits));
    assert!(err < tol, "{dir} {device} recompute={recompute}: logits relative error {err:.3e}");

    let mut grads = model.zero_gradients().unwrap();
    let loss = model.causal_lm_loss_into(&pass, &FusedLinearConfig::default(), &mut grads).unwrap();
    let want_loss = r["loss"].1[0];
    let err = (loss.loss as f64 - want_loss).abs() / want_loss.abs();
    assert!(err < tol, "{dir} {device}: loss {} vs {want_loss} ({err:.3e})", loss.loss);
    model.backward_into(pass, loss.grads, &mut grads).unwrap();

    let mut seen = 0;
    for (name, grad) in model.named_gradients(&grads) {
        let hf = model.layout.rename(&name, LlavaLayout::Hf).unwrap_or_else(|| panic!("{name} has no HF name"));
        let (shape, want) = r.get(&format!("grad.{hf}")).unwrap_or_else(|| panic!("no reference gradient for {hf}"));
        assert_eq!(grad.shape(), shape.as_slice(), "{name}");
        // A key bias's gradient is zero in exact arithmetic (without rotary positions, softmax ignores a shift shared by every key): both are
        // rounding noise, compared absolutely.
        let err = if name.contains("vision_model") && name.contains("k_proj.bias") {
            values(grad).iter().chain(want).fold(0.0f64, |m, v| m.max(v.abs()))
        } else {
            relative(&values(grad), want)
        };
        assert!(err < tol, "{dir} {device} recompute={recompute}: gradient of {name} relative error {err:.3e}");
        seen += 1;
    }
    // Every reference gradient we do not give is that of a parameter the model never reads (post_layernorm).
    let reference_grads: Vec<&String> = r.keys().filter(|k| k.starts_with("grad.")).collect();
    for name in &reference_grads {
        if name.contains("vision_model.post_layernorm") {
            assert!(r[*name].1.iter().all(|&v| v == 0.0), "{name} is not zero in the reference");
        }
    }
    assert_eq!(seen + 2, reference_grads.len(), "{dir}: every parameter but post_layernorm's two has a gradient");
}

#[test]
fn batch_equals_the_float64_reference_in_both_layouts() {
    for layout in [LlavaLayout::Hf, LlavaLayout::LlavaQwen] {
        for recompute in [false, true] {
            check_against_reference(layout_dir(layout), Device::Cpu, recompute, 1e-4);
        }
    }
}

/// CUDA against the same float64 reference as the CPU (and so against the CPU), and the same greedy tokens.
#[test]
#[cfg_attr(not(feature = "gpu-tests"), ignore = "needs a CUDA device: scripts/gpu_check.sh runs it")]
fn cuda_equals_the_float64_reference_in_both_layouts() {
    for layout in [LlavaLayout::Hf, LlavaLayout::LlavaQwen] {
        for recompute in [false, true] {
            check_against_reference(layout_dir(layout), Device::Cuda(0), recompute, 1e-4);
        }
        greedy_equals_the_reference(layout, Device::Cuda(0));
    }
}

/// Each row's media in the reference batch: the anyres image, the down-sampled image, two images, the video,
/// nothing.
fn row_media(inputs: &Inputs, row: usize) -> Vec<MediaInput<'_>> {
    let image = |i: usize| MediaInput::Image { pixel_values: &inputs.images[i].0, size: inputs.images[i].1 };
    match row {
        0 => vec![image(0)],
        1 => vec![image(1)],
        2 => vec![image(2), image(3)],
        3 => vec![MediaInput::Video { frames: &inputs.video }],
        _ => vec![],
    }
}

#[test]
fn each_row_alone_gives_its_rows_logits_in_the_batch() {
    let r = reference();
    let model = LlavaOnevisionModel::load(&fixture("hf"), DType::F32, Device::Cpu).unwrap();
    let inputs = Inputs::new(&r, model.layout);
    let (ids, mask) = inputs.tensors();
    let media = inputs.media();
    let pass = model.forward(&LlavaBatch { ids: &ids, mask: &mask, media: &media }, ForwardOptions::default()).unwrap();
    let batch_logits = values(&model.logits(&pass).unwrap());
    let [rows, t] = inputs.shape;
    let vocab = batch_logits.len() / (rows * t);
    for row in 0..rows {
        let len = inputs.mask[row * t..(row + 1) * t].iter().filter(|&&m| m != 0).count();
        let row_ids = Tensor::from_slice(&inputs.ids[row * t..row * t + len], &[1, len], Device::Cpu).unwrap();
        let ones = Tensor::from_slice(&vec![1i64; len], &[1, len], Device::Cpu).unwrap();
        let media = row_media(&inputs, row);
        let batch = LlavaBatch { ids: &row_ids, mask: &ones, media: &media };
        let alone = values(&model.logits(&model.forward(&batch, ForwardOptions::default()).unwrap()).unwrap());
        let err = relative(&alone, &batch_logits[row * t * vocab..(row * t + len) * vocab]);
        assert!(err < 1e-5, "row {row}: relative difference {err:.3e}");
    }
}

#[test]
fn greedy_generation_equals_the_reference_in_both_layouts() {
    for layout in [LlavaLayout::Hf, LlavaLayout::LlavaQwen] {
        greedy_equals_the_reference(layout, Device::Cpu);
    }
}

fn greedy_equals_the_reference(layout: LlavaLayout, device: Device) {
    let r = reference();
    let want: Vec<u32> = r["generate.tokens"].1.iter().map(|&v| v as u32).collect();
    let model = LlavaOnevisionModel::load(&fixture(layout_dir(layout)), DType::F32, device).unwrap();
    let inputs = Inputs::new(&r, model.layout);
    let image = model.placeholders().image;
    let prompt: Vec<i64> =
        r["generate.input_ids"].1.iter().map(|&v| if v as i64 == HF_IMAGE { image } else { v as i64 }).collect();
    let cfg = GenerationConfig { max_new_tokens: want.len(), ..GenerationConfig::default() };
    let media = row_media(&inputs, 0);
    let got = model.generate(&prompt, &media, &cfg).unwrap();
    assert_eq!(got, want, "{layout:?} on {device}");
    // Continuations of the one encoded image and prompt: each equals generating its whole prompt alone.
    let suffixes = vec![Vec::new(), vec![want[0]], vec![7, 11]];
    let shared = model.generate_with_prefix(&prompt, &media, &suffixes, &cfg).unwrap();
    assert_eq!(shared[0], want, "{layout:?} on {device}");
    for (suffix, got) in suffixes.iter().zip(&shared).skip(1) {
        let whole: Vec<i64> = prompt.iter().copied().chain(suffix.iter().map(|&t| i64::from(t))).collect();
        assert_eq!(got, &model.generate(&whole, &media, &cfg).unwrap(), "{layout:?} on {device}, suffix {suffix:?}");
    }
}

#[test]
fn half_precision_storage_stays_near_the_reference() {
    // bf16 keeps 8 bits of mantissa, f16 11: logits and loss within the stated fraction of the reference's scale,
    // every gradient (but the vision key biases', zero in exact arithmetic) within the stated relative error.
    let r = reference();
    for (dtype, tol, grad_tol) in [(DType::BF16, 5e-2, 1e-1), (DType::F16, 1e-2, 2e-2)] {
        let model = LlavaOnevisionModel::load(&fixture("hf"), dtype, Device::Cpu).unwrap();
        let inputs = Inputs::new(&r, model.layout);
        let (ids, mask) = inputs.tensors();
        let media = inputs.media();
        let batch = LlavaBatch { ids: &ids, mask: &mask, media: &media };
        let pass = model.forward(&batch, ForwardOptions::default()).unwrap();
        let logits = values(&model.logits(&pass).unwrap());
        let vocab = r["logits"].0[2];
        let err = relative(&inputs.real_rows(&logits, vocab), &inputs.real_rows(&r["logits"].1, vocab));
        assert!(err < tol, "{dtype} logits relative error {err:.3e}");
        let mut grads = model.zero_gradients().unwrap();
        let loss = model.causal_lm_loss_into(&pass, &FusedLinearConfig::default(), &mut grads).unwrap();
        let want = r["loss"].1[0];
        assert!((loss.loss as f64 - want).abs() < tol * want.abs(), "{dtype} loss {} vs {want}", loss.loss);
        model.backward_into(pass, loss.grads, &mut grads).unwrap();
        let mut worst = (0.0f64, String::new());
        for (name, grad) in model.named_gradients(&grads) {
            if name.contains("vision_model") && name.contains("k_proj.bias") {
                continue;
            }
            let hf = model.layout.rename(&name, LlavaLayout::Hf).unwrap();
            let err = relative(&values(grad), &r[&format!("grad.{hf}")].1);
            if err > worst.0 {
                worst = (err, name);
            }
        }
        assert!(worst.0 < grad_tol, "{dtype}: gradient of {} relative error {:.3e}", worst.1, worst.0);
    }
}

fn error_text<T: std::fmt::Debug>(result: unireward::Result<T>) -> String {
    result.unwrap_err().to_string()
}

#[test]
fn bad_batches_are_refused_by_name() {
    let r = reference();
    let model = LlavaOnevisionModel::load(&fixture("hf"), DType::F32, Device::Cpu).unwrap();
    let inputs = Inputs::new(&r, model.layout);
    let (ids, mask) = inputs.tensors();
    let forward = |media: &[MediaInput<'_>]| {
        model.forward(&LlavaBatch { ids: &ids, mask: &mask, media }, ForwardOptions::default()).map(|_| ())
    };
    // The video left out: its placeholders have no features.
    let mut media = inputs.media();
    media.pop();
    let msg = error_text(forward(&media));
    assert!(msg.contains("video placeholder") && msg.contains("must be equal"), "{msg}");
    // An image with one tile too few.
    let mut media = inputs.media();
    let short = inputs.images[0].0.to_dtype(DType::F32).unwrap();
    let tiles = short.shape()[0];
    let values = short.to_vec::<f32>().unwrap();
    let per_tile = values.len() / tiles;
    let short = Tensor::from_slice(&values[per_tile..], &[tiles - 1, 3, 12, 12], Device::Cpu).unwrap();
    media[0] = MediaInput::Image { pixel_values: &short, size: inputs.images[0].1 };
    let msg = error_text(forward(&media));
    assert!(msg.contains("tiles"), "{msg}");
    // Pixels of the wrong side.
    let wrong = Tensor::zeros(&[1, 3, 10, 10], DType::F32, Device::Cpu).unwrap();
    let mut media = inputs.media();
    media[1] = MediaInput::Image { pixel_values: &wrong, size: (10, 10) };
    let msg = error_text(forward(&media));
    assert!(msg.contains("media item 1") && msg.contains("[1, 3, 10, 10]"), "{msg}");
    // Integer pixels.
    let ints = Tensor::from_slice(&[0i64; 3 * 12 * 12], &[1, 3, 12, 12], Device::Cpu).unwrap();
    media[1] = MediaInput::Image { pixel_values: &ints, size: (12, 12) };
    assert!(error_text(forward(&media)).contains("pixel values"));
    // A mask of the wrong shape.
    let short_mask = Tensor::from_slice(&[1i64; 3], &[1, 3], Device::Cpu).unwrap();
    let media = inputs.media();
    let bad = model.forward(&LlavaBatch { ids: &ids, mask: &short_mask, media: &media }, ForwardOptions::default());
    assert!(error_text(bad).contains("mask"));
    // Generation checks the same.
    let msg = error_text(model.generate(&[HF_IMAGE, 5], &[], &GenerationConfig::default()));
    assert!(msg.contains("image placeholder"), "{msg}");
}

/// A scratch copy of a fixture directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn copy_of(dir: &str, tag: &str) -> Scratch {
        let to = std::env::temp_dir().join(format!("unireward-llava-model-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&to);
        copy_dir(&fixture(dir), &to);
        Scratch(to)
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn bad_checkpoints_are_refused_by_name() {
    // An unknown tower.
    let scratch = Scratch::copy_of("llava_qwen", "tower");
    let path = scratch.0.join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["mm_vision_tower"] = "google/siglip-base-patch16-224".into();
    std::fs::write(&path, config.to_string()).unwrap();
    let msg = error_text(LlavaOnevisionModel::load(&scratch.0, DType::F32, Device::Cpu));
    assert!(msg.contains("unknown vision tower") && msg.contains("siglip-base-patch16-224"), "{msg}");

    // A missing weight.
    let scratch = Scratch::copy_of("hf", "missing");
    let store = WeightStore::open(&fixture("hf")).unwrap();
    let kept: Vec<(String, Tensor)> = store
        .names()
        .into_iter()
        .filter(|name| *name != "image_newline")
        .map(|name| (name.to_string(), store.get(name, store.shape(name).unwrap()).unwrap()))
        .collect();
    let refs: Vec<(&str, &Tensor)> = kept.iter().map(|(n, t)| (n.as_str(), t)).collect();
    save_safetensors(&scratch.0.join("model.safetensors"), &refs).unwrap();
    let msg = error_text(LlavaOnevisionModel::load(&scratch.0, DType::F32, Device::Cpu));
    assert!(msg.contains("image_newline"), "{msg}");
}

#[test]
fn a_batch_without_media_gives_zero_vision_gradients() {
    let r = reference();
    let model = LlavaOnevisionModel::load(&fixture("llava_qwen"), DType::F32, Device::Cpu).unwrap();
    let inputs = Inputs::new(&r, model.layout);
    let [_, t] = inputs.shape;
    // Row 4 is text only.
    let len = inputs.mask[4 * t..5 * t].iter().filter(|&&m| m != 0).count();
    let ids = Tensor::from_slice(&inputs.ids[4 * t..4 * t + len], &[1, len], Device::Cpu).unwrap();
    let ones = Tensor::from_slice(&vec![1i64; len], &[1, len], Device::Cpu).unwrap();
    let pass = model.forward(&LlavaBatch { ids: &ids, mask: &ones, media: &[] }, ForwardOptions::default()).unwrap();
    // Buffers holding garbage from an earlier step are overwritten.
    let mut grads = model.zero_gradients().unwrap();
    grads.image_newline = Tensor::from_f32(&[7.0; 32], &[32], DType::F32, Device::Cpu).unwrap();
    let loss = model.causal_lm_loss_into(&pass, &FusedLinearConfig::default(), &mut grads).unwrap();
    assert!(loss.loss.is_finite() && loss.tokens == len - 1);
    model.backward_into(pass, loss.grads, &mut grads).unwrap();
    let mut lm_nonzero = false;
    for (name, grad) in model.named_gradients(&grads) {
        let v = values(grad);
        if name.starts_with(model.layout.vision_prefix()) || name.contains("mm_projector") || name.contains("newline") {
            assert!(v.iter().all(|&x| x == 0.0), "{name} is not zero");
        } else {
            lm_nonzero |= v.iter().any(|&x| x != 0.0);
        }
    }
    assert!(lm_nonzero);
}

/// Every element of every gradient buffer of `grads` as f32 bits, by name.
fn gradient_bits(model: &LlavaOnevisionModel, grads: &LlavaGradients) -> Vec<(String, Vec<u32>)> {
    let bits = |t: &Tensor| t.to_vec::<f32>().unwrap().into_iter().map(f32::to_bits).collect();
    model.named_gradients(grads).into_iter().map(|(name, t)| (name, bits(t))).collect()
}

/// Kept gradient buffers holding NaN everywhere (the garbage of an earlier step, at its worst).
fn nan_gradients(model: &LlavaOnevisionModel) -> LlavaGradients {
    let mut grads = model.zero_gradients().unwrap();
    let nan =
        |t: &mut Tensor| *t = Tensor::from_f32(&vec![f32::NAN; t.numel()], t.shape(), t.dtype(), t.device()).unwrap();
    grads.vision_tower.named_mut().into_iter().for_each(|(_, t)| nan(t));
    grads.language_model.weights.named_mut().into_iter().for_each(|(_, t)| nan(t));
    for (w, b) in &mut grads.projector {
        nan(w);
        nan(b);
    }
    nan(&mut grads.image_newline);
    grads
}

/// Row `row` of the reference batch alone: its ids, mask and length.
fn row_step(inputs: &Inputs, row: usize) -> (Tensor, Tensor, usize) {
    let t = inputs.shape[1];
    let len = inputs.mask[row * t..(row + 1) * t].iter().filter(|&&m| m != 0).count();
    let ids = Tensor::from_slice(&inputs.ids[row * t..row * t + len], &[1, len], Device::Cpu).unwrap();
    let ones = Tensor::from_slice(&vec![1i64; len], &[1, len], Device::Cpu).unwrap();
    (ids, ones, len)
}

/// The gradients of row `row` for a fixed pseudo-random gradient of its logits, into `out` (or, with `None`,
/// returned from the allocating backward).
fn row_gradients(
    model: &LlavaOnevisionModel,
    inputs: &Inputs,
    row: usize,
    out: Option<&mut LlavaGradients>,
) -> Option<LlavaGradients> {
    let (ids, ones, len) = row_step(inputs, row);
    let media = row_media(inputs, row);
    let pass = model.forward(&LlavaBatch { ids: &ids, mask: &ones, media: &media }, ForwardOptions::default()).unwrap();
    let vocab = model.config.text.vocab_size;
    let g: Vec<f32> = (0..len * vocab).map(|i| ((i * 7919 + row * 31) % 1000) as f32 / 1000.0 - 0.5).collect();
    let grad_logits = Tensor::from_slice(&g, &[1, len, vocab], Device::Cpu).unwrap();
    match out {
        None => Some(model.backward_from_logits(pass, &grad_logits).unwrap()),
        Some(out) => {
            let grads = model.language_model.output_grads_from_logits(&pass.lm, &grad_logits).unwrap();
            model.backward_into(pass, grads, out).unwrap();
            None
        }
    }
}

#[test]
fn kept_buffers_get_the_allocating_backwards_gradients_bit_for_bit() {
    let r = reference();
    let model = LlavaOnevisionModel::load(&fixture("hf"), DType::F32, Device::Cpu).unwrap();
    let inputs = Inputs::new(&r, model.layout);
    // Rows: two images, the video, text only.
    for row in [2, 3, 4] {
        let fresh = row_gradients(&model, &inputs, row, None).unwrap();
        let mut kept = nan_gradients(&model);
        row_gradients(&model, &inputs, row, Some(&mut kept));
        assert_eq!(gradient_bits(&model, &kept), gradient_bits(&model, &fresh), "row {row}");
    }
    // Two steps into the same buffers: the second's gradients, as a fresh backward gives them.
    let mut kept = nan_gradients(&model);
    for row in [0, 3] {
        row_gradients(&model, &inputs, row, Some(&mut kept));
        let fresh = row_gradients(&model, &inputs, row, None).unwrap();
        assert_eq!(gradient_bits(&model, &kept), gradient_bits(&model, &fresh), "step on row {row}");
    }
}

/// Replaces one gradient buffer by one of the wrong shape or dtype.
type Spoil = fn(&mut LlavaGradients);

#[test]
fn mismatched_kept_buffers_are_refused_with_nothing_written() {
    let r = reference();
    let model = LlavaOnevisionModel::load(&fixture("llava_qwen"), DType::F32, Device::Cpu).unwrap();
    let inputs = Inputs::new(&r, model.layout);
    let wrong: [(&str, Spoil); 3] = [
        ("mm_projector.2.bias", |g| g.projector[1].1 = Tensor::zeros(&[3], DType::F32, Device::Cpu).unwrap()),
        ("image_newline", |g| {
            g.image_newline = Tensor::zeros(g.image_newline.shape(), DType::BF16, Device::Cpu).unwrap()
        }),
        ("patch_embedding", |g| {
            g.vision_tower.patch_embedding = Tensor::zeros(&[1, 2], DType::F32, Device::Cpu).unwrap()
        }),
    ];
    for (name, spoil) in wrong {
        for row in [0, 4] {
            let mut out = nan_gradients(&model);
            spoil(&mut out);
            let (ids, ones, _) = row_step(&inputs, row);
            let media = row_media(&inputs, row);
            let pass = model
                .forward(&LlavaBatch { ids: &ids, mask: &ones, media: &media }, ForwardOptions::default())
                .unwrap();
            let logits = model.logits(&pass).unwrap();
            let grads = model.language_model.output_grads_from_logits(&pass.lm, &logits).unwrap();
            let msg = error_text(model.backward_into(pass, grads, &mut out));
            assert!(msg.contains(name), "{name}: {msg}");
            for (buffer, grad) in model.named_gradients(&out) {
                assert!(
                    values(grad).iter().all(|v| v.is_nan()) || buffer.contains(name),
                    "{name}: {buffer} was written"
                );
            }
        }
    }
}
