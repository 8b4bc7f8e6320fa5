//! The LLaVA pass's one activation arena (`src/model/llava/pass_arena.rs`): the pass computes what its parts compute
//! in their own arenas, bit for bit, in less memory than they take together; the next pass of the same shape reuses
//! the arena, a larger one grows it.

use std::path::Path;

use unireward::model::llava::packing::{pack, pack_backward, Media, PackingPlan, ScatterMap};
use unireward::model::llava::{LlavaBatch, LlavaOnevisionModel, MediaInput};
use unireward::model::ForwardOptions;
use unireward::ops::embedding::{embedding_backward_accumulate, embedding_into};
use unireward::{DType, Device, Tensor};

fn load(frozen: bool) -> LlavaOnevisionModel {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llava/hf");
    let mut model = LlavaOnevisionModel::load(&dir, DType::F32, Device::Cpu).unwrap();
    model.set_vision_tower_frozen(frozen);
    model
}

/// Pseudo-random values in [-1, 1).
fn noise(shape: &[usize], seed: usize) -> Tensor {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|i| ((i * 7919 + seed * 104_729) % 2001) as f32 / 1000.0 - 1.0).collect();
    Tensor::from_slice(&values, shape, Device::Cpu).unwrap()
}

/// A batch of `rows` samples: row r holds an image of 3 tiles (its 12×20 original takes the 1×2 grid) when r is even
/// and a video of r + 1 frames when r is odd, then `text` tokens; the shorter rows padded to the longest.
struct Batch {
    ids: Tensor,
    mask: Tensor,
    pixels: Vec<Tensor>,
    /// The image sizes (`None` for a video), in media order.
    sizes: Vec<Option<(usize, usize)>>,
}

impl Batch {
    fn new(model: &LlavaOnevisionModel, rows: usize, text: usize) -> Batch {
        let c = &model.vision_tower.config;
        let tile = |k: usize, seed: usize| noise(&[k, c.num_channels, c.image_size, c.image_size], seed);
        let (pixels, sizes): (Vec<Tensor>, Vec<_>) =
            (0..rows).map(|r| if r % 2 == 0 { (tile(3, r), Some((12, 20))) } else { (tile(r + 1, r), None) }).unzip();
        let counts = model.placeholder_counts(&media(&pixels, &sizes)).unwrap();
        let placeholders = model.placeholders();
        let vocab = model.config.text.vocab_size as i64;
        let rows_ids: Vec<Vec<i64>> = (0..rows)
            .map(|r| {
                let placeholder = if r % 2 == 0 { placeholders.image } else { placeholders.video };
                let mut ids = vec![placeholder; counts[r]];
                ids.extend((0..text + r).map(|i| ((i * 31 + r * 7) as i64) % (vocab - 2)));
                ids
            })
            .collect();
        let t = rows_ids.iter().map(Vec::len).max().unwrap();
        let (mut ids, mut mask) = (Vec::new(), Vec::new());
        for row in &rows_ids {
            ids.extend(row.iter().copied().chain(std::iter::repeat_n(0, t - row.len())));
            mask.extend((0..t).map(|i| i64::from(i < row.len())));
        }
        Batch {
            ids: Tensor::from_slice(&ids, &[rows, t], Device::Cpu).unwrap(),
            mask: Tensor::from_slice(&mask, &[rows, t], Device::Cpu).unwrap(),
            pixels,
            sizes,
        }
    }

    fn media(&self) -> Vec<MediaInput<'_>> {
        media(&self.pixels, &self.sizes)
    }

    /// A fixed gradient of the logits `[N,T,V]`.
    fn grad_logits(&self, model: &LlavaOnevisionModel) -> Tensor {
        let mut shape = self.ids.shape().to_vec();
        shape.push(model.config.text.vocab_size);
        noise(&shape, 3)
    }
}

/// Each item's pixels as an image of its size, or a video when it has none.
fn media<'a>(pixels: &'a [Tensor], sizes: &[Option<(usize, usize)>]) -> Vec<MediaInput<'a>> {
    let item = |pixel_values, size| match size {
        Some(size) => MediaInput::Image { pixel_values, size },
        None => MediaInput::Video { frames: pixel_values },
    };
    pixels.iter().zip(sizes).map(|(p, &size)| item(p, size)).collect()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_vec::<f32>().unwrap().into_iter().map(f32::to_bits).collect()
}

/// The logits and every gradient `(name, bits)` of the LLaVA pass.
type Run = (Vec<u32>, Vec<(String, Vec<u32>)>);

fn one_arena(model: &LlavaOnevisionModel, batch: &Batch, opts: ForwardOptions) -> Run {
    let media = batch.media();
    let pass = model.forward(&LlavaBatch { ids: &batch.ids, mask: &batch.mask, media: &media }, opts).unwrap();
    let logits = bits(&model.logits(&pass).unwrap());
    let grads = model.backward_from_logits(pass, &batch.grad_logits(model)).unwrap();
    (logits, model.named_gradients(&grads).into_iter().map(|(name, g)| (name, bits(g))).collect())
}

/// The same pass through the parts, each in its own arena or allocations (the model's path before the one arena):
/// tower → projector → packing → scatter → Qwen2, and back.
fn parts(model: &LlavaOnevisionModel, batch: &Batch, opts: ForwardOptions) -> Run {
    let c = &model.vision_tower.config;
    let tiles: usize = batch.pixels.iter().map(|p| p.shape()[0]).sum();
    let all: Vec<f32> = batch.pixels.iter().flat_map(|p| p.to_vec::<f32>().unwrap()).collect();
    let pixels = Tensor::from_slice(&all, &[tiles, c.num_channels, c.image_size, c.image_size], Device::Cpu).unwrap();
    let items: Vec<Media> = batch
        .pixels
        .iter()
        .zip(&batch.sizes)
        .map(|(p, size)| match size {
            Some(size) => Media::Image { size: *size, tiles: p.shape()[0] },
            None => Media::Video { frames: p.shape()[0] },
        })
        .collect();
    let plan = PackingPlan::new(&model.packing, &items, [tiles, c.num_patches()]).unwrap();
    let scatter = ScatterMap::new(&batch.ids, model.placeholders(), &plan).unwrap();
    let placeholders = model.placeholders();
    let lookup: Vec<i64> = batch
        .ids
        .to_vec::<i64>()
        .unwrap()
        .into_iter()
        .map(|id| if id == placeholders.image || id == placeholders.video { 0 } else { id })
        .collect();
    let lookup = Tensor::from_slice(&lookup, batch.ids.shape(), Device::Cpu).unwrap();

    let frozen = model.vision_tower_frozen();
    let tower = (!frozen).then(|| model.vision_tower.forward(&pixels, opts).unwrap());
    let features = match &tower {
        Some(pass) => pass.features().try_clone().unwrap(),
        None => model.vision_tower.encode(&pixels).unwrap(),
    };
    let (projected, saved) = model.projector.forward(&features).unwrap();
    let packed = pack(&plan, &projected, &model.image_newline).unwrap();
    let lm = &model.language_model;
    let [n, t] = [batch.ids.shape()[0], batch.ids.shape()[1]];
    let mut embeds = Tensor::zeros(&[n, t, model.config.text.hidden_size], DType::F32, Device::Cpu).unwrap();
    embedding_into(&lm.weights.embed_tokens, &lookup, &mut embeds).unwrap();
    scatter.scatter(&packed, &mut embeds).unwrap();
    let pass = lm.forward_embeds(&embeds, &batch.mask, opts).unwrap();
    let logits = bits(&lm.logits(&pass).unwrap());

    let mut grads = lm.backward_from_logits(pass, &batch.grad_logits(model)).unwrap();
    let grad_packed = scatter.backward(&mut grads.inputs_embeds).unwrap();
    let vocab = model.config.text.vocab_size;
    embedding_backward_accumulate(&grads.inputs_embeds, &lookup, vocab, &mut grads.weights.embed_tokens).unwrap();
    let packing = pack_backward(&plan, &grad_packed).unwrap();
    let projector = model.projector.backward(&packing.features, &features, &saved).unwrap();
    let mut tower_grads = model.vision_tower.weights.zeros_like().unwrap();
    if let Some(pass) = tower {
        model.vision_tower.backward_weights_into(pass, &projector.grad_x, &mut tower_grads, None).unwrap();
    }
    let named = |t: Vec<(String, &Tensor)>| t.into_iter().map(|(name, g)| (name, bits(g))).collect::<Vec<_>>();
    let mut all = named(tower_grads.named());
    all.extend(named(vec![
        ("linear_1.weight".into(), &projector.linear_1.0),
        ("linear_1.bias".into(), &projector.linear_1.1),
        ("linear_2.weight".into(), &projector.linear_2.0),
        ("linear_2.bias".into(), &projector.linear_2.1),
        ("image_newline".into(), &packing.newline),
    ]));
    all.extend(named(grads.weights.named()));
    (logits, all)
}

#[test]
fn the_one_arena_pass_equals_its_parts_in_their_own_arenas_bit_for_bit() {
    for frozen in [false, true] {
        for recompute in [false, true] {
            let model = load(frozen);
            let opts = ForwardOptions { recompute };
            // A larger batch first: the smaller then runs in an arena holding the larger one's leftovers.
            let _ = one_arena(&model, &Batch::new(&model, 4, 9), opts);
            let batch = Batch::new(&model, 3, 5);
            let (logits, grads) = one_arena(&model, &batch, opts);
            let (want_logits, want_grads) = parts(&model, &batch, opts);
            let what = format!("frozen {frozen}, recompute {recompute}");
            assert!(logits == want_logits, "{what}: logits");
            assert_eq!(grads.len(), want_grads.len());
            for ((name, got), (_, want)) in grads.iter().zip(&want_grads) {
                assert!(got == want, "{what}: gradient of {name}");
            }
        }
    }
}

/// The address of a CPU tensor's first element.
fn address(t: &Tensor) -> usize {
    t.as_slice::<f32>().unwrap().as_ptr() as usize
}

#[test]
fn a_pass_of_the_same_shape_reuses_the_arena_and_a_larger_batch_grows_it() {
    for recompute in [false, true] {
        let model = load(false);
        let opts = ForwardOptions { recompute };
        let small = Batch::new(&model, 2, 4);
        let run = |batch: &Batch| {
            let media = batch.media();
            let pass = model.forward(&LlavaBatch { ids: &batch.ids, mask: &batch.mask, media: &media }, opts).unwrap();
            (pass.activation_bytes(), pass.arena_bytes(), address(pass.lm.hidden()))
        };
        let first = run(&small);
        assert_eq!(first.0, first.1, "a new arena is laid out for its first pass exactly");
        assert_eq!(run(&small), first, "the same shape: the same buffer, nothing allocated");

        let large = Batch::new(&model, 4, 9);
        let (used, capacity, _) = run(&large);
        assert!(used > first.0 && capacity == used, "a larger batch grows the arena: {used} after {first:?}");
        let (small_used, small_capacity, _) = run(&small);
        assert_eq!((small_used, small_capacity), (first.0, capacity), "the smaller batch again fits the grown arena");

        // The overlay at work: one arena takes less than the tower's and the language model's own arenas together.
        let media = small.media();
        let pass = model.forward(&LlavaBatch { ids: &small.ids, mask: &small.mask, media: &media }, opts).unwrap();
        let lm_bytes = pass.lm.activation_bytes();
        drop(pass);
        let tiles: Vec<f32> = small.pixels.iter().flat_map(|p| p.to_vec::<f32>().unwrap()).collect();
        let c = &model.vision_tower.config;
        let k = tiles.len() / (c.num_channels * c.image_size * c.image_size);
        let pixels = Tensor::from_slice(&tiles, &[k, c.num_channels, c.image_size, c.image_size], Device::Cpu).unwrap();
        let tower_bytes = model.vision_tower.forward(&pixels, opts).unwrap().activation_bytes();
        assert!(first.0 < tower_bytes + lm_bytes, "recompute {recompute}: {} ≥ {tower_bytes} + {lm_bytes}", first.0);
    }
}
