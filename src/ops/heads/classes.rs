//! `VerdictClasses`: the token ids of each verdict class as a CSR list, validated once on the host.

use std::collections::HashMap;

use super::host::host_i64;
use crate::ops::check;
use crate::runtime::Tensor;
use crate::{Error, Result};

/// The token ids of each verdict class ("Image 1", "Image 2", "tie"; or the scores "1" … "5"), stored as CSR:
/// class `k` owns `token_ids[class_offsets[k]..class_offsets[k + 1]]`. Optionally each class has a numeric value
/// (a score scale), which adds the expected score to the verdict head's outputs.
///
/// Every class needs at least one id, and the sets must be disjoint: a token in two classes would make the
/// classes' probabilities overlap (they would not sum to 1), so it is refused rather than split. Ids are checked
/// against the vocabulary when the head runs.
#[derive(Clone, Debug, PartialEq)]
pub struct VerdictClasses {
    offsets: Vec<usize>,
    ids: Vec<u32>,
    values: Option<Vec<f32>>,
}

impl VerdictClasses {
    /// Classes from one id set each: `from_sets(&[&[16, 220], &[17], &[19]])`.
    pub fn from_sets(sets: &[&[u32]]) -> Result<Self> {
        let mut offsets = Vec::with_capacity(sets.len() + 1);
        offsets.push(0);
        for set in sets {
            offsets.push(offsets[offsets.len() - 1] + set.len());
        }
        Self::validated(offsets, sets.concat())
    }

    /// Classes from CSR tensors (i32 or i64, on any device): `class_offsets` [K+1], non-decreasing from 0 to M,
    /// and `token_ids` `[M]`.
    pub fn from_csr(class_offsets: &Tensor, token_ids: &Tensor) -> Result<Self> {
        check::integer("class_offsets", class_offsets)?;
        check::integer("token_ids", token_ids)?;
        check::rank("class_offsets", class_offsets, 1)?;
        check::rank("token_ids", token_ids, 1)?;
        let offsets = host_i64(class_offsets)?;
        let ids = host_i64(token_ids)?;
        if offsets.first() != Some(&0) || offsets.last() != Some(&(ids.len() as i64)) {
            return Err(Error::InvalidArgument(format!(
                "`class_offsets` must start at 0 and end at the number of token ids ({}), got {offsets:?}",
                ids.len()
            )));
        }
        if let Some(k) = offsets.windows(2).position(|w| w[1] < w[0]) {
            return Err(Error::InvalidArgument(format!(
                "`class_offsets` decreases at class {k} ({} then {})",
                offsets[k],
                offsets[k + 1]
            )));
        }
        let ids = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                u32::try_from(id)
                    .map_err(|_| Error::InvalidArgument(format!("`token_ids[{i}]` = {id} is not a token id")))
            })
            .collect::<Result<Vec<u32>>>()?;
        Self::validated(offsets.iter().map(|&o| o as usize).collect(), ids)
    }

    /// Gives class `k` the numeric value `values[k]` (a score scale such as 1..=5), so that the head also returns
    /// the expected score `Σ p_k · values[k]`.
    pub fn with_values(mut self, values: &[f32]) -> Result<Self> {
        if values.len() != self.num_classes() {
            return Err(Error::Shape(format!(
                "`values` has {} entries for {} classes",
                values.len(),
                self.num_classes()
            )));
        }
        for (k, &v) in values.iter().enumerate() {
            check::finite(&format!("values[{k}]"), v)?;
        }
        self.values = Some(values.to_vec());
        Ok(self)
    }

    /// K, the number of classes.
    pub fn num_classes(&self) -> usize {
        self.offsets.len() - 1
    }

    /// The token ids of class `k`.
    pub fn class(&self, k: usize) -> &[u32] {
        &self.ids[self.offsets[k]..self.offsets[k + 1]]
    }

    /// The CSR offsets [K+1].
    pub fn offsets(&self) -> &[usize] {
        &self.offsets
    }

    /// Every class's ids, class after class `[M]`.
    pub fn token_ids(&self) -> &[u32] {
        &self.ids
    }

    /// The classes' numeric values, when given.
    pub fn values(&self) -> Option<&[f32]> {
        self.values.as_deref()
    }

    /// Every id is inside a vocabulary of `vocab` tokens.
    pub(super) fn check_vocab(&self, vocab: usize) -> Result<()> {
        for k in 0..self.num_classes() {
            if let Some(&id) = self.class(k).iter().find(|&&id| id as usize >= vocab) {
                return Err(Error::InvalidArgument(format!(
                    "token id {id} of verdict class {k} is outside the vocabulary [0, {vocab}) of `logits`"
                )));
            }
        }
        Ok(())
    }

    fn validated(offsets: Vec<usize>, ids: Vec<u32>) -> Result<Self> {
        if offsets.len() < 2 {
            return Err(Error::InvalidArgument("a verdict head needs at least one class".into()));
        }
        let classes = VerdictClasses { offsets, ids, values: None };
        let mut owner: HashMap<u32, usize> = HashMap::with_capacity(classes.ids.len());
        for k in 0..classes.num_classes() {
            if classes.class(k).is_empty() {
                return Err(Error::InvalidArgument(format!("verdict class {k} has no token ids")));
            }
            for &id in classes.class(k) {
                if let Some(first) = owner.insert(id, k) {
                    let place =
                        if first == k { format!("twice in class {k}") } else { format!("in classes {first} and {k}") };
                    return Err(Error::InvalidArgument(format!(
                        "token id {id} appears {place}: verdict classes must be disjoint sets of ids"
                    )));
                }
            }
        }
        Ok(classes)
    }
}
