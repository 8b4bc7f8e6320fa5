//! Checkpoints in the Hugging Face layout of the model they came from, so that transformers (and unireward) load
//! the trained model as they loaded the original:
//!
//! ```text
//! out/
//!   config.json                          copied from the source checkpoint
//!   model.safetensors                    or model-0000i-of-0000n.safetensors + model.safetensors.index.json
//!   tokenizer.json, tokenizer_config.json, chat_template.jinja, preprocessor_config.json, ...   copied
//!   judge_templates/*.json               copied: the task templates a judge checkpoint carries (its interface)
//!   <mm_vision_tower>/config.json        copied when a `llava_qwen` config names its tower by a local directory
//!   trainer_state/                       reserved for the trainer: optimizer moments, schedule step, loader
//!                                        position (`LoaderState`), RNG state — written into the same temporary
//!                                        directory by the `extra` callback, so weights and state appear together
//! ```
//!
//! Weights are the model's parameters under its checkpoint's names, plus every tensor of the source checkpoint the
//! model does not hold (a vision tower's layers past its feature layer, its unused post-layernorm), copied as
//! stored, so the written checkpoint is complete for transformers. A tied model's separately stored LM head is not
//! carried over (transformers ties it again on load).
//!
//! The directory is written atomically ([`write_dir_atomically`]): a killed run leaves a hidden
//! `.NAME.partial-*` directory, never a directory named as the checkpoint, and [`is_checkpoint`] refuses partial
//! ones.

mod atomic;

pub use atomic::{write_dir_atomically, PARTIAL_MARKER};

use std::collections::HashSet;
use std::path::Path;

use crate::judge::CHECKPOINT_TEMPLATES;
use crate::model::files::{open_regular, read_text, MAX_JSON_BYTES};
use crate::model::llava::LlavaOnevisionModel;
use crate::model::weights::{save_sharded, WEIGHTS_FILE, WEIGHTS_INDEX_FILE};
use crate::model::{Qwen2Model, WeightStore};
use crate::runtime::{DType, Tensor};
use crate::{Error, Result};

/// The files copied from the source checkpoint when it has them (`config.json` must be there).
pub const COPIED_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
];
/// The directory inside a checkpoint reserved for the trainer's state.
pub const TRAINER_STATE_DIR: &str = "trainer_state";
/// transformers' default `max_shard_size` ("5GB").
pub const DEFAULT_MAX_SHARD_BYTES: usize = 5_000_000_000;

/// How a checkpoint is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SaveOptions {
    /// Weights are split into shards of at most this many bytes (a larger tensor gets a shard of its own).
    pub max_shard_bytes: usize,
    /// Store the model's parameters in this dtype (e.g. bf16 for a model trained in f32); `None`: as they are.
    pub dtype: Option<DType>,
    /// Replace an existing checkpoint directory.
    pub overwrite: bool,
}

impl Default for SaveOptions {
    fn default() -> Self {
        SaveOptions { max_shard_bytes: DEFAULT_MAX_SHARD_BYTES, dtype: None, overwrite: false }
    }
}

/// Writes `weights` as a checkpoint in `out` beside the non-weight files of the checkpoint in `source` (see the
/// module's documentation), with the source's tensors the weights do not name (except those in `left_out`) carried
/// over. `extra` writes more into the checkpoint's temporary directory before it is renamed into place (the
/// trainer's state under [`TRAINER_STATE_DIR`]); pass `|_| Ok(())` for none.
pub fn save_checkpoint(
    out: &Path,
    source: &Path,
    weights: &[(String, &Tensor)],
    left_out: &[&str],
    options: &SaveOptions,
    extra: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    if options.max_shard_bytes == 0 {
        return Err(Error::InvalidArgument("max_shard_bytes must be at least 1".into()));
    }
    if let Some(dtype) = options.dtype.filter(|d| !d.is_float()) {
        return Err(Error::DType { arg: "dtype", got: dtype, expected: "f32, bf16 or f16".into() });
    }
    if !source.join("config.json").is_file() {
        return Err(Error::Checkpoint(format!("source checkpoint {} has no config.json", source.display())));
    }
    let mut seen = HashSet::new();
    if let Some((name, _)) = weights.iter().find(|(name, _)| !seen.insert(name.as_str())) {
        return Err(Error::InvalidArgument(format!("weight `{name}` is given twice")));
    }
    // Everything is read and converted before the directory is created.
    let converted: Vec<Option<Tensor>> = weights
        .iter()
        .map(|(_, t)| options.dtype.filter(|&d| d != t.dtype()).map(|d| t.to_dtype(d)).transpose())
        .collect::<Result<_>>()?;
    let mut tensors: Vec<(&str, &Tensor)> =
        weights.iter().zip(&converted).map(|((name, t), c)| (name.as_str(), c.as_ref().unwrap_or(t))).collect();
    let carried = carried_over(source, &seen, left_out)?;
    tensors.extend(carried.iter().map(|(name, t)| (name.as_str(), t)));
    write_dir_atomically(out, options.overwrite, |dir| {
        for name in COPIED_FILES {
            let from = source.join(name);
            if from.is_file() {
                copy_file(&from, &dir.join(name))?;
            }
        }
        copy_templates(source, dir)?;
        save_sharded(dir, &tensors, options.max_shard_bytes)?;
        extra(dir)
    })
}

/// The source's tensors not in `held` nor `left_out`, as stored, sorted by name.
fn carried_over(source: &Path, held: &HashSet<&str>, left_out: &[&str]) -> Result<Vec<(String, Tensor)>> {
    let store = WeightStore::open(source)?;
    let mut names: Vec<&str> =
        store.names().into_iter().filter(|n| !held.contains(n) && !left_out.contains(n)).collect();
    names.sort_unstable();
    names
        .into_iter()
        .map(|name| {
            let shape = store.shape(name).map(<[usize]>::to_vec).unwrap_or_default();
            Ok((name.to_string(), store.get(name, &shape)?))
        })
        .collect()
}

/// Saves a Qwen2 model loaded from (or trained from) the checkpoint in `source` to `out`.
pub fn save_qwen2(model: &Qwen2Model, source: &Path, out: &Path, options: &SaveOptions) -> Result<()> {
    save_qwen2_with(model, &[], source, out, options, |_| Ok(()))
}

/// [`save_qwen2`] with `beside` (named tensors that are not the model's: a reward head) saved with the model's
/// weights and `extra` writing more into the checkpoint's temporary directory (see [`save_checkpoint`]).
pub fn save_qwen2_with(
    model: &Qwen2Model,
    beside: &[(String, &Tensor)],
    source: &Path,
    out: &Path,
    options: &SaveOptions,
    extra: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let head = model.weights.names().lm_head.clone();
    let left_out: Vec<&str> = if model.config.tie_word_embeddings { vec![head.as_str()] } else { vec![] };
    let mut weights = model.weights.named();
    weights.extend(beside.iter().cloned());
    save_checkpoint(out, source, &weights, &left_out, options, extra)
}

/// Saves a LLaVA-OneVision model (either layout) loaded from the checkpoint in `source` to `out`, in its layout.
pub fn save_llava(model: &LlavaOnevisionModel, source: &Path, out: &Path, options: &SaveOptions) -> Result<()> {
    save_llava_with(model, &[], source, out, options, |_| Ok(()))
}

/// [`save_llava`] with `beside` and `extra` as for [`save_qwen2_with`].
pub fn save_llava_with(
    model: &LlavaOnevisionModel,
    beside: &[(String, &Tensor)],
    source: &Path,
    out: &Path,
    options: &SaveOptions,
    extra: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let names = model.layout.language_model();
    let left_out: Vec<&str> = if model.config.text.tie_word_embeddings { vec![names.lm_head.as_str()] } else { vec![] };
    let tower_dir = local_tower_dir(source)?;
    let mut weights = model.named_parameters();
    weights.extend(beside.iter().cloned());
    save_checkpoint(out, source, &weights, &left_out, options, |dir| {
        if let Some(name) = &tower_dir {
            copy_file(&source.join(name).join("config.json"), &dir.join(name).join("config.json"))?;
        }
        extra(dir)
    })
}

/// A `llava_qwen` config's `mm_vision_tower` when it names a directory inside the checkpoint (holding the tower's
/// `config.json`, which the written checkpoint needs too); `None` for a hub id.
fn local_tower_dir(source: &Path) -> Result<Option<String>> {
    let path = source.join("config.json");
    let text = read_text(&path, MAX_JSON_BYTES)?;
    let config: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::Checkpoint(format!("{}: {e}", path.display())))?;
    let tower = config.get("mm_vision_tower").and_then(|v| v.as_str()).filter(|name| {
        let relative = Path::new(name).components().all(|c| matches!(c, std::path::Component::Normal(_)));
        relative && source.join(name).join("config.json").is_file()
    });
    Ok(tower.map(str::to_string))
}

/// Copies the task templates of a judge checkpoint (`judge_templates/*.json`), which the judge reads its prompt
/// formats from: a trained judge must keep asking in the format it was trained in.
fn copy_templates(source: &Path, dir: &Path) -> Result<()> {
    let folder = source.join(CHECKPOINT_TEMPLATES);
    if !folder.is_dir() {
        return Ok(());
    }
    let entries =
        std::fs::read_dir(&folder).map_err(|e| Error::Checkpoint(format!("cannot list {}: {e}", folder.display())))?;
    for entry in entries {
        let path = entry.map_err(|e| Error::Checkpoint(format!("cannot list {}: {e}", folder.display())))?.path();
        if path.is_file() && path.extension().is_some_and(|x| x == "json") {
            let name = path.file_name().expect("a listed file has a name");
            copy_file(&path, &dir.join(CHECKPOINT_TEMPLATES).join(name))?;
        }
    }
    Ok(())
}

/// Copies the regular file `from` to `to`, creating `to`'s folder.
fn copy_file(from: &Path, to: &Path) -> Result<()> {
    let mut reader = open_regular(from)?;
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::Checkpoint(format!("cannot create {}: {e}", parent.display())))?;
    }
    let mut writer =
        std::fs::File::create(to).map_err(|e| Error::Checkpoint(format!("cannot create {}: {e}", to.display())))?;
    std::io::copy(&mut reader, &mut writer)
        .map_err(|e| Error::Checkpoint(format!("cannot copy {} to {}: {e}", from.display(), to.display())))?;
    Ok(())
}

/// Whether `dir` is a complete checkpoint: a directory not named as a partial one, with `config.json` and its
/// weights (`model.safetensors` or the index).
pub fn is_checkpoint(dir: &Path) -> bool {
    let partial = dir.file_name().is_some_and(|n| n.to_string_lossy().contains(PARTIAL_MARKER));
    !partial
        && dir.join("config.json").is_file()
        && (dir.join(WEIGHTS_FILE).is_file() || dir.join(WEIGHTS_INDEX_FILE).is_file())
}
