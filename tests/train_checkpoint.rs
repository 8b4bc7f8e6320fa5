//! Checkpoints written by `unireward::train::checkpoint`: a trained (here: perturbed) Qwen2 or LLaVA-OneVision
//! model saved in its source's layout loads back bit for bit, with the same logits, and with the source's other
//! files and unused tensors; writes are atomic. tests/reference/train_checkpoint.py loads the checkpoints this
//! test writes (with UNIREWARD_CHECKPOINT_OUT set) in transformers and compares its logits with unireward's.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use unireward::model::llava::{LlavaBatch, LlavaOnevisionModel};
use unireward::model::{save_safetensors, ForwardOptions, Qwen2Model, WeightStore};
use unireward::train::checkpoint::{
    is_checkpoint, save_checkpoint, save_llava, save_qwen2, write_dir_atomically, SaveOptions, PARTIAL_MARKER,
};
use unireward::{DType, Device, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("unireward-ckpt-{}-{n}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Where the reference script wants the checkpoints, if it asked.
fn export_dir() -> Option<PathBuf> {
    std::env::var_os("UNIREWARD_CHECKPOINT_OUT").map(PathBuf::from)
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
}

/// `t` plus a small deterministic pattern, in its dtype: a stand-in for a training step.
fn perturbed(t: &Tensor, seed: usize) -> Tensor {
    let values = t.to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap();
    let moved: Vec<f32> = values.iter().enumerate().map(|(i, v)| v + 0.03 * ((i * 7 + seed) as f32).sin()).collect();
    Tensor::from_f32(&moved, t.shape(), t.dtype(), t.device()).unwrap()
}

/// Ids `[2, 7]` below `vocab` with the second row padded after 5 tokens.
fn ids_and_mask(vocab: usize) -> (Tensor, Tensor) {
    let ids: Vec<i64> = (0..14).map(|i| ((i * 37 + 11) % vocab) as i64).collect();
    let mask: Vec<i64> = (0..14).map(|i| i64::from(i < 12)).collect();
    (Tensor::from_slice(&ids, &[2, 7], Device::Cpu).unwrap(), Tensor::from_slice(&mask, &[2, 7], Device::Cpu).unwrap())
}

fn qwen2_logits(model: &Qwen2Model) -> Tensor {
    let (ids, mask) = ids_and_mask(model.config.vocab_size);
    let pass = model.forward(&ids, &mask, ForwardOptions::default()).unwrap();
    model.logits(&pass).unwrap()
}

fn same_tensors(a: &[(String, &Tensor)], b: &[(String, &Tensor)]) {
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        assert_eq!(ta.dtype(), tb.dtype(), "{na}");
        assert_eq!(bits(ta), bits(tb), "{na}");
    }
}

/// Every tensor name of the checkpoint in `dir`, sorted.
fn stored_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = WeightStore::open(dir).unwrap().names().into_iter().map(str::to_string).collect();
    names.sort();
    names
}

#[test]
fn qwen2_checkpoints_load_back_bit_for_bit() {
    for (name, dtype, shard) in [
        ("qwen2/gqa_untied", DType::F32, usize::MAX),
        ("qwen2/chat_tied", DType::F32, 3000),
        ("qwen2/sharded_f16", DType::F16, 5000),
        ("qwen2/mqa_tied_bf16", DType::BF16, usize::MAX),
    ] {
        let source = fixture(name);
        let mut model = Qwen2Model::load(&source, dtype, Device::Cpu).unwrap();
        model.weights.embed_tokens = perturbed(&model.weights.embed_tokens, 1);
        model.weights.layers[0].q_proj = perturbed(&model.weights.layers[0].q_proj, 2);
        let scratch = Scratch::new("qwen2");
        let out = scratch.0.join("checkpoint-10");
        let options = SaveOptions { max_shard_bytes: shard, ..SaveOptions::default() };
        save_qwen2(&model, &source, &out, &options).unwrap();
        assert!(is_checkpoint(&out));
        let sharded = out.join("model.safetensors.index.json").is_file();
        assert_eq!(sharded, shard != usize::MAX, "{name}");
        assert_eq!(std::fs::read(out.join("config.json")).unwrap(), std::fs::read(source.join("config.json")).unwrap());
        for file in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"] {
            assert_eq!(out.join(file).is_file(), source.join(file).is_file(), "{name}: {file}");
        }
        assert_eq!(stored_names(&out), stored_names(&source), "{name}");
        let back = Qwen2Model::load(&out, dtype, Device::Cpu).unwrap();
        same_tensors(&back.weights.named(), &model.weights.named());
        assert_eq!(bits(&qwen2_logits(&back)), bits(&qwen2_logits(&model)), "{name}");
        // Nothing but the checkpoint beside it.
        assert_eq!(std::fs::read_dir(&scratch.0).unwrap().count(), 1);
        if let (Some(export), "qwen2/gqa_untied") = (export_dir(), name) {
            let dir = export.join("qwen2");
            let _ = std::fs::remove_dir_all(&dir);
            save_qwen2(&model, &source, &dir, &options).unwrap();
            let logits = qwen2_logits(&model);
            let (ids, mask) = ids_and_mask(model.config.vocab_size);
            save_safetensors(
                &export.join("qwen2_logits.safetensors"),
                &[("logits", &logits), ("ids", &ids), ("mask", &mask)],
            )
            .unwrap();
        }
    }
}

fn llava_logits(model: &LlavaOnevisionModel) -> Tensor {
    let (ids, mask) = ids_and_mask(model.config.text.vocab_size.min(80));
    let pass = model.forward(&LlavaBatch { ids: &ids, mask: &mask, media: &[] }, ForwardOptions::default()).unwrap();
    model.logits(&pass).unwrap()
}

#[test]
fn llava_checkpoints_load_back_bit_for_bit_in_their_layout() {
    for (name, shard) in [("llava/hf", 20_000), ("llava/llava_qwen", usize::MAX)] {
        let source = fixture(name);
        let mut model = LlavaOnevisionModel::load(&source, DType::F32, Device::Cpu).unwrap();
        model.image_newline = perturbed(&model.image_newline, 3);
        model.language_model.weights.norm = perturbed(&model.language_model.weights.norm, 4);
        let tower = &mut model.vision_tower.weights.layers[0];
        tower.q_proj = perturbed(&tower.q_proj, 5);
        let scratch = Scratch::new("llava");
        let out = scratch.0.join("judge");
        let options = SaveOptions { max_shard_bytes: shard, ..SaveOptions::default() };
        save_llava(&model, &source, &out, &options).unwrap();
        assert!(is_checkpoint(&out));
        // The unused tower layer and post-layernorm are carried over: the checkpoint is as complete as its source.
        assert_eq!(stored_names(&out), stored_names(&source), "{name}");
        let (saved, original) = (WeightStore::open(&out).unwrap(), WeightStore::open(&source).unwrap());
        let held: Vec<String> = model.named_parameters().into_iter().map(|(n, _)| n).collect();
        for carried in stored_names(&source).iter().filter(|n| !held.contains(n)) {
            let shape = original.shape(carried).unwrap().to_vec();
            assert_eq!(bits(&saved.get(carried, &shape).unwrap()), bits(&original.get(carried, &shape).unwrap()));
        }
        let back = LlavaOnevisionModel::load(&out, DType::F32, Device::Cpu).unwrap();
        assert_eq!(back.layout, model.layout);
        same_tensors(&back.named_parameters(), &model.named_parameters());
        assert_eq!(bits(&llava_logits(&back)), bits(&llava_logits(&model)), "{name}");
        if let (Some(export), "llava/hf") = (export_dir(), name) {
            let dir = export.join("llava");
            let _ = std::fs::remove_dir_all(&dir);
            save_llava(&model, &source, &dir, &options).unwrap();
            let (ids, mask) = ids_and_mask(model.config.text.vocab_size.min(80));
            let logits = llava_logits(&model);
            save_safetensors(
                &export.join("llava_logits.safetensors"),
                &[("logits", &logits), ("ids", &ids), ("mask", &mask)],
            )
            .unwrap();
        }
    }
}

#[test]
fn a_checkpoint_can_be_stored_in_another_dtype() {
    let source = fixture("qwen2/gqa_untied");
    let model = Qwen2Model::load(&source, DType::F32, Device::Cpu).unwrap();
    let scratch = Scratch::new("dtype");
    let out = scratch.0.join("bf16");
    save_qwen2(&model, &source, &out, &SaveOptions { dtype: Some(DType::BF16), ..SaveOptions::default() }).unwrap();
    let back = Qwen2Model::load(&out, DType::BF16, Device::Cpu).unwrap();
    for ((name, got), (_, want)) in back.weights.named().iter().zip(model.weights.named()) {
        assert_eq!(got.dtype(), DType::BF16);
        assert_eq!(bits(got), bits(&want.to_dtype(DType::BF16).unwrap()), "{name}");
    }
    let ints = SaveOptions { dtype: Some(DType::I64), ..SaveOptions::default() };
    assert!(save_qwen2(&model, &source, &scratch.0.join("ints"), &ints).unwrap_err().to_string().contains("dtype"));
    assert!(!scratch.0.join("ints").exists());
}

#[test]
fn writes_are_atomic_and_never_leave_a_checkpoint_half_written() {
    let source = fixture("qwen2/gqa_untied");
    let model = Qwen2Model::load(&source, DType::F32, Device::Cpu).unwrap();
    let scratch = Scratch::new("atomic");
    let out = scratch.0.join("checkpoint");
    let options = SaveOptions::default();
    save_qwen2(&model, &source, &out, &options).unwrap();
    let before = std::fs::read(out.join("model.safetensors")).unwrap();

    // An existing checkpoint is kept unless overwriting is asked for.
    let msg = save_qwen2(&model, &source, &out, &options).unwrap_err().to_string();
    assert!(msg.contains("exists"), "{msg}");

    // A failure while writing (here: the trainer-state callback) leaves the old checkpoint and no partial one.
    let named = model.weights.named();
    let overwrite = SaveOptions { overwrite: true, ..options };
    let failed = save_checkpoint(&out, &source, &named, &[], &overwrite, |dir| {
        assert!(dir.file_name().unwrap().to_string_lossy().contains(PARTIAL_MARKER));
        assert!(!is_checkpoint(dir), "a partial directory is not a checkpoint");
        Err(unireward::Error::Checkpoint("disk full".into()))
    });
    assert!(failed.unwrap_err().to_string().contains("disk full"));
    assert_eq!(std::fs::read(out.join("model.safetensors")).unwrap(), before);
    assert_eq!(std::fs::read_dir(&scratch.0).unwrap().count(), 1, "no partial directory is left");

    // Overwriting replaces it whole, with the trainer's state written beside the weights.
    let mut moved = Qwen2Model::load(&source, DType::F32, Device::Cpu).unwrap();
    moved.weights.norm = perturbed(&moved.weights.norm, 9);
    save_checkpoint(&out, &source, &moved.weights.named(), &[], &overwrite, |dir| {
        std::fs::create_dir(dir.join("trainer_state")).unwrap();
        std::fs::write(dir.join("trainer_state/loader.json"), "{}").unwrap();
        Ok(())
    })
    .unwrap();
    assert!(out.join("trainer_state/loader.json").is_file());
    assert_eq!(bits(&Qwen2Model::load(&out, DType::F32, Device::Cpu).unwrap().weights.norm), bits(&moved.weights.norm));
    assert_eq!(std::fs::read_dir(&scratch.0).unwrap().count(), 1);

    // What a killed writer leaves behind is never taken for a checkpoint.
    let partial = scratch.0.join(format!(".checkpoint{PARTIAL_MARKER}1-0"));
    write_dir_atomically(&scratch.0.join("copy"), false, |dir| {
        for entry in std::fs::read_dir(&out).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
            }
        }
        Ok(())
    })
    .unwrap();
    std::fs::rename(scratch.0.join("copy"), &partial).unwrap();
    assert!(!is_checkpoint(&partial));
}

#[test]
fn bad_requests_are_refused_before_anything_is_written() {
    let source = fixture("qwen2/gqa_untied");
    let model = Qwen2Model::load(&source, DType::F32, Device::Cpu).unwrap();
    let scratch = Scratch::new("bad");
    let out = scratch.0.join("out");
    let named = model.weights.named();
    let twice = [named[0].clone(), named[0].clone()];
    type Case<'a> = (&'a [(String, &'a Tensor)], &'a Path, SaveOptions, &'a str);
    let cases: [Case; 3] = [
        (&twice, &source, SaveOptions::default(), "given twice"),
        (&named, &scratch.0, SaveOptions::default(), "config.json"),
        (&named, &source, SaveOptions { max_shard_bytes: 0, ..SaveOptions::default() }, "max_shard_bytes"),
    ];
    for (weights, from, options, needle) in cases {
        let msg = save_checkpoint(&out, from, weights, &[], &options, |_| Ok(())).unwrap_err().to_string();
        assert!(msg.contains(needle), "{msg}");
        assert!(!out.exists());
        assert_eq!(std::fs::read_dir(&scratch.0).unwrap().count(), 0);
    }
}
