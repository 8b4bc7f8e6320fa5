//! `Qwen2Weights`: every parameter of a Qwen2 decoder (or, with the same layout, every gradient), under the names
//! and in the order of [`qwen2_weight_names`](crate::model::qwen2_weight_names) (or, for a decoder nested in a
//! larger checkpoint, of [`qwen2_weight_names_under`] its [`Qwen2Names`]). Loaded from a [`WeightStore`] in one
//! compute dtype on one device.

use crate::model::loading::check_finite;
use crate::model::weights::{qwen2_weight_names_under, Qwen2Names, QWEN2_LAYER_TENSORS};
use crate::model::{LoadOptions, LoadReport, Qwen2Config, WeightStore};
use crate::runtime::{DType, Device, Tensor};
use crate::{Error, Result};

/// The parameters of one decoder layer (projection weights are [out, in], as in PyTorch).
#[derive(Debug)]
pub struct LayerWeights {
    pub q_proj: Tensor,
    pub q_bias: Tensor,
    pub k_proj: Tensor,
    pub k_bias: Tensor,
    pub v_proj: Tensor,
    pub v_bias: Tensor,
    pub o_proj: Tensor,
    pub gate_proj: Tensor,
    pub up_proj: Tensor,
    pub down_proj: Tensor,
    pub input_layernorm: Tensor,
    pub post_attention_layernorm: Tensor,
}

impl LayerWeights {
    fn from_ordered(mut next: impl FnMut() -> Result<Tensor>) -> Result<LayerWeights> {
        Ok(LayerWeights {
            q_proj: next()?,
            q_bias: next()?,
            k_proj: next()?,
            k_bias: next()?,
            v_proj: next()?,
            v_bias: next()?,
            o_proj: next()?,
            gate_proj: next()?,
            up_proj: next()?,
            down_proj: next()?,
            input_layernorm: next()?,
            post_attention_layernorm: next()?,
        })
    }

    fn ordered(&self) -> [&Tensor; 12] {
        [
            &self.q_proj,
            &self.q_bias,
            &self.k_proj,
            &self.k_bias,
            &self.v_proj,
            &self.v_bias,
            &self.o_proj,
            &self.gate_proj,
            &self.up_proj,
            &self.down_proj,
            &self.input_layernorm,
            &self.post_attention_layernorm,
        ]
    }

    fn ordered_mut(&mut self) -> [&mut Tensor; 12] {
        [
            &mut self.q_proj,
            &mut self.q_bias,
            &mut self.k_proj,
            &mut self.k_bias,
            &mut self.v_proj,
            &mut self.v_bias,
            &mut self.o_proj,
            &mut self.gate_proj,
            &mut self.up_proj,
            &mut self.down_proj,
            &mut self.input_layernorm,
            &mut self.post_attention_layernorm,
        ]
    }
}

/// All parameters of a Qwen2 decoder, or all their gradients.
#[derive(Debug)]
pub struct Qwen2Weights {
    /// `[V,H]`. With tied embeddings it is also the LM head (and, as a gradient, holds both shares).
    pub embed_tokens: Tensor,
    pub layers: Vec<LayerWeights>,
    /// `[H]`: the final RMSNorm.
    pub norm: Tensor,
    /// `[V,H]`, absent when the LM head is tied to `embed_tokens`.
    pub lm_head: Option<Tensor>,
    /// The checkpoint's names for these tensors ([`Qwen2Weights::named`]).
    names: Qwen2Names,
}

impl Qwen2Weights {
    /// Reads every tensor of `config`'s model from `store`, converted to `dtype` on `device`, after checking that
    /// the checkpoint holds exactly those names and shapes (all problems reported at once).
    pub fn load(store: &WeightStore, config: &Qwen2Config, dtype: DType, device: Device) -> Result<Qwen2Weights> {
        Qwen2Weights::load_with(store, config, dtype, device, &LoadOptions::default()).map(|(weights, _)| weights)
    }

    /// [`Qwen2Weights::load`] under `options`: lenient about unused tensors, checking that weights are finite.
    pub fn load_with(
        store: &WeightStore,
        config: &Qwen2Config,
        dtype: DType,
        device: Device,
        options: &LoadOptions,
    ) -> Result<(Qwen2Weights, LoadReport)> {
        check_float(dtype)?;
        let ignored = store.check_qwen2_with(config, options.lenient)?;
        let weights = Qwen2Weights::from_fn(config, |name, shape| store.get_as(name, shape, dtype, device))?;
        if options.check_finite {
            check_finite(weights.named())?;
        }
        Ok((weights, LoadReport { ignored }))
    }

    /// Reads the decoder stored under `names` in a larger checkpoint (a multimodal model's language model), after
    /// checking its layer count, names, shapes and dtypes. The checkpoint's other tensors are the caller's to account
    /// for; [`Qwen2Weights::named`] gives these under the checkpoint's names.
    pub fn load_under(
        store: &WeightStore,
        config: &Qwen2Config,
        names: &Qwen2Names,
        dtype: DType,
        device: Device,
    ) -> Result<Qwen2Weights> {
        check_float(dtype)?;
        store.check_present(&store.qwen2_expected(config, names)?)?;
        Qwen2Weights::from_fn_under(config, names, |name, shape| store.get_as(name, shape, dtype, device))
    }

    /// Builds every tensor of `config`'s model with `make(name, shape)` (random weights for benchmarks, weights from
    /// another source), in [`qwen2_weight_names`](crate::model::qwen2_weight_names) order; each result's shape is
    /// checked.
    pub fn from_fn(config: &Qwen2Config, make: impl FnMut(&str, &[usize]) -> Result<Tensor>) -> Result<Qwen2Weights> {
        Qwen2Weights::from_fn_under(config, &Qwen2Names::default(), make)
    }

    /// [`Qwen2Weights::from_fn`] for a decoder named as in `names` (`make` receives those names).
    pub fn from_fn_under(
        config: &Qwen2Config,
        names: &Qwen2Names,
        mut make: impl FnMut(&str, &[usize]) -> Result<Tensor>,
    ) -> Result<Qwen2Weights> {
        config.validate()?;
        let mut entries = qwen2_weight_names_under(config, names).into_iter();
        Qwen2Weights::from_ordered(config, names.clone(), || {
            let (name, shape) = entries.next().ok_or_else(|| Error::Checkpoint("weight list ended early".into()))?;
            let tensor = make(&name, &shape)?;
            if tensor.shape() != shape.as_slice() {
                return Err(Error::Shape(format!("`{name}` is {:?}, expected {shape:?}", tensor.shape())));
            }
            Ok(tensor)
        })
    }

    /// Zeros with the shapes, dtype and device of `self` (a gradient buffer).
    pub fn zeros_like(&self) -> Result<Qwen2Weights> {
        let mut tensors = self.tensors().into_iter();
        let mut next = || -> Result<Tensor> {
            let t = tensors.next().ok_or_else(|| Error::InvalidArgument("weight list ended early".into()))?;
            Tensor::zeros(t.shape(), t.dtype(), t.device())
        };
        let embed_tokens = next()?;
        let layers = (0..self.layers.len()).map(|_| LayerWeights::from_ordered(&mut next)).collect::<Result<_>>()?;
        let norm = next()?;
        let lm_head = self.lm_head.as_ref().map(|_| next()).transpose()?;
        Ok(Qwen2Weights { embed_tokens, layers, norm, lm_head, names: self.names.clone() })
    }

    fn from_ordered(
        config: &Qwen2Config,
        names: Qwen2Names,
        mut next: impl FnMut() -> Result<Tensor>,
    ) -> Result<Qwen2Weights> {
        let embed_tokens = next()?;
        let layers =
            (0..config.num_hidden_layers).map(|_| LayerWeights::from_ordered(&mut next)).collect::<Result<_>>()?;
        let norm = next()?;
        let lm_head = if config.tie_word_embeddings { None } else { Some(next()?) };
        Ok(Qwen2Weights { embed_tokens, layers, norm, lm_head, names })
    }

    /// Where these tensors sit in their checkpoint.
    pub fn names(&self) -> &Qwen2Names {
        &self.names
    }

    /// The LM head's weight `[V,H]`: `lm_head`, or the embeddings when tied.
    pub fn head(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    /// The tensors in [`qwen2_weight_names`](crate::model::qwen2_weight_names) order.
    pub fn tensors(&self) -> Vec<&Tensor> {
        let mut all = vec![&self.embed_tokens];
        all.extend(self.layers.iter().flat_map(|l| l.ordered()));
        all.push(&self.norm);
        all.extend(self.lm_head.as_ref());
        all
    }

    /// `(checkpoint name, tensor)` pairs in [`qwen2_weight_names`](crate::model::qwen2_weight_names) order (what a
    /// checkpoint or a gradient dictionary holds), under the names the weights were loaded with
    /// ([`Qwen2Weights::names`]).
    pub fn named(&self) -> Vec<(String, &Tensor)> {
        self.checkpoint_names().into_iter().zip(self.tensors()).collect()
    }

    /// The tensors in [`qwen2_weight_names`](crate::model::qwen2_weight_names) order, writable (an optimizer's
    /// step).
    pub fn tensors_mut(&mut self) -> Vec<&mut Tensor> {
        let mut all = vec![&mut self.embed_tokens];
        all.extend(self.layers.iter_mut().flat_map(|l| l.ordered_mut()));
        all.push(&mut self.norm);
        all.extend(self.lm_head.as_mut());
        all
    }

    /// [`Qwen2Weights::named`], writable: what an optimizer steps.
    pub fn named_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        self.checkpoint_names().into_iter().zip(self.tensors_mut()).collect()
    }

    /// The checkpoint names of [`Qwen2Weights::tensors`], in order.
    fn checkpoint_names(&self) -> Vec<String> {
        let n = &self.names;
        let mut names = vec![n.embed_tokens()];
        for i in 0..self.layers.len() {
            names.extend(QWEN2_LAYER_TENSORS.iter().map(|t| n.layer(i, t)));
        }
        names.push(n.norm());
        if self.lm_head.is_some() {
            names.push(n.lm_head.clone());
        }
        names
    }

    /// Bytes held by all tensors.
    pub fn size_in_bytes(&self) -> usize {
        self.tensors().iter().map(|t| t.size_in_bytes()).sum()
    }

    /// Number of scalar parameters.
    pub fn numel(&self) -> usize {
        self.tensors().iter().map(|t| t.numel()).sum()
    }
}

fn check_float(dtype: DType) -> Result<()> {
    if dtype.is_float() {
        Ok(())
    } else {
        Err(Error::DType { arg: "dtype", got: dtype, expected: "f32, bf16 or f16".into() })
    }
}
