//! The causal language-modelling loss of a forward pass, through the fused LM-head kernels (no [N,T,V] logits):
//! the mean next-token negative log-likelihood over the tokens transformers counts (`labels = input_ids`, −100 at
//! padding, shifted by one).

use super::{ForwardPass, HeadGradient, OutputGrads, Qwen2Gradients, Qwen2Model};
use crate::ops::check;
use crate::ops::fused_linear::{
    fused_linear_logprobs, fused_linear_logprobs_backward_into, fused_linear_logprobs_extended,
    fused_linear_weighted_logprobs_backward_into, ExtraOutputs, FusedLinearConfig, FusedLinearGradsMut, LinearHead,
    WeightedUpstream,
};
use crate::ops::launch::host_ids;
use crate::ops::logprobs::SequenceLogProbs;
use crate::runtime::{DType, Tensor};
use crate::{Error, Result};

/// The loss and the gradient it hands back to [`Qwen2Model::backward`].
#[derive(Debug)]
pub struct CausalLmLoss {
    /// Mean negative log-likelihood over the counted next tokens.
    pub loss: f32,
    /// Next tokens counted: position t predicts token t + 1 when the mask at t + 1 is nonzero.
    pub tokens: usize,
    /// Each row's summed negative log-likelihood (per-task losses of a mixed batch).
    pub row_nll: Vec<f64>,
    pub grads: OutputGrads,
}

/// Labels [N,T] for next-token prediction: `ids[n, t+1]` where `mask[n, t+1] ≠ 0` and the id is not `excluded`,
/// −100 elsewhere.
fn next_token_labels(ids: &Tensor, mask: &Tensor, excluded: &[i64], ignore_index: i64) -> Result<(Vec<i64>, usize)> {
    let &[n, t] = ids.shape() else { unreachable!("checked by forward") };
    let (ids, mask) = (host_ids(ids)?, host_ids(mask)?);
    let mut counted = 0;
    let labels = (0..n * t)
        .map(|i| {
            let next = i + 1;
            if next % t != 0 && mask[next] != 0 && !excluded.contains(&ids[next]) {
                counted += 1;
                ids[next]
            } else {
                ignore_index
            }
        })
        .collect();
    Ok((labels, counted))
}

impl Qwen2Model {
    /// The causal-LM loss of `pass` over its own `ids` `[N,T]` (the ids the pass was run on), with its gradient.
    pub fn causal_lm_loss(&self, pass: &ForwardPass, ids: &Tensor, cfg: &FusedLinearConfig) -> Result<CausalLmLoss> {
        let mut grad_head = Tensor::zeros(self.weights.head().shape(), self.dtype(), self.device())?;
        check::shape("ids", ids, &pass.hidden().shape()[..2])?;
        check::integer("ids", ids)?;
        let labels = next_token_labels(ids, pass.mask(), &[], cfg.logprobs.ignore_index)?;
        let (loss, tokens, row_nll, hidden) = self.loss_into_head(pass, labels, cfg, &mut grad_head)?;
        let grads = OutputGrads { hidden, lm_head: HeadGradient::Tensor(grad_head) };
        Ok(CausalLmLoss { loss, tokens, row_nll, grads })
    }

    /// [`Qwen2Model::causal_lm_loss`] with the LM head's gradient written straight into `out`'s head buffer (the
    /// embedding's when the head is tied): no `[V,H]` gradient of its own, and [`Qwen2Model::backward_into`] with
    /// the same `out` then adds the embedding's share there. Pass the returned gradient to that call only.
    pub fn causal_lm_loss_into(
        &self,
        pass: &ForwardPass,
        ids: &Tensor,
        cfg: &FusedLinearConfig,
        out: &mut Qwen2Gradients,
    ) -> Result<CausalLmLoss> {
        self.causal_lm_loss_into_excluding(pass, ids, &[], cfg, out)
    }

    /// [`Qwen2Model::causal_lm_loss_into`] not counting the tokens whose id is in `excluded` (a multimodal model's
    /// image and video placeholders, as transformers' labels mask them).
    pub fn causal_lm_loss_into_excluding(
        &self,
        pass: &ForwardPass,
        ids: &Tensor,
        excluded: &[i64],
        cfg: &FusedLinearConfig,
        out: &mut Qwen2Gradients,
    ) -> Result<CausalLmLoss> {
        let buffer = self.head_gradient_buffer(out)?;
        check::shape("ids", ids, &pass.hidden().shape()[..2])?;
        check::integer("ids", ids)?;
        let labels = next_token_labels(ids, pass.mask(), excluded, cfg.logprobs.ignore_index)?;
        let (loss, tokens, row_nll, hidden) = self.loss_into_head(pass, labels, cfg, buffer)?;
        Ok(CausalLmLoss { loss, tokens, row_nll, grads: OutputGrads { hidden, lm_head: HeadGradient::InBuffers } })
    }

    /// [`Qwen2Model::causal_lm_loss_into`] on explicit `labels` `[N,T]` aligned with the ids (transformers'
    /// `labels`: shifted here, so token t is predicted from position t − 1), −100 (`cfg`'s ignore index) where
    /// nothing is learnt: an SFT batch's loss on assistant tokens only.
    pub fn causal_lm_loss_into_labels(
        &self,
        pass: &ForwardPass,
        labels: &[i64],
        cfg: &FusedLinearConfig,
        out: &mut Qwen2Gradients,
    ) -> Result<CausalLmLoss> {
        let buffer = self.head_gradient_buffer(out)?;
        let &[n, t, _] = pass.hidden().shape() else { unreachable!("the hidden states are [N,T,H]") };
        if labels.len() != n * t {
            return Err(Error::Shape(format!("`labels` has {} values, the pass is [{n}, {t}]", labels.len())));
        }
        let shifted = shift_labels(labels, t, cfg.logprobs.ignore_index);
        let (loss, tokens, row_nll, hidden) = self.loss_into_head(pass, shifted, cfg, buffer)?;
        Ok(CausalLmLoss { loss, tokens, row_nll, grads: OutputGrads { hidden, lm_head: HeadGradient::InBuffers } })
    }

    /// Each row's summed log-probability of its labelled tokens under the pass (a DPO completion's log-prob),
    /// through the fused head: `labels` `[N,T]` aligned with the ids as for
    /// [`Qwen2Model::causal_lm_loss_into_labels`] (−100, `cfg`'s ignore index, on prompt and padding). Keep the
    /// result for [`Qwen2Model::label_logps_backward_into`].
    ///
    /// The [`LabelExtras`] asked for are taken in the same pass through the head.
    pub fn label_logps(
        &self,
        pass: &ForwardPass,
        labels: &[i64],
        extras: LabelExtras<'_>,
        cfg: &FusedLinearConfig,
    ) -> Result<LabelLogps> {
        let token_weights = extras.token_weights;
        let &[n, t, _] = pass.hidden().shape() else { unreachable!("the hidden states are [N,T,H]") };
        if labels.len() != n * t {
            return Err(Error::Shape(format!("`labels` has {} values, the pass is [{n}, {t}]", labels.len())));
        }
        if let Some(w) = token_weights.filter(|w| w.len() != n * t) {
            return Err(Error::Shape(format!("`token_weights` has {} values, the pass is [{n}, {t}]", w.len())));
        }
        let (shifted, _) = shift_labels(labels, t, cfg.logprobs.ignore_index);
        let labels = Tensor::from_slice(&shifted, &[n, t], self.device())?;
        // Weights move with their labels: the weight of token t + 1 goes to position t, which predicts it.
        let shift_weights =
            |w: &[f32]| -> Vec<f32> { (0..w.len()).map(|i| if (i + 1) % t != 0 { w[i + 1] } else { 0.0 }).collect() };
        let token_weights =
            token_weights.map(|w| Tensor::from_slice(&shift_weights(w), &[n, t], self.device())).transpose()?;
        let mut cfg = cfg.clone();
        cfg.logprobs.reduction = crate::ops::logprobs::TokenReduction::Sum;
        let head = LinearHead { hidden: pass.hidden(), weight: self.weights.head(), bias: None };
        let to_f64 = |t: &Tensor| -> Result<Vec<f64>> { Ok(t.to_vec::<f32>()?.into_iter().map(f64::from).collect()) };
        let fused_extras = ExtraOutputs { token_weights: token_weights.as_ref(), log_collision: extras.log_collision };
        let out = fused_linear_logprobs_extended(head, &labels, None, fused_extras, &cfg)?;
        let weighted = out.weighted_logps.as_ref().map(to_f64).transpose()?;
        let log_collision = out.log_collision.as_ref().map(to_f64).transpose()?;
        let saved = out.logprobs;
        let logps = to_f64(&saved.logps)?;
        let tokens =
            saved.token_counts.to_dtype(DType::F32)?.to_vec::<f32>()?.into_iter().map(|c| c as usize).collect();
        Ok(LabelLogps { logps, tokens, weighted, log_collision, labels, token_weights, saved, cfg })
    }

    /// The gradient of `Σ_n grad_logps[n] · logps[n]` (`grad_logps` `[N]`), plus `grad_weighted[n] · weighted[n]`
    /// when the result was taken with token weights, of a [`Qwen2Model::label_logps`] result: the LM head's share
    /// written straight into `out`'s head buffer (as [`Qwen2Model::causal_lm_loss_into`] does), the hidden states'
    /// returned for [`Qwen2Model::backward_into`] with the same `out`.
    pub fn label_logps_backward_into(
        &self,
        pass: &ForwardPass,
        logps: &LabelLogps,
        grad_logps: &[f32],
        grad_weighted: Option<&[f32]>,
        out: &mut Qwen2Gradients,
    ) -> Result<OutputGrads> {
        let buffer = self.head_gradient_buffer(out)?;
        let n = logps.logps.len();
        let vector = |name: &str, values: &[f32]| {
            if values.len() != n {
                return Err(Error::Shape(format!("`{name}` has {} values for {n} rows", values.len())));
            }
            Tensor::from_f32(values, &[n], DType::F32, self.device())
        };
        let grad_logps = vector("grad_logps", grad_logps)?;
        let grad_weighted = grad_weighted.map(|g| vector("grad_weighted", g)).transpose()?;
        let upstream = match (&logps.token_weights, &grad_weighted) {
            (_, None) => HeadUpstream::Plain(&grad_logps),
            (Some(token_weights), Some(grad_weighted_logps)) => {
                HeadUpstream::Weighted(WeightedUpstream { grad_logps: &grad_logps, token_weights, grad_weighted_logps })
            }
            (None, Some(_)) => {
                return Err(Error::InvalidArgument(
                    "`grad_weighted` for log-probabilities taken without token weights".into(),
                ))
            }
        };
        let hidden = self.head_backward(pass, &logps.labels, &logps.saved, upstream, &logps.cfg, buffer)?;
        Ok(OutputGrads { hidden, lm_head: HeadGradient::InBuffers })
    }

    /// `out`'s buffer for the LM head's gradient (the embedding's when the head is tied), checked against the head.
    fn head_gradient_buffer<'a>(&self, out: &'a mut Qwen2Gradients) -> Result<&'a mut Tensor> {
        let head = self.weights.head();
        let buffer = match out.weights.lm_head.as_mut() {
            Some(lm_head) => lm_head,
            None => &mut out.weights.embed_tokens,
        };
        check::output("the head's gradient buffer", buffer, head.shape(), head.dtype(), head.device())?;
        Ok(buffer)
    }

    /// The loss, its token count, each row's summed NLL and the hidden states' gradient, from next-token labels
    /// (already shifted) and their count; the head's gradient overwrites `grad_head`.
    fn loss_into_head(
        &self,
        pass: &ForwardPass,
        (labels, tokens): (Vec<i64>, usize),
        cfg: &FusedLinearConfig,
        grad_head: &mut Tensor,
    ) -> Result<(f32, usize, Vec<f64>, Tensor)> {
        if tokens == 0 {
            return Err(Error::InvalidArgument(
                "the batch has no next token to predict (every sequence is shorter than 2 tokens)".into(),
            ));
        }
        let shape = &pass.hidden().shape()[..2];
        let labels = Tensor::from_slice(&labels, shape, self.device())?;
        let head = LinearHead { hidden: pass.hidden(), weight: self.weights.head(), bias: None };
        let mut cfg = cfg.clone();
        cfg.logprobs.reduction = crate::ops::logprobs::TokenReduction::Sum;
        let out = fused_linear_logprobs(head, &labels, None, &cfg)?;
        let row_nll: Vec<f64> = out.logps.to_vec::<f32>()?.iter().map(|&l| -f64::from(l)).collect();
        let total: f64 = row_nll.iter().sum();
        let n = shape[0];
        let grad_logps = Tensor::from_f32(&vec![-1.0 / tokens as f32; n], &[n], DType::F32, self.device())?;
        let grad_hidden = self.head_backward(pass, &labels, &out, HeadUpstream::Plain(&grad_logps), &cfg, grad_head)?;
        Ok(((total / tokens as f64) as f32, tokens, row_nll, grad_hidden))
    }

    /// The fused head's backward from per-row upstream gradients: the head's gradient overwrites `grad_head`, the
    /// hidden states' is returned.
    fn head_backward(
        &self,
        pass: &ForwardPass,
        labels: &Tensor,
        saved: &SequenceLogProbs,
        upstream: HeadUpstream<'_>,
        cfg: &FusedLinearConfig,
        grad_head: &mut Tensor,
    ) -> Result<Tensor> {
        let head = LinearHead { hidden: pass.hidden(), weight: self.weights.head(), bias: None };
        let mut grad_hidden = Tensor::zeros(pass.hidden().shape(), self.dtype(), self.device())?;
        let grads = FusedLinearGradsMut {
            grad_hidden: &mut grad_hidden,
            grad_weight: grad_head,
            grad_bias: None,
            accumulate: false,
        };
        match upstream {
            HeadUpstream::Plain(grad_logps) => {
                fused_linear_logprobs_backward_into(head, labels, None, saved, grad_logps, cfg, grads)?
            }
            HeadUpstream::Weighted(upstream) => {
                fused_linear_weighted_logprobs_backward_into(head, labels, None, saved, upstream, cfg, grads)?
            }
        }
        Ok(grad_hidden)
    }
}

/// The upstream gradient of the fused head's backward: of each row's log-probability, or also of its weighted one.
enum HeadUpstream<'a> {
    Plain(&'a Tensor),
    Weighted(WeightedUpstream<'a>),
}

/// What [`Qwen2Model::label_logps`] takes besides each row's log-probability, in the same pass through the head.
#[derive(Clone, Copy, Debug, Default)]
pub struct LabelExtras<'a> {
    /// `[N,T]` weights aligned with the labels: also each row's log-probability weighted per token
    /// ([`LabelLogps::weighted`]; LD-DPO's verbose tails).
    pub token_weights: Option<&'a [f32]>,
    /// Also each row's summed log collision probability ([`LabelLogps::log_collision`]; WPO's weights).
    pub log_collision: bool,
}

/// Per-row log-probabilities of labelled tokens ([`Qwen2Model::label_logps`]), with what their backward needs.
#[derive(Debug)]
pub struct LabelLogps {
    /// Each row's summed log-probability (f32 values, widened).
    pub logps: Vec<f64>,
    /// Each row's counted tokens.
    pub tokens: Vec<usize>,
    /// Each row's log-probability weighted per token, when taken with token weights.
    pub weighted: Option<Vec<f64>>,
    /// Each row's summed `log Σ_v p_v²` over its labelled tokens, when asked for.
    pub log_collision: Option<Vec<f64>>,
    /// The shifted labels the fused head ran on.
    labels: Tensor,
    /// The shifted token weights, when given.
    token_weights: Option<Tensor>,
    saved: SequenceLogProbs,
    cfg: FusedLinearConfig,
}

/// Next-token labels from labels aligned with the ids (token t is predicted at position t − 1, nothing at a row's
/// last position), and how many count.
fn shift_labels(labels: &[i64], t: usize, ignore: i64) -> (Vec<i64>, usize) {
    let mut counted = 0;
    let shifted = (0..labels.len())
        .map(|i| match labels.get(i + 1) {
            Some(&label) if (i + 1) % t != 0 && label != ignore => {
                counted += 1;
                label
            }
            _ => ignore,
        })
        .collect();
    (shifted, counted)
}
