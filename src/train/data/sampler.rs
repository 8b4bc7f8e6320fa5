//! The order examples are trained in: each epoch's plan (which examples, in which batches) is a pure function of
//! the seed and the epoch number, so a run resumed from a [`LoaderState`] sees exactly the batches an
//! uninterrupted run would.
//!
//! An epoch's plan: each task contributes `round(weight · n)` of its `n` examples (whole copies of the task, then a
//! random subset for the fraction), all are shuffled together, and, when grouping by length, cut into mega-batches
//! of `batch_size · group_factor` whose examples are sorted by length (longest first) before they are cut into
//! batches (transformers' `LengthGroupedSampler`), whose order is shuffled in turn.
//!
//! Randomness: ChaCha8 (`rand_chacha`, a portable, documented stream cipher) keyed by the seed's 8 little-endian
//! bytes followed by 24 zero bytes, on stream number `epoch`; an index below `n` is the high 64 bits of
//! `next_u64() · n`, and shuffles are Fisher–Yates from the last element down. The same seed gives the same batches
//! on every platform and version of this crate.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::dataset::{PairDataset, RankingDataset, SftDataset};
use crate::train::fingerprint::Fingerprint;
use crate::{Error, Result};

/// The largest task weight (an epoch is held in memory as a list of example indices).
pub const MAX_TASK_WEIGHT: f64 = 1000.0;

/// How batches are drawn.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    pub batch_size: usize,
    pub seed: u64,
    /// Batch examples of similar lengths together (less padding).
    pub group_by_length: bool,
    /// Mega-batches hold this many batches when grouping by length (transformers uses 50).
    pub group_factor: usize,
    /// `(task, weight)`: how many times a task's examples are seen per epoch (0.5: a random half, 2: each twice, 0:
    /// none); tasks not listed have weight 1.
    pub task_weights: Vec<(String, f64)>,
    /// Leave out an epoch's last batch when it is smaller than `batch_size`.
    pub drop_last: bool,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            batch_size: 1,
            seed: 0,
            group_by_length: true,
            group_factor: 50,
            task_weights: Vec::new(),
            drop_last: false,
        }
    }
}

/// Where a loader stands: saved beside a checkpoint, restored by [`BatchSampler::restore`]. Together with the
/// [`SamplerConfig`] it determines every later batch (the random generator of an epoch is re-derived from `seed`
/// and `epoch`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    pub seed: u64,
    pub epoch: u64,
    /// Batches of `epoch` already handed out.
    pub batches_done: usize,
    /// The dataset's example count, checked on restore (a different file would silently change the plan).
    pub examples: usize,
    /// FNV-1a (64-bit) of everything else the plan depends on: the batch size, length grouping, drop-last, the task
    /// weights, and every example's length and task, as little-endian integers (weights as their f64 bits).
    /// Checked on restore.
    pub fingerprint: u64,
}

/// A batch's place and examples.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchIndices {
    pub epoch: u64,
    /// Index of the batch within its epoch.
    pub step: usize,
    /// Indices into the dataset's examples.
    pub examples: Vec<usize>,
}

/// Draws batches of example indices, epoch after epoch.
#[derive(Clone, Debug)]
pub struct BatchSampler {
    config: SamplerConfig,
    lengths: Vec<usize>,
    tasks: Vec<usize>,
    weights: Vec<f64>,
    state: LoaderState,
    plan: Vec<Vec<usize>>,
}

/// The generator of one epoch's plan (see the module's documentation).
fn epoch_rng(seed: u64, epoch: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let mut rng = ChaCha8Rng::from_seed(key);
    rng.set_stream(epoch);
    rng
}

/// A uniform index below `n` (n ≥ 1).
fn below(rng: &mut ChaCha8Rng, n: usize) -> usize {
    ((u128::from(rng.next_u64()) * n as u128) >> 64) as usize
}

fn shuffle<T>(rng: &mut ChaCha8Rng, items: &mut [T]) {
    for i in (1..items.len()).rev() {
        items.swap(i, below(rng, i + 1));
    }
}

impl BatchSampler {
    /// Over examples of `lengths` (tokens) and `tasks` (indices into `task_names`).
    pub fn new(lengths: Vec<usize>, tasks: Vec<usize>, task_names: &[String], config: SamplerConfig) -> Result<Self> {
        if config.batch_size == 0 || config.group_factor == 0 {
            return Err(Error::InvalidArgument("batch_size and group_factor must be at least 1".into()));
        }
        if lengths.len() != tasks.len() || tasks.iter().any(|&t| t >= task_names.len()) {
            return Err(Error::InvalidArgument("every example needs a length and a known task".into()));
        }
        let mut weights = vec![1.0; task_names.len()];
        for (name, weight) in &config.task_weights {
            let task = task_names.iter().position(|t| t == name).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "task weight for `{name}`, a task the data does not have ({task_names:?})"
                ))
            })?;
            if !(0.0..=MAX_TASK_WEIGHT).contains(weight) {
                return Err(Error::InvalidArgument(format!(
                    "task `{name}` has weight {weight}; weights are between 0 and {MAX_TASK_WEIGHT}"
                )));
            }
            weights[task] = *weight;
        }
        let state =
            LoaderState { seed: config.seed, epoch: 0, batches_done: 0, examples: lengths.len(), fingerprint: 0 };
        let mut sampler = BatchSampler { config, lengths, tasks, weights, state, plan: Vec::new() };
        sampler.state.fingerprint = sampler.fingerprint();
        sampler.plan = sampler.plan_epoch(0);
        if sampler.plan.is_empty() {
            return Err(Error::InvalidArgument("an epoch has no batch: no examples, or every task weighs 0".into()));
        }
        Ok(sampler)
    }

    /// Over a conversation dataset (lengths in tokens).
    pub fn for_conversations(data: &SftDataset, config: SamplerConfig) -> Result<Self> {
        let lengths = data.examples.iter().map(|e| e.ids.len()).collect();
        BatchSampler::new(lengths, data.examples.iter().map(|e| e.task).collect(), &data.tasks, config)
    }

    /// Over a pair dataset (lengths: the prompt and the longer completion).
    pub fn for_pairs(data: &PairDataset, config: SamplerConfig) -> Result<Self> {
        let lengths = data.examples.iter().map(|e| e.len()).collect();
        BatchSampler::new(lengths, data.examples.iter().map(|e| e.task).collect(), &data.tasks, config)
    }

    /// Over a ranked-list dataset (lengths: the prompt and the longest response).
    pub fn for_rankings(data: &RankingDataset, config: SamplerConfig) -> Result<Self> {
        let lengths = data.examples.iter().map(|e| e.len()).collect();
        BatchSampler::new(lengths, data.examples.iter().map(|e| e.task).collect(), &data.tasks, config)
    }

    fn plan_epoch(&self, epoch: u64) -> Vec<Vec<usize>> {
        let mut rng = epoch_rng(self.config.seed, epoch);
        let mut chosen = Vec::new();
        for (task, &weight) in self.weights.iter().enumerate() {
            let mut members: Vec<usize> = (0..self.tasks.len()).filter(|&i| self.tasks[i] == task).collect();
            let n = members.len();
            let take = (weight * n as f64).round() as usize;
            for _ in 0..take / n.max(1) {
                chosen.extend_from_slice(&members);
            }
            shuffle(&mut rng, &mut members);
            chosen.extend_from_slice(&members[..take % n.max(1)]);
        }
        shuffle(&mut rng, &mut chosen);
        let size = self.config.batch_size;
        if self.config.group_by_length {
            for mega in chosen.chunks_mut(size * self.config.group_factor) {
                mega.sort_by_key(|&i| std::cmp::Reverse(self.lengths[i]));
            }
        }
        let mut batches: Vec<Vec<usize>> = chosen.chunks(size).map(<[usize]>::to_vec).collect();
        if self.config.drop_last && batches.last().is_some_and(|b| b.len() < size) {
            batches.pop();
        }
        if self.config.group_by_length {
            shuffle(&mut rng, &mut batches);
        }
        batches
    }

    /// See [`LoaderState::fingerprint`].
    fn fingerprint(&self) -> u64 {
        let c = &self.config;
        let head = [c.batch_size as u64, u64::from(c.group_by_length), c.group_factor as u64, u64::from(c.drop_last)];
        let weights = self.weights.iter().map(|w| w.to_bits());
        let examples = self.lengths.iter().zip(&self.tasks).flat_map(|(&l, &t)| [l as u64, t as u64]);
        let mut hash = Fingerprint::default();
        for word in head.into_iter().chain(weights).chain(examples) {
            hash.word(word);
        }
        hash.finish()
    }

    /// The next batch, moving to the next epoch when this one is done.
    pub fn next_batch(&mut self) -> BatchIndices {
        if self.state.batches_done == self.plan.len() {
            self.state.epoch += 1;
            self.state.batches_done = 0;
            self.plan = self.plan_epoch(self.state.epoch);
        }
        let step = self.state.batches_done;
        self.state.batches_done += 1;
        BatchIndices { epoch: self.state.epoch, step, examples: self.plan[step].clone() }
    }

    /// Where the sampler stands (for a checkpoint).
    pub fn state(&self) -> LoaderState {
        self.state.clone()
    }

    /// Continues from `state`, saved by a sampler of the same configuration over the same data.
    pub fn restore(&mut self, state: &LoaderState) -> Result<()> {
        let mine = (self.config.seed, self.lengths.len(), self.fingerprint());
        if (state.seed, state.examples, state.fingerprint) != mine {
            return Err(Error::InvalidArgument(format!(
                "loader state (seed {}, {} examples, fingerprint {:#x}) does not belong to this data and \
                 configuration (seed {}, {} examples, fingerprint {:#x})",
                state.seed, state.examples, state.fingerprint, mine.0, mine.1, mine.2
            )));
        }
        let plan = self.plan_epoch(state.epoch);
        if state.batches_done > plan.len() {
            return Err(Error::InvalidArgument(format!(
                "loader state is at batch {} of epoch {}, which has {} batches",
                state.batches_done,
                state.epoch,
                plan.len()
            )));
        }
        self.plan = plan;
        self.state = state.clone();
        Ok(())
    }

    /// Batches in the current epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.plan.len()
    }

    /// Examples per task (indexed as the dataset's tasks) in the current epoch.
    pub fn epoch_task_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.weights.len()];
        for &i in self.plan.iter().flatten() {
            counts[self.tasks[i]] += 1;
        }
        counts
    }
}
