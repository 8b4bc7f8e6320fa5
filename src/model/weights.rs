//! Safetensors checkpoints under Hugging Face tensor names: loading (one file, or shards listed by
//! `model.safetensors.index.json`), validation against a model's expected names and shapes, and saving.
//!
//! Files are memory-mapped, never read into a buffer: a tensor's bytes go from the page cache straight into the
//! tensor the caller asks for (converted to its dtype on the way, or copied to the GPU in one transfer when the
//! dtype already matches). Stored float dtypes are f32, bf16 and f16 (little-endian, as safetensors specifies).
//!
//! The files must not be modified while a [`WeightStore`] maps them (as with every memory-mapped loader: a file
//! truncated underneath would fault on access).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::tensor::{Dtype, SafeTensors, TensorInfo};

use super::config::Qwen2Config;
use crate::runtime::{Element, FloatElement};
use crate::{DType, Device, Error, Result, Tensor};

/// The single-file checkpoint name transformers writes.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The index of a sharded checkpoint: `{"metadata": {...}, "weight_map": {tensor name: shard file}}`.
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";

/// A checkpoint's tensors, memory-mapped, by name.
pub struct WeightStore {
    /// What was opened (a directory or a file), for error messages.
    source: PathBuf,
    files: Vec<MappedFile>,
    tensors: HashMap<String, Entry>,
}

struct MappedFile {
    path: PathBuf,
    mmap: Mmap,
}

struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Byte range in the file's map.
    bytes: std::ops::Range<usize>,
}

impl WeightStore {
    /// Opens a checkpoint: a directory holding `model.safetensors.index.json` and its shards, or
    /// `model.safetensors`; or a `.safetensors` file itself. Every file's header is validated here (a truncated or
    /// corrupt file is an error naming it); tensor data is read only by [`WeightStore::get`].
    pub fn open(path: &Path) -> Result<WeightStore> {
        let index = path.join(WEIGHTS_INDEX_FILE);
        let single = path.join(WEIGHTS_FILE);
        // `exists`, not `is_file`: a special file where a weights file belongs is then refused by name.
        if !path.is_dir() && path.exists() {
            WeightStore::from_files(path, &[path.to_path_buf()], None)
        } else if index.exists() {
            let weight_map = read_index(&index)?;
            let mut shards: Vec<&String> = weight_map.values().collect();
            shards.sort();
            shards.dedup();
            let shards: Vec<PathBuf> = shards.into_iter().map(|s| path.join(s)).collect();
            WeightStore::from_files(path, &shards, Some((&index, &weight_map)))
        } else if single.exists() {
            WeightStore::from_files(path, &[single], None)
        } else {
            Err(Error::Checkpoint(format!(
                "{}: no {WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE} (is this a Hugging Face model directory?)",
                path.display()
            )))
        }
    }

    fn from_files(
        source: &Path,
        paths: &[PathBuf],
        index: Option<(&Path, &BTreeMap<String, String>)>,
    ) -> Result<WeightStore> {
        let mut store = WeightStore { source: source.to_path_buf(), files: Vec::new(), tensors: HashMap::new() };
        for path in paths {
            let file = super::files::open_regular(path)?;
            // SAFETY: the map is read-only and lives as long as the store; the module's documentation asks that the
            // file is not modified meanwhile, the contract of every memory-mapped loader.
            let mmap = unsafe { Mmap::map(&file) }
                .map_err(|e| Error::Checkpoint(format!("cannot memory-map {}: {e}", path.display())))?;
            let (header_len, metadata) = SafeTensors::read_metadata(&mmap)
                .map_err(|e| Error::Checkpoint(format!("{} is not a valid safetensors file: {e}", path.display())))?;
            let data_start = 8 + header_len;
            for (name, info) in metadata.tensors() {
                let TensorInfo { dtype, shape, data_offsets: (start, end) } = info.clone();
                let entry =
                    Entry { file: store.files.len(), dtype, shape, bytes: data_start + start..data_start + end };
                if let Some(other) = store.tensors.insert(name.clone(), entry) {
                    let first = store.files[other.file].path.display();
                    return Err(Error::Checkpoint(format!(
                        "tensor `{name}` is in both {first} and {}",
                        path.display()
                    )));
                }
            }
            store.files.push(MappedFile { path: path.clone(), mmap });
        }
        if let Some((index_path, weight_map)) = index {
            store.check_index(index_path, weight_map)?;
        }
        Ok(store)
    }

    /// The index must describe the shards exactly: each listed tensor in its listed file, nothing unlisted.
    fn check_index(&self, index_path: &Path, weight_map: &BTreeMap<String, String>) -> Result<()> {
        let fail = |msg: String| Err(Error::Checkpoint(format!("{}: {msg}", index_path.display())));
        for (name, shard) in weight_map {
            match self.tensors.get(name) {
                None => return fail(format!("lists `{name}` in {shard}, which does not contain it")),
                Some(e) if self.files[e.file].path.file_name() != Some(shard.as_ref()) => {
                    return fail(format!(
                        "lists `{name}` in {shard}, but it is in {}",
                        self.files[e.file].path.display()
                    ))
                }
                Some(_) => {}
            }
        }
        if let Some((name, e)) = self.tensors.iter().find(|(name, _)| !weight_map.contains_key(*name)) {
            return fail(format!("does not list `{name}`, which is in {}", self.files[e.file].path.display()));
        }
        Ok(())
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The stored shape of `name`, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|e| e.shape.as_slice())
    }

    /// The tensor `name` in its stored dtype, on the CPU (exactly the stored bytes).
    pub fn get(&self, name: &str, expected_shape: &[usize]) -> Result<Tensor> {
        let dtype = self.float_dtype(name, self.entry(name)?)?;
        self.get_as(name, expected_shape, dtype, Device::Cpu)
    }

    /// The tensor `name` converted to `dtype` (f32, bf16 or f16; rounding to nearest) on `device`, after checking
    /// that it exists, has `expected_shape` and is stored as a float dtype.
    pub fn get_as(&self, name: &str, expected_shape: &[usize], dtype: DType, device: Device) -> Result<Tensor> {
        let entry = self.entry(name)?;
        if entry.shape != expected_shape {
            return Err(Error::Checkpoint(format!(
                "tensor `{name}` in {} has shape {:?}, expected {expected_shape:?}",
                self.files[entry.file].path.display(),
                entry.shape
            )));
        }
        let stored = self.float_dtype(name, entry)?;
        let bytes = &self.files[entry.file].mmap[entry.bytes.clone()];
        match dtype {
            DType::F32 => load::<f32>(bytes, stored, expected_shape, device),
            DType::BF16 => load::<bf16>(bytes, stored, expected_shape, device),
            DType::F16 => load::<f16>(bytes, stored, expected_shape, device),
            other => Err(Error::DType { arg: "weight dtype", got: other, expected: "f32, bf16 or f16".into() }),
        }
    }

    /// Checks that the checkpoint holds exactly `expected` (name, shape) pairs, each in a float dtype. All problems
    /// are reported in one error: missing tensors, wrong shapes, unsupported dtypes, and unexpected tensors
    /// (refused rather than ignored: a stray `lm_head.weight` beside tied embeddings means the config and the
    /// weights disagree, and ignoring it would compute with a head the checkpoint did not intend).
    pub fn check_exact(&self, expected: &[(String, Vec<usize>)]) -> Result<()> {
        self.check_expected(expected, false).map(drop)
    }

    /// [`WeightStore::check_exact`], except that with `lenient` unexpected tensors are not an error but returned,
    /// sorted (transformers' behaviour: it warns about unused weights and goes on).
    pub fn check_expected(&self, expected: &[(String, Vec<usize>)], lenient: bool) -> Result<Vec<String>> {
        let wanted: std::collections::HashSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
        self.check_expected_except(expected, |name| wanted.contains(name), lenient)
    }

    /// Checks that the checkpoint holds `expected` with those shapes, each in a float dtype, whatever else it holds
    /// (a part of a larger checkpoint).
    pub fn check_present(&self, expected: &[(String, Vec<usize>)]) -> Result<()> {
        self.check_expected_except(expected, |_| true, false).map(drop)
    }

    /// Checks that the checkpoint holds `expected` with those shapes, each in a float dtype, and nothing that
    /// `accounted` does not claim (a part of a larger model whose other tensors another loader checks, such as a
    /// vision tower's under its prefix). With `lenient`, unclaimed tensors are returned, sorted, instead of refused.
    pub fn check_expected_except(
        &self,
        expected: &[(String, Vec<usize>)],
        accounted: impl Fn(&str) -> bool,
        lenient: bool,
    ) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        let mut missing = Vec::new();
        for (name, shape) in expected {
            match self.tensors.get(name) {
                None => missing.push(name.as_str()),
                Some(e) if &e.shape != shape => {
                    problems.push(format!("`{name}` has shape {:?}, expected {shape:?}", e.shape))
                }
                Some(e) => {
                    if let Err(err) = self.float_dtype(name, e) {
                        problems.push(err.to_string());
                    }
                }
            }
        }
        let extra: Vec<&str> = self.names().into_iter().filter(|n| !accounted(n)).collect();
        missing.sort_unstable();
        if !missing.is_empty() {
            problems.insert(0, format!("missing {}", name_list(&missing)));
        }
        if !extra.is_empty() && !lenient {
            problems.push(format!("unexpected {}", name_list(&extra)));
        }
        if problems.is_empty() {
            return Ok(if lenient { extra.into_iter().map(str::to_string).collect() } else { Vec::new() });
        }
        Err(Error::Checkpoint(format!("{} does not match the model: {}", self.source.display(), problems.join("; "))))
    }

    /// Checks the checkpoint against [`qwen2_weight_names`]. A tied model's file may also hold `lm_head.weight`
    /// when it is a bit-identical copy of the embeddings (some savers write both); any other LM head is refused.
    pub fn check_qwen2(&self, config: &Qwen2Config) -> Result<()> {
        self.check_qwen2_with(config, false).map(drop)
    }

    /// [`WeightStore::check_qwen2`]; with `lenient`, tensors the model does not use (a tied model's differing
    /// `lm_head.weight` among them) are returned instead of refused.
    pub fn check_qwen2_with(&self, config: &Qwen2Config, lenient: bool) -> Result<Vec<String>> {
        let expected = self.qwen2_expected(config, &Qwen2Names::default())?;
        self.check_expected(&expected, lenient)
    }

    /// The tensors a Qwen2 decoder stored under `names` must have here: [`qwen2_weight_names_under`], plus the LM
    /// head when a tied model's file also holds it as a bit-identical copy of the embeddings. The number of stored
    /// layers is checked against the config first.
    pub fn qwen2_expected(&self, config: &Qwen2Config, names: &Qwen2Names) -> Result<Vec<(String, Vec<usize>)>> {
        // Before the list of expected names, whose length follows the config: a config claiming a million layers
        // must fail here, not after allocating a million layers' names.
        let stored = self.layer_count(&names.prefix);
        if stored != config.num_hidden_layers {
            return Err(Error::Checkpoint(format!(
                "config.json has num_hidden_layers = {}, but the weights in {} hold {stored} layers under `{}layers.`",
                config.num_hidden_layers,
                self.source.display(),
                names.prefix
            )));
        }
        let mut expected = qwen2_weight_names_under(config, names);
        let embed = names.embed_tokens();
        if config.tie_word_embeddings && self.same_bytes(&names.lm_head, &embed) {
            expected.push((names.lm_head.clone(), vec![config.vocab_size, config.hidden_size]));
        }
        Ok(expected)
    }

    /// One more than the highest `i` in the stored `{prefix}layers.{i}.*` names (0 without any).
    fn layer_count(&self, prefix: &str) -> usize {
        let index =
            |name: &str| name.strip_prefix(prefix)?.strip_prefix("layers.")?.split('.').next()?.parse::<usize>().ok();
        self.tensors.keys().filter_map(|name| index(name)).max().map_or(0, |i| i + 1)
    }

    /// Whether `a` and `b` are stored with the same dtype, shape and bytes.
    fn same_bytes(&self, a: &str, b: &str) -> bool {
        let bytes = |e: &Entry| &self.files[e.file].mmap[e.bytes.clone()];
        match (self.tensors.get(a), self.tensors.get(b)) {
            (Some(x), Some(y)) => x.dtype == y.dtype && x.shape == y.shape && bytes(x) == bytes(y),
            _ => false,
        }
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.tensors.get(name).ok_or_else(|| {
            let files: Vec<String> = self.files.iter().map(|f| f.path.display().to_string()).collect();
            Error::Checkpoint(format!("tensor `{name}` not found in {}", files.join(", ")))
        })
    }

    fn float_dtype(&self, name: &str, entry: &Entry) -> Result<DType> {
        match entry.dtype {
            Dtype::F32 => Ok(DType::F32),
            Dtype::BF16 => Ok(DType::BF16),
            Dtype::F16 => Ok(DType::F16),
            other => Err(Error::Checkpoint(format!(
                "tensor `{name}` in {} is stored as {other:?}; weights must be F32, BF16 or F16",
                self.files[entry.file].path.display()
            ))),
        }
    }
}

impl std::fmt::Debug for WeightStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "WeightStore({}, {} tensors in {} files)",
            self.source.display(),
            self.tensors.len(),
            self.files.len()
        )
    }
}

/// "`a`, `b` and 3 more": long lists are cut so that an error stays readable.
fn name_list(names: &[&str]) -> String {
    const SHOWN: usize = 8;
    let shown: Vec<String> = names.iter().take(SHOWN).map(|n| format!("`{n}`")).collect();
    match names.len().saturating_sub(SHOWN) {
        0 => shown.join(", "),
        more => format!("{} and {more} more", shown.join(", ")),
    }
}

fn read_index(path: &Path) -> Result<BTreeMap<String, String>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let fail = |msg: String| Error::Checkpoint(format!("{}: {msg}", path.display()));
    let text = super::files::read_text(path, super::files::MAX_JSON_BYTES)?;
    let index: Index = serde_json::from_str(&text).map_err(|e| fail(format!("not a valid index: {e}")))?;
    if let Some(shard) = index.weight_map.values().find(|s| Path::new(s).file_name() != Some(s.as_ref())) {
        return Err(fail(format!("shard `{shard}` is not a file name in the checkpoint directory")));
    }
    Ok(index.weight_map)
}

/// One tensor from stored bytes to `T` on `device`: a single copy when the dtype matches (the bytes are aligned in
/// files safetensors writes), else one conversion pass on the host, then the transfer.
fn load<T: FloatElement>(bytes: &[u8], stored: DType, shape: &[usize], device: Device) -> Result<Tensor> {
    if stored == T::DTYPE {
        if let Ok(values) = bytemuck::try_cast_slice::<u8, T>(bytes) {
            return Tensor::from_slice(values, shape, device);
        }
    }
    let mut host = Tensor::zeros(shape, T::DTYPE, Device::Cpu)?;
    let dst = host.as_mut_slice::<T>()?;
    match stored {
        DType::F32 => convert::<f32, T>(bytes, dst),
        DType::BF16 => convert::<bf16, T>(bytes, dst),
        DType::F16 => convert::<f16, T>(bytes, dst),
        other => return Err(Error::DType { arg: "stored weight", got: other, expected: "f32, bf16 or f16".into() }),
    }
    if device == Device::Cpu {
        Ok(host)
    } else {
        host.to_device(device)
    }
}

/// Unaligned little-endian `S` values into `T`, through f32 (exact for every pair except the rounding into a
/// narrower `T`); a plain byte copy when the types match, so that stored bits survive (NaN payloads included).
fn convert<S: FloatElement, T: FloatElement>(src: &[u8], dst: &mut [T]) {
    if S::DTYPE == T::DTYPE {
        bytemuck::cast_slice_mut::<T, u8>(dst).copy_from_slice(src);
        return;
    }
    let size = std::mem::size_of::<S>();
    dst.par_chunks_mut(1 << 16).zip(src.par_chunks(size << 16)).for_each(|(d, s)| {
        for (d, s) in d.iter_mut().zip(s.chunks_exact(size)) {
            *d = T::from_f32(bytemuck::pod_read_unaligned::<S>(s).to_f32());
        }
    });
}

/// The tensors of each decoder layer, under `{prefix}layers.<i>.`, in transformers' order.
pub(crate) const QWEN2_LAYER_TENSORS: [&str; 12] = [
    "self_attn.q_proj.weight",
    "self_attn.q_proj.bias",
    "self_attn.k_proj.weight",
    "self_attn.k_proj.bias",
    "self_attn.v_proj.weight",
    "self_attn.v_proj.bias",
    "self_attn.o_proj.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
    "input_layernorm.weight",
    "post_attention_layernorm.weight",
];

/// Where a Qwen2 decoder's tensors sit in a checkpoint: `{prefix}embed_tokens.weight`, `{prefix}layers.<i>.*`,
/// `{prefix}norm.weight`, and the LM head `lm_head`. A Qwen2 checkpoint uses `model.` and `lm_head.weight` (the
/// default); a multimodal checkpoint nests its language model (`model::llava::LlavaLayout::language_model`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Qwen2Names {
    pub prefix: String,
    pub lm_head: String,
}

impl Default for Qwen2Names {
    fn default() -> Self {
        Qwen2Names { prefix: "model.".into(), lm_head: "lm_head.weight".into() }
    }
}

impl Qwen2Names {
    pub fn embed_tokens(&self) -> String {
        format!("{}embed_tokens.weight", self.prefix)
    }

    /// `tensor` (one of the layer tensors, e.g. `self_attn.q_proj.weight`) of layer `layer`.
    pub fn layer(&self, layer: usize, tensor: &str) -> String {
        format!("{}layers.{layer}.{tensor}", self.prefix)
    }

    pub fn norm(&self) -> String {
        format!("{}norm.weight", self.prefix)
    }
}

/// Every tensor a Qwen2 checkpoint holds, with its shape, under its Hugging Face name, in transformers' order
/// (embeddings, then each layer, then the final norm and, unless tied to the embeddings, the LM head).
pub fn qwen2_weight_names(config: &Qwen2Config) -> Vec<(String, Vec<usize>)> {
    qwen2_weight_names_under(config, &Qwen2Names::default())
}

/// [`qwen2_weight_names`] for a decoder stored under `names`.
pub fn qwen2_weight_names_under(config: &Qwen2Config, names: &Qwen2Names) -> Vec<(String, Vec<usize>)> {
    let (hidden, inter) = (config.hidden_size, config.intermediate_size);
    let kv = config.num_key_value_heads * config.head_dim();
    // The shapes of QWEN2_LAYER_TENSORS, in its order.
    let layer_shapes = [
        vec![hidden, hidden],
        vec![hidden],
        vec![kv, hidden],
        vec![kv],
        vec![kv, hidden],
        vec![kv],
        vec![hidden, hidden],
        vec![inter, hidden],
        vec![inter, hidden],
        vec![hidden, inter],
        vec![hidden],
        vec![hidden],
    ];
    let mut out = vec![(names.embed_tokens(), vec![config.vocab_size, hidden])];
    for i in 0..config.num_hidden_layers {
        let layer = QWEN2_LAYER_TENSORS.iter().zip(&layer_shapes);
        out.extend(layer.map(|(name, shape)| (names.layer(i, name), shape.clone())));
    }
    out.push((names.norm(), vec![hidden]));
    if !config.tie_word_embeddings {
        out.push((names.lm_head.clone(), vec![config.vocab_size, hidden]));
    }
    out
}

/// A tensor as safetensors sees it: its bytes (borrowed from CPU memory, copied from a GPU).
struct View<'a> {
    dtype: Dtype,
    shape: &'a [usize],
    data: Cow<'a, [u8]>,
}

impl safetensors::View for &View<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn view<'a>(tensor: &'a Tensor) -> Result<View<'a>> {
    fn bytes<T: Element>(t: &Tensor) -> Result<Cow<'_, [u8]>> {
        Ok(match t.device() {
            Device::Cpu => Cow::Borrowed(bytemuck::cast_slice(t.as_slice::<T>()?)),
            Device::Cuda(_) => Cow::Owned(bytemuck::cast_slice(&t.to_vec::<T>()?).to_vec()),
        })
    }
    let (dtype, data) = match tensor.dtype() {
        DType::F32 => (Dtype::F32, bytes::<f32>(tensor)?),
        DType::BF16 => (Dtype::BF16, bytes::<bf16>(tensor)?),
        DType::F16 => (Dtype::F16, bytes::<f16>(tensor)?),
        DType::I32 => (Dtype::I32, bytes::<i32>(tensor)?),
        DType::I64 => (Dtype::I64, bytes::<i64>(tensor)?),
    };
    Ok(View { dtype, shape: tensor.shape(), data })
}

/// Writes `tensors` to one safetensors file at `path`, in the format transformers writes (header metadata
/// `{"format": "pt"}`), so that transformers and [`WeightStore`] read it back bit for bit.
pub fn save_safetensors(path: &Path, tensors: &[(&str, &Tensor)]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    if let Some((name, _)) = tensors.iter().find(|(name, _)| !seen.insert(*name)) {
        return Err(Error::InvalidArgument(format!("save_safetensors: tensor `{name}` is given twice")));
    }
    let views = tensors.iter().map(|&(name, t)| Ok((name, view(t)?))).collect::<Result<Vec<_>>>()?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views.iter().map(|(name, v)| (*name, v)), Some(metadata), path)
        .map_err(|e| Error::Checkpoint(format!("cannot write {}: {e}", path.display())))
}

/// Writes `tensors` into the directory `dir` as transformers' `save_pretrained` does, bit for bit:
/// `model.safetensors` when they fit in one shard of `max_shard_bytes`, else `model-0000i-of-0000n.safetensors`
/// shards and `model.safetensors.index.json`. Shards are filled in the given order, starting a new one when the next
/// tensor would overflow; a tensor larger than the limit gets a shard of its own (Hugging Face's rule).
pub fn save_sharded(dir: &Path, tensors: &[(&str, &Tensor)], max_shard_bytes: usize) -> Result<()> {
    let mut shards: Vec<Vec<(&str, &Tensor)>> = Vec::new();
    let (mut current, mut current_bytes) = (Vec::new(), 0);
    for &(name, tensor) in tensors {
        let size = tensor.size_in_bytes();
        if size > max_shard_bytes {
            shards.push(vec![(name, tensor)]);
            continue;
        }
        if current_bytes + size > max_shard_bytes {
            shards.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current.push((name, tensor));
        current_bytes += size;
    }
    if !current.is_empty() {
        shards.push(current);
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::Checkpoint(format!("cannot create {}: {e}", dir.display())))?;
    if shards.len() <= 1 {
        return save_safetensors(&dir.join(WEIGHTS_FILE), shards.first().map_or(&[], Vec::as_slice));
    }
    let mut weight_map = BTreeMap::new();
    for (i, shard) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, shards.len());
        save_safetensors(&dir.join(&file), shard)?;
        weight_map.extend(shard.iter().map(|&(name, _)| (name, file.clone())));
    }
    let total_size: usize = tensors.iter().map(|(_, t)| t.size_in_bytes()).sum();
    let total_parameters: usize = tensors.iter().map(|(_, t)| t.numel()).sum();
    let index = serde_json::json!({
        "metadata": { "total_parameters": total_parameters, "total_size": total_size },
        "weight_map": weight_map,
    });
    // transformers writes `json.dumps(index, indent=2, sort_keys=True)` and a newline: the same text.
    let text = serde_json::to_string_pretty(&index).map_err(|e| Error::Checkpoint(e.to_string()))? + "\n";
    let path = dir.join(WEIGHTS_INDEX_FILE);
    std::fs::write(&path, text).map_err(|e| Error::Checkpoint(format!("cannot write {}: {e}", path.display())))
}
