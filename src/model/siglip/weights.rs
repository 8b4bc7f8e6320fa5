//! `SiglipWeights`: the parameters of the first `layers` encoder layers of a SigLIP vision tower and its
//! embeddings (or, with the same layout, their gradients), under the names of [`siglip_weight_names`], relative to
//! the tower's prefix in a checkpoint.

use super::SiglipVisionConfig;
use crate::model::loading::check_finite;
use crate::model::WeightStore;
use crate::runtime::{DType, Device, Tensor};
use crate::{Error, Result};

/// The tensors of each encoder layer, under `encoder.layers.<i>.`, in transformers' parameter order.
const LAYER_TENSORS: [&str; 16] = [
    "self_attn.k_proj.weight",
    "self_attn.k_proj.bias",
    "self_attn.v_proj.weight",
    "self_attn.v_proj.bias",
    "self_attn.q_proj.weight",
    "self_attn.q_proj.bias",
    "self_attn.out_proj.weight",
    "self_attn.out_proj.bias",
    "layer_norm1.weight",
    "layer_norm1.bias",
    "mlp.fc1.weight",
    "mlp.fc1.bias",
    "mlp.fc2.weight",
    "mlp.fc2.bias",
    "layer_norm2.weight",
    "layer_norm2.bias",
];

/// Every tensor the first `layers` encoder layers and the embeddings need, with its shape, relative to the tower's
/// prefix, in transformers' order (`post_layernorm` and `head` are not used: LLaVA reads an encoder layer's output).
pub fn siglip_weight_names(config: &SiglipVisionConfig, layers: usize) -> Vec<(String, Vec<usize>)> {
    let (hidden, inter) = (config.hidden_size, config.intermediate_size);
    let p = config.patch_size;
    // The shapes of LAYER_TENSORS, in its order.
    let layer_shapes = [
        vec![hidden, hidden],
        vec![hidden],
        vec![hidden, hidden],
        vec![hidden],
        vec![hidden, hidden],
        vec![hidden],
        vec![hidden, hidden],
        vec![hidden],
        vec![hidden],
        vec![hidden],
        vec![inter, hidden],
        vec![inter],
        vec![hidden, inter],
        vec![hidden],
        vec![hidden],
        vec![hidden],
    ];
    let mut names = vec![
        ("embeddings.patch_embedding.weight".to_string(), vec![hidden, config.num_channels, p, p]),
        ("embeddings.patch_embedding.bias".to_string(), vec![hidden]),
        ("embeddings.position_embedding.weight".to_string(), vec![config.num_patches(), hidden]),
    ];
    for i in 0..layers {
        let layer = LAYER_TENSORS.iter().zip(&layer_shapes);
        names.extend(layer.map(|(name, shape)| (format!("encoder.layers.{i}.{name}"), shape.clone())));
    }
    names
}

/// The parameters of one encoder layer (projection weights are [out, in], as in PyTorch).
#[derive(Debug)]
pub struct SiglipLayerWeights {
    pub k_proj: Tensor,
    pub k_bias: Tensor,
    pub v_proj: Tensor,
    pub v_bias: Tensor,
    pub q_proj: Tensor,
    pub q_bias: Tensor,
    pub out_proj: Tensor,
    pub out_bias: Tensor,
    pub layer_norm1: Tensor,
    pub layer_norm1_bias: Tensor,
    pub fc1: Tensor,
    pub fc1_bias: Tensor,
    pub fc2: Tensor,
    pub fc2_bias: Tensor,
    pub layer_norm2: Tensor,
    pub layer_norm2_bias: Tensor,
}

impl SiglipLayerWeights {
    fn from_ordered(mut next: impl FnMut() -> Result<Tensor>) -> Result<SiglipLayerWeights> {
        Ok(SiglipLayerWeights {
            k_proj: next()?,
            k_bias: next()?,
            v_proj: next()?,
            v_bias: next()?,
            q_proj: next()?,
            q_bias: next()?,
            out_proj: next()?,
            out_bias: next()?,
            layer_norm1: next()?,
            layer_norm1_bias: next()?,
            fc1: next()?,
            fc1_bias: next()?,
            fc2: next()?,
            fc2_bias: next()?,
            layer_norm2: next()?,
            layer_norm2_bias: next()?,
        })
    }

    fn ordered(&self) -> [&Tensor; 16] {
        [
            &self.k_proj,
            &self.k_bias,
            &self.v_proj,
            &self.v_bias,
            &self.q_proj,
            &self.q_bias,
            &self.out_proj,
            &self.out_bias,
            &self.layer_norm1,
            &self.layer_norm1_bias,
            &self.fc1,
            &self.fc1_bias,
            &self.fc2,
            &self.fc2_bias,
            &self.layer_norm2,
            &self.layer_norm2_bias,
        ]
    }

    fn ordered_mut(&mut self) -> [&mut Tensor; 16] {
        [
            &mut self.k_proj,
            &mut self.k_bias,
            &mut self.v_proj,
            &mut self.v_bias,
            &mut self.q_proj,
            &mut self.q_bias,
            &mut self.out_proj,
            &mut self.out_bias,
            &mut self.layer_norm1,
            &mut self.layer_norm1_bias,
            &mut self.fc1,
            &mut self.fc1_bias,
            &mut self.fc2,
            &mut self.fc2_bias,
            &mut self.layer_norm2,
            &mut self.layer_norm2_bias,
        ]
    }
}

/// The parameters of a SigLIP tower's embeddings and first encoder layers, or all their gradients.
#[derive(Debug)]
pub struct SiglipWeights {
    /// `[hidden, C, p, p]`: the patch embedding's convolution kernel.
    pub patch_embedding: Tensor,
    /// `[hidden]`.
    pub patch_bias: Tensor,
    /// `[patches, hidden]`: one learned embedding per patch position.
    pub position_embedding: Tensor,
    pub layers: Vec<SiglipLayerWeights>,
}

impl SiglipWeights {
    /// Reads the embeddings and the first `layers` encoder layers from `store` under `prefix`, converted to `dtype`
    /// on `device`. Missing tensors are reported together, by full name; tensors the tower does not use (later
    /// layers, `post_layernorm`, `head`, other models' weights) are left alone.
    pub fn load(
        store: &WeightStore,
        prefix: &str,
        config: &SiglipVisionConfig,
        layers: usize,
        dtype: DType,
        device: Device,
    ) -> Result<SiglipWeights> {
        if !dtype.is_float() {
            return Err(Error::DType { arg: "dtype", got: dtype, expected: "f32, bf16 or f16".into() });
        }
        check_layers(config, layers)?;
        let names = siglip_weight_names(config, layers);
        let missing: Vec<String> =
            names.iter().map(|(n, _)| format!("{prefix}{n}")).filter(|n| store.shape(n).is_none()).collect();
        if !missing.is_empty() {
            let shown: Vec<String> = missing.iter().take(8).map(|n| format!("`{n}`")).collect();
            let more = missing.len().saturating_sub(shown.len());
            let more = if more > 0 { format!(" and {more} more") } else { String::new() };
            return Err(Error::Checkpoint(format!(
                "{store:?} lacks the vision tower's {}{more} (prefix `{prefix}`, {layers} layers)",
                shown.join(", ")
            )));
        }
        SiglipWeights::from_fn(config, layers, |name, shape| {
            store.get_as(&format!("{prefix}{name}"), shape, dtype, device)
        })
    }

    /// Refuses weights holding NaN or ±inf, naming the first such tensor (a diverged or corrupt checkpoint).
    pub fn check_finite(&self) -> Result<()> {
        check_finite(self.named())
    }

    /// Builds every tensor with `make(name, shape)` (random weights for tests and benchmarks, weights from another
    /// source), in [`siglip_weight_names`] order; each result's shape is checked.
    pub fn from_fn(
        config: &SiglipVisionConfig,
        layers: usize,
        mut make: impl FnMut(&str, &[usize]) -> Result<Tensor>,
    ) -> Result<SiglipWeights> {
        config.validate()?;
        check_layers(config, layers)?;
        let mut entries = siglip_weight_names(config, layers).into_iter();
        SiglipWeights::from_ordered(layers, || {
            let (name, shape) = entries.next().ok_or_else(|| Error::Checkpoint("weight list ended early".into()))?;
            let tensor = make(&name, &shape)?;
            if tensor.shape() != shape.as_slice() {
                return Err(Error::Shape(format!("`{name}` is {:?}, expected {shape:?}", tensor.shape())));
            }
            Ok(tensor)
        })
    }

    fn from_ordered(layers: usize, mut next: impl FnMut() -> Result<Tensor>) -> Result<SiglipWeights> {
        Ok(SiglipWeights {
            patch_embedding: next()?,
            patch_bias: next()?,
            position_embedding: next()?,
            layers: (0..layers).map(|_| SiglipLayerWeights::from_ordered(&mut next)).collect::<Result<_>>()?,
        })
    }

    /// Zeros with the shapes, dtype and device of `self` (a gradient buffer).
    pub fn zeros_like(&self) -> Result<SiglipWeights> {
        let mut tensors = self.tensors().into_iter();
        SiglipWeights::from_ordered(self.layers.len(), || {
            let t = tensors.next().ok_or_else(|| Error::InvalidArgument("weight list ended early".into()))?;
            Tensor::zeros(t.shape(), t.dtype(), t.device())
        })
    }

    /// The tensors in [`siglip_weight_names`] order.
    pub fn tensors(&self) -> Vec<&Tensor> {
        let mut all = vec![&self.patch_embedding, &self.patch_bias, &self.position_embedding];
        all.extend(self.layers.iter().flat_map(|l| l.ordered()));
        all
    }

    /// `(name relative to the tower's prefix, tensor)` pairs in [`siglip_weight_names`] order.
    pub fn named(&self) -> Vec<(String, &Tensor)> {
        self.relative_names().into_iter().zip(self.tensors()).collect()
    }

    /// [`SiglipWeights::named`], writable: what an optimizer steps.
    pub fn named_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        let names = self.relative_names();
        let mut all = vec![&mut self.patch_embedding, &mut self.patch_bias, &mut self.position_embedding];
        all.extend(self.layers.iter_mut().flat_map(|l| l.ordered_mut()));
        names.into_iter().zip(all).collect()
    }

    /// The names of [`SiglipWeights::tensors`] relative to the tower's prefix, in order.
    fn relative_names(&self) -> Vec<String> {
        let mut names: Vec<String> = ["patch_embedding.weight", "patch_embedding.bias", "position_embedding.weight"]
            .iter()
            .map(|n| format!("embeddings.{n}"))
            .collect();
        for i in 0..self.layers.len() {
            names.extend(LAYER_TENSORS.iter().map(|n| format!("encoder.layers.{i}.{n}")));
        }
        names
    }

    /// Bytes held by all tensors.
    pub fn size_in_bytes(&self) -> usize {
        self.tensors().iter().map(|t| t.size_in_bytes()).sum()
    }
}

/// `layers` must not exceed the config's encoder.
pub(super) fn check_layers(config: &SiglipVisionConfig, layers: usize) -> Result<()> {
    if layers > config.num_hidden_layers {
        return Err(Error::InvalidArgument(format!(
            "the vision tower cannot run {layers} layers: its config has num_hidden_layers = {}",
            config.num_hidden_layers
        )));
    }
    Ok(())
}
