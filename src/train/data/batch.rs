//! Padding examples into a batch: right-padded ids, an attention mask, labels ignored on padding (and, for pairs,
//! on the prompt), each row's task and media.

use super::dataset::{PairExample, RankingExample, SftExample};
use super::record::MediaRef;
use super::tokenize::IGNORE_INDEX;
use crate::runtime::{Device, Tensor};
use crate::Result;

/// Sequences padded on the right to one length, row-major `[rows, len]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SequenceBatch {
    pub rows: usize,
    pub len: usize,
    pub ids: Vec<i64>,
    /// 1 on tokens, 0 on padding.
    pub mask: Vec<i64>,
    /// Aligned with `ids` (the loss shifts them): [`IGNORE_INDEX`] where nothing is learnt.
    pub labels: Vec<i64>,
    /// Each row's task index.
    pub tasks: Vec<usize>,
    /// Each row's media, in placeholder order.
    pub media: Vec<Vec<MediaRef>>,
}

/// One row before padding.
struct Row<'a> {
    ids: Vec<i64>,
    labels: Vec<i64>,
    task: usize,
    media: &'a [MediaRef],
}

fn pad(rows: Vec<Row<'_>>, pad_id: u32) -> SequenceBatch {
    let len = rows.iter().map(|r| r.ids.len()).max().unwrap_or(0);
    let mut batch = SequenceBatch {
        rows: rows.len(),
        len,
        ids: Vec::with_capacity(rows.len() * len),
        mask: Vec::with_capacity(rows.len() * len),
        labels: Vec::with_capacity(rows.len() * len),
        tasks: Vec::with_capacity(rows.len()),
        media: Vec::with_capacity(rows.len()),
    };
    for row in rows {
        let padding = len - row.ids.len();
        batch.ids.extend(row.ids.iter().copied().chain(std::iter::repeat_n(i64::from(pad_id), padding)));
        batch.mask.extend(std::iter::repeat_n(1, row.ids.len()).chain(std::iter::repeat_n(0, padding)));
        batch.labels.extend(row.labels.iter().copied().chain(std::iter::repeat_n(IGNORE_INDEX, padding)));
        batch.tasks.push(row.task);
        batch.media.push(row.media.to_vec());
    }
    batch
}

impl SequenceBatch {
    /// `ids`, `mask` and `labels` as `[rows, len]` i64 tensors on `device`.
    pub fn tensors(&self, device: Device) -> Result<[Tensor; 3]> {
        let shape = [self.rows, self.len];
        Ok([
            Tensor::from_slice(&self.ids, &shape, device)?,
            Tensor::from_slice(&self.mask, &shape, device)?,
            Tensor::from_slice(&self.labels, &shape, device)?,
        ])
    }

    /// Labels of `row` a next-token loss counts: those other than `ignore` past the row's first position
    /// (position 0 is never predicted).
    pub fn predicted_labels(&self, row: usize, ignore: i64) -> usize {
        self.labels[row * self.len..(row + 1) * self.len].iter().skip(1).filter(|&&l| l != ignore).count()
    }

    /// Tokens carrying a label, per task index (`tasks` long): the weights of per-task loss averages.
    pub fn labelled_tokens_per_task(&self, tasks: usize) -> Vec<usize> {
        let mut counts = vec![0; tasks];
        for (row, labels) in self.labels.chunks(self.len.max(1)).enumerate().take(self.rows) {
            if let Some(count) = counts.get_mut(self.tasks[row]) {
                *count += labels.iter().filter(|&&l| l != IGNORE_INDEX).count();
            }
        }
        counts
    }
}

/// Conversations padded into one batch with `pad_id`.
pub fn collate_conversations(examples: &[&SftExample], pad_id: u32) -> SequenceBatch {
    let rows = examples
        .iter()
        .map(|e| Row { ids: e.ids.clone(), labels: e.labels.clone(), task: e.task, media: &e.media })
        .collect();
    pad(rows, pad_id)
}

/// Prompt + completion as one row, labels on the completion only.
fn completion_row<'a>(prompt: &[i64], completion: &[u32], task: usize, media: &'a [MediaRef]) -> Row<'a> {
    let ids: Vec<i64> = prompt.iter().copied().chain(completion.iter().map(|&id| i64::from(id))).collect();
    let labels =
        std::iter::repeat_n(IGNORE_INDEX, prompt.len()).chain(completion.iter().map(|&id| i64::from(id))).collect();
    Row { ids, labels, task, media }
}

/// Pairs as one batch of `2·n` rows (TRL's concatenated forward): prompt + chosen in rows `0..n`, prompt + rejected
/// in rows `n..2n`, padded to one length; labels on the completions only.
pub fn collate_pairs(examples: &[&PairExample], pad_id: u32) -> SequenceBatch {
    let chosen = examples.iter().map(|e| completion_row(&e.prompt, &e.chosen, e.task, &e.media));
    let rejected = examples.iter().map(|e| completion_row(&e.prompt, &e.rejected, e.task, &e.media));
    pad(chosen.chain(rejected).collect(), pad_id)
}

/// G ranked lists of K responses each as one batch of `K·G` rows, response-major as [`collate_pairs`] lays pairs
/// out: row `k·G + g` is prompt `g` + its `k`-th best response; labels on the responses only. Every example must
/// hold K responses.
pub fn collate_rankings(examples: &[&RankingExample], pad_id: u32) -> SequenceBatch {
    let k = examples.first().map_or(0, |e| e.responses.len());
    let rows = (0..k)
        .flat_map(|rank| examples.iter().map(move |e| completion_row(&e.prompt, &e.responses[rank], e.task, &e.media)))
        .collect();
    pad(rows, pad_id)
}
