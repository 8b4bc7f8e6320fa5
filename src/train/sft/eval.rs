//! Held-out evaluation of an SFT trainer's model: per task, the mean next-token loss and the token accuracy (the
//! head's argmax equal to the label) over the labelled tokens, with nothing updated. The logits of the labelled
//! positions are computed a chunk of rows at a time (never `[N,T,V]`), and the loss in f64 from them.

use super::bench::bench_log_entries;
use super::SftTrainer;
use crate::judge::bench::BenchSummary;
use crate::ops::linear::linear;
use crate::ops::rows::copy_rows;
use crate::runtime::{DType, Tensor};
use crate::train::data::SequenceBatch;
use crate::{Error, Result};

/// Metrics over a held-out set.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EvalMetrics {
    /// Mean negative log-likelihood over all labelled next tokens.
    pub loss: f64,
    /// Share of labelled next tokens whose argmax is the label.
    pub accuracy: f64,
    pub tokens: usize,
    /// Per task: its mean loss and accuracy, `None` when it has no labelled token.
    pub task_loss: Vec<Option<f64>>,
    pub task_accuracy: Vec<Option<f64>>,
    pub task_tokens: Vec<usize>,
}

impl EvalMetrics {
    /// The line of a `metrics.jsonl` log of an evaluation after step `step` (keys `eval/...`).
    pub fn log_line(&self, step: u64) -> serde_json::Value {
        serde_json::json!({
            "step": step, "eval/loss": self.loss, "eval/accuracy": self.accuracy, "eval/tokens": self.tokens,
            "eval/task_loss": self.task_loss, "eval/task_accuracy": self.task_accuracy,
        })
    }
}

/// One evaluation of an SFT run, after step `step`: the held-out conversations' metrics and the benchmark's
/// summary, those the run has.
#[derive(Clone, Debug, PartialEq)]
pub struct SftEvaluation {
    pub step: u64,
    pub held_out: Option<EvalMetrics>,
    pub bench: Option<BenchSummary>,
}

impl SftEvaluation {
    /// Its line of a `metrics.jsonl` log: [`EvalMetrics::log_line`]'s keys and [`bench_log_entries`]'.
    pub fn log_line(&self) -> serde_json::Value {
        let mut line = serde_json::Map::from_iter([("step".to_string(), serde_json::json!(self.step))]);
        if let Some(serde_json::Value::Object(held_out)) = self.held_out.as_ref().map(|m| m.log_line(self.step)) {
            line.extend(held_out);
        }
        if let Some(bench) = &self.bench {
            line.extend(bench_log_entries(bench));
        }
        serde_json::Value::Object(line)
    }
}

/// Sums over tokens.
#[derive(Clone, Copy, Default)]
struct Sums {
    nll: f64,
    correct: usize,
    tokens: usize,
}

impl SftTrainer {
    /// The model's loss and token accuracy on `batches`, per task, without touching parameters, gradients or the
    /// optimizer. The batches are checked as [`SftTrainer::step`] checks them.
    pub fn evaluate(&self, batches: &[SequenceBatch]) -> Result<EvalMetrics> {
        let tasks = self.config.tasks;
        let mut sums = vec![Sums::default(); tasks];
        for (i, batch) in batches.iter().enumerate() {
            let in_batch = |e: String| Error::InvalidArgument(format!("evaluation batch {i}: {e}"));
            self.check_batch(batch).map_err(in_batch)?;
            let prepared = self.model.prepare(batch).map_err(|e| in_batch(e.to_string()))?;
            let pass = self.model.forward(&prepared, self.config.forward)?;
            for (row, row_sums) in self.row_sums(pass.lm().hidden(), batch)?.into_iter().enumerate() {
                let task = &mut sums[batch.tasks[row]];
                task.nll += row_sums.nll;
                task.correct += row_sums.correct;
                task.tokens += row_sums.tokens;
            }
        }
        let total = sums.iter().fold(Sums::default(), |a, s| Sums {
            nll: a.nll + s.nll,
            correct: a.correct + s.correct,
            tokens: a.tokens + s.tokens,
        });
        if total.tokens == 0 {
            return Err(Error::InvalidArgument("the evaluation data has no labelled token".into()));
        }
        let mean = |x: f64, n: usize| (n > 0).then(|| x / n as f64);
        Ok(EvalMetrics {
            loss: total.nll / total.tokens as f64,
            accuracy: total.correct as f64 / total.tokens as f64,
            tokens: total.tokens,
            task_loss: sums.iter().map(|s| mean(s.nll, s.tokens)).collect(),
            task_accuracy: sums.iter().map(|s| mean(s.correct as f64, s.tokens)).collect(),
            task_tokens: sums.iter().map(|s| s.tokens).collect(),
        })
    }

    /// Each row's summed loss, correct argmaxes and labelled next tokens, from the final hidden states `[N,T,H]`.
    fn row_sums(&self, hidden: &Tensor, batch: &SequenceBatch) -> Result<Vec<Sums>> {
        let ignore = self.config.head.logprobs.ignore_index;
        let t = batch.len;
        // Position p predicts the label at p + 1 within its row.
        let counted: Vec<(usize, usize)> = (0..batch.rows * t)
            .filter(|p| (p + 1) % t != 0 && batch.labels[p + 1] != ignore)
            .map(|p| (p, p / t))
            .collect();
        let head = self.model.language_model().weights.head();
        let (vocab, width) = (head.shape()[0], head.shape()[1]);
        let chunk = self.config.head.chunk_tokens_for(vocab);
        let mut sums = vec![Sums::default(); batch.rows];
        for part in counted.chunks(chunk) {
            let positions: Vec<usize> = part.iter().map(|&(p, _)| p).collect();
            let mut rows = Tensor::zeros(&[part.len(), width], hidden.dtype(), hidden.device())?;
            copy_rows(hidden, &positions, &mut rows, &(0..part.len()).collect::<Vec<_>>())?;
            let logits = linear(&rows, head, None)?.to_dtype(DType::F32)?.to_vec::<f32>()?;
            for (&(p, row), logits) in part.iter().zip(logits.chunks_exact(vocab)) {
                let label = batch.labels[p + 1] as usize;
                let (argmax, max) =
                    logits.iter().enumerate().fold(
                        (0, f32::NEG_INFINITY),
                        |(i, m), (j, &x)| {
                            if x > m {
                                (j, x)
                            } else {
                                (i, m)
                            }
                        },
                    );
                let max = f64::from(max);
                let lse = max + logits.iter().map(|&x| (f64::from(x) - max).exp()).sum::<f64>().ln();
                let s = &mut sums[row];
                s.nll += lse - f64::from(logits[label]);
                s.correct += usize::from(argmax == label);
                s.tokens += 1;
            }
        }
        Ok(sums)
    }
}
