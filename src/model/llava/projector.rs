//! The multimodal projector: `linear_2(act(linear_1(x)))` over each vision feature, `act` the exact GELU
//! (`projector_hidden_act: "gelu"`, transformers' default and the original layout's `mlp2x_gelu`) or its tanh
//! approximation. Forward keeps the pre-activation and the activation for the backward, which gives the input's
//! gradient and the four parameters'.

use crate::ops::check;
use crate::ops::gelu::{gelu, gelu_backward_into, gelu_into, GeluApproximation};
use crate::ops::linear::{linear, linear_backward_into, linear_into};
use crate::runtime::{DType, Device, Tensor};
use crate::{Error, Result};

/// The projector's parameters as plain tensors, `(weight, bias)` per layer: `linear_1` `[H, C_vision]` and `[H]`,
/// `linear_2` `[H, H]` and `[H]`. The loader fills them from either layout (`model.multi_modal_projector.linear_{1,2}`
/// or `model.mm_projector.{0,2}`).
#[derive(Debug)]
pub struct ProjectorWeights {
    pub linear_1: (Tensor, Tensor),
    pub linear_2: (Tensor, Tensor),
}

/// What the forward keeps for the backward (`[.., H]` each).
#[derive(Debug)]
pub struct ProjectorActivations {
    /// `linear_1(x)`.
    pub pre_activation: Tensor,
    /// `act(linear_1(x))`, the input of `linear_2`.
    pub activation: Tensor,
}

/// The gradients of a projector backward, each in the dtype of what it differentiates.
#[derive(Debug)]
pub struct ProjectorGrads {
    pub grad_x: Tensor,
    /// `(weight, bias)` of `linear_1`.
    pub linear_1: (Tensor, Tensor),
    /// `(weight, bias)` of `linear_2`.
    pub linear_2: (Tensor, Tensor),
}

/// A projector ready to run.
#[derive(Debug)]
pub struct Projector {
    weights: ProjectorWeights,
    act: GeluApproximation,
}

impl Projector {
    /// Checks the weights' shapes, dtype and device, and reads the activation from its Hugging Face name
    /// (`projector_hidden_act`: `gelu`, `gelu_pytorch_tanh` or `gelu_new`).
    pub fn new(weights: ProjectorWeights, hidden_act: &str) -> Result<Projector> {
        let act = GeluApproximation::from_hidden_act(hidden_act)?;
        let ((w1, b1), (w2, b2)) = (&weights.linear_1, &weights.linear_2);
        let &[h, c] = w1.shape() else {
            return Err(Error::Shape(format!(
                "projector `linear_1.weight` must be [H, C_vision], got {:?}",
                w1.shape()
            )));
        };
        if h == 0 || c == 0 {
            return Err(Error::Shape(format!("projector `linear_1.weight` is empty: {:?}", w1.shape())));
        }
        for (name, t, shape) in
            [("linear_1.bias", b1, vec![h]), ("linear_2.weight", w2, vec![h, h]), ("linear_2.bias", b2, vec![h])]
        {
            if t.shape() != shape.as_slice() {
                return Err(Error::Shape(format!("projector `{name}` must be {shape:?}, got {:?}", t.shape())));
            }
        }
        for (name, t) in [("linear_1.bias", b1), ("linear_2.weight", w2), ("linear_2.bias", b2)] {
            if t.dtype() != w1.dtype() || t.device() != w1.device() {
                return Err(Error::InvalidArgument(format!(
                    "projector `{name}` is {} on {} but `linear_1.weight` is {} on {}",
                    t.dtype(),
                    t.device(),
                    w1.dtype(),
                    w1.device()
                )));
            }
        }
        Ok(Projector { weights, act })
    }

    pub fn weights(&self) -> &ProjectorWeights {
        &self.weights
    }

    /// The weights, writable in place (an optimizer's step; their shapes must not change).
    pub fn weights_mut(&mut self) -> &mut ProjectorWeights {
        &mut self.weights
    }

    /// The vision feature size `C_vision` the projector takes.
    pub fn input_size(&self) -> usize {
        self.weights.linear_1.0.shape()[1]
    }

    /// The language model's hidden size `H` the projector gives.
    pub fn output_size(&self) -> usize {
        self.weights.linear_1.0.shape()[0]
    }

    pub fn dtype(&self) -> DType {
        self.weights.linear_1.0.dtype()
    }

    pub fn device(&self) -> Device {
        self.weights.linear_1.0.device()
    }

    /// `x`'s shape with the last dimension `H`, when `x` holds no rows (a batch without images or videos): the
    /// linear ops refuse empty inputs, the projector gives empty outputs and zero parameter gradients.
    fn empty_output(&self, x: &Tensor) -> Result<Option<Vec<usize>>> {
        let c = x.shape().last().copied().unwrap_or(0);
        if c != self.input_size() {
            return Err(Error::Shape(format!(
                "the projector takes {} features per row but `x` has shape {:?}",
                self.input_size(),
                x.shape()
            )));
        }
        if x.numel() > 0 {
            return Ok(None);
        }
        let mut shape = x.shape().to_vec();
        *shape.last_mut().expect("rank checked above") = self.output_size();
        Ok(Some(shape))
    }

    /// `x` `[.., C_vision]` to `[.., H]`, with the activations the backward needs. An `x` with no rows gives an
    /// empty output.
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, ProjectorActivations)> {
        let ((w1, b1), (w2, b2)) = (&self.weights.linear_1, &self.weights.linear_2);
        if let Some(shape) = self.empty_output(x)? {
            let empty = || Tensor::zeros(&shape, x.dtype(), x.device());
            return Ok((empty()?, ProjectorActivations { pre_activation: empty()?, activation: empty()? }));
        }
        let pre_activation = linear(x, w1, Some(b1))?;
        let activation = gelu(&pre_activation, self.act)?;
        let y = linear(&activation, w2, Some(b2))?;
        Ok((y, ProjectorActivations { pre_activation, activation }))
    }

    /// [`Projector::forward`] into `saved` and `y`, each `[.., H]` over `x`'s rows (`x` not empty) in its dtype and on
    /// its device and overwritten whole: views of a pass's arena.
    pub fn forward_into(&self, x: &Tensor, saved: &mut ProjectorActivations, y: &mut Tensor) -> Result<()> {
        let ((w1, b1), (w2, b2)) = (&self.weights.linear_1, &self.weights.linear_2);
        if self.empty_output(x)?.is_some() {
            return Err(Error::Shape("`x` holds no rows: use `Projector::forward`".into()));
        }
        linear_into(x, w1, Some(b1), &mut saved.pre_activation)?;
        gelu_into(&saved.pre_activation, self.act, &mut saved.activation)?;
        linear_into(&saved.activation, w2, Some(b2), y)
    }

    /// The gradients of `Σ grad_y · forward(x)` from the forward's input `x` and `saved` activations.
    pub fn backward(&self, grad_y: &Tensor, x: &Tensor, saved: &ProjectorActivations) -> Result<ProjectorGrads> {
        let zeros = |t: &Tensor| Tensor::zeros(t.shape(), t.dtype(), t.device());
        let w = &self.weights;
        let mut grad_x = zeros(x)?;
        let mut params =
            [(zeros(&w.linear_1.0)?, zeros(&w.linear_1.1)?), (zeros(&w.linear_2.0)?, zeros(&w.linear_2.1)?)];
        self.backward_into(grad_y, x, saved, &mut grad_x, &mut params, None)?;
        let [linear_1, linear_2] = params;
        Ok(ProjectorGrads { grad_x, linear_1, linear_2 })
    }

    /// [`Projector::backward`] into `grad_x` (`x`'s shape) and `params`, `(weight, bias)` of `linear_1` and
    /// `linear_2` in the parameters' shapes, dtype and device: all checked before any is written, then overwritten
    /// whole (the buffers a training loop keeps). The gradients of the two saved activations go into `scratch` when
    /// given (buffers of their shapes, dtype and device, overwritten: a pass's arena), else into fresh tensors.
    pub fn backward_into(
        &self,
        grad_y: &Tensor,
        x: &Tensor,
        saved: &ProjectorActivations,
        grad_x: &mut Tensor,
        params: &mut [(Tensor, Tensor); 2],
        scratch: Option<&mut ProjectorActivations>,
    ) -> Result<()> {
        let ((w1, b1), (w2, b2)) = (&self.weights.linear_1, &self.weights.linear_2);
        let empty = self.empty_output(x)?.is_some();
        check::shape("grad_y", grad_y, saved.activation.shape())?;
        check::output("grad_x", grad_x, x.shape(), x.dtype(), x.device())?;
        let [(gw1, gb1), (gw2, gb2)] = params;
        let outputs = [("linear_1.weight", &*gw1, w1), ("linear_1.bias", gb1, b1), ("linear_2.weight", gw2, w2)];
        for (name, g, w) in outputs.into_iter().chain([("linear_2.bias", &*gb2, b2)]) {
            check::output(name, g, w.shape(), w.dtype(), w.device())?;
        }
        if let Some(s) = &scratch {
            let pre = ("the pre-activation's gradient scratch", &s.pre_activation, &saved.pre_activation);
            for (name, g, t) in [pre, ("the activation's gradient scratch", &s.activation, &saved.activation)] {
                check::output(name, g, t.shape(), t.dtype(), t.device())?;
            }
        }
        if empty {
            for t in [grad_x, gw1, gb1, gw2, gb2] {
                t.fill_zeros()?;
            }
            return Ok(());
        }
        let zeros = |t: &Tensor| Tensor::zeros(t.shape(), t.dtype(), t.device());
        let mut fresh = None;
        let grads = match scratch {
            Some(scratch) => scratch,
            None => fresh.insert(ProjectorActivations {
                pre_activation: zeros(&saved.pre_activation)?,
                activation: zeros(&saved.activation)?,
            }),
        };
        let (grad_pre, grad_activation) = (&mut grads.pre_activation, &mut grads.activation);
        linear_backward_into(grad_y, &saved.activation, w2, Some(b2), grad_activation, gw2, Some(gb2))?;
        gelu_backward_into(grad_activation, &saved.pre_activation, self.act, grad_pre)?;
        linear_backward_into(grad_pre, x, w1, Some(b1), grad_x, gw1, Some(gb1))
    }
}
