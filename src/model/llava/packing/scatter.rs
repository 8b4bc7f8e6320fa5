//! The packed features written into the token embeddings at the placeholder tokens (transformers'
//! `masked_scatter` with `get_placeholder_mask`), and the backward that takes their gradient back out.

use super::plan::PackingPlan;
use crate::ops::check;
use crate::ops::launch::host_ids;
use crate::ops::rows::copy_rows;
use crate::runtime::Tensor;
use crate::{Error, Result};

/// The placeholder token ids (`image_token_index` / `image_token_id`, `video_token_index` / `video_token_id`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlaceholderTokens {
    pub image: i64,
    pub video: i64,
}

/// Which token positions receive which packed rows: packed row `k` goes to flat position `positions[k]` of the
/// `[N, T]` batch. The images' rows fill the image placeholders and the videos' rows the video placeholders, each in
/// row-major token order over the batch, so a sample's placeholders take its own media when the media are listed
/// sample by sample.
#[derive(Clone, Debug)]
pub struct ScatterMap {
    positions: Vec<usize>,
    tokens: usize,
}

impl ScatterMap {
    /// The map for `ids` `[N, T]` (i32 or i64, any device) and a packing `plan`: the count of image placeholders
    /// must equal the plan's image rows and the count of video placeholders its video rows.
    pub fn new(ids: &Tensor, placeholders: PlaceholderTokens, plan: &PackingPlan) -> Result<ScatterMap> {
        check::integer("ids", ids)?;
        check::rank("ids", ids, 2)?;
        if placeholders.image == placeholders.video {
            return Err(Error::InvalidArgument(format!(
                "the image and video placeholder tokens are both {}",
                placeholders.image
            )));
        }
        let ids = host_ids(ids)?;
        let find = |id: i64| ids.iter().enumerate().filter(move |&(_, &t)| t == id).map(|(p, _)| p);
        let (images, videos): (Vec<usize>, Vec<usize>) =
            (find(placeholders.image).collect(), find(placeholders.video).collect());
        for (kind, id, found, rows) in [
            ("image", placeholders.image, images.len(), plan.image_rows()),
            ("video", placeholders.video, videos.len(), plan.video_rows()),
        ] {
            if found != rows {
                return Err(Error::InvalidArgument(format!(
                    "the batch has {found} {kind} placeholder tokens (id {id}) but its {kind}s' packed features have \
                     {rows} rows: the counts must be equal"
                )));
            }
        }
        Ok(ScatterMap { positions: [images, videos].concat(), tokens: ids.len() })
    }

    /// Flat token positions of the packed rows, images' first.
    pub fn positions(&self) -> &[usize] {
        &self.positions
    }

    fn check_embeddings(&self, name: &'static str, t: &Tensor) -> Result<usize> {
        let &[n, seq, c] = t.shape() else {
            return Err(Error::Shape(format!("`{name}` must be [N, T, C], got shape {:?}", t.shape())));
        };
        if n * seq != self.tokens {
            return Err(Error::Shape(format!("`{name}` is {:?} but the ids hold {} tokens", t.shape(), self.tokens)));
        }
        Ok(c)
    }

    /// Writes `packed` `[rows, C]` into `embeddings` `[N, T, C]` (same dtype and device) at the placeholders; the
    /// other rows keep the token embeddings.
    pub fn scatter(&self, packed: &Tensor, embeddings: &mut Tensor) -> Result<()> {
        let c = self.check_embeddings("embeddings", embeddings)?;
        check::shape("packed", packed, &[self.positions.len(), c])?;
        copy_rows(packed, &(0..self.positions.len()).collect::<Vec<_>>(), embeddings, &self.positions)
    }

    /// The backward of [`ScatterMap::scatter`]: returns the packed features' gradient `[rows, C]` (the placeholder
    /// rows of `grad_embeddings` `[N, T, C]`) and zeroes those rows of `grad_embeddings` in place, so what is left
    /// is the token embeddings' gradient: a placeholder token's embedding was overwritten, so its id receives
    /// nothing from the embedding backward (as `masked_scatter`'s backward gives `inputs_embeds`).
    pub fn backward(&self, grad_embeddings: &mut Tensor) -> Result<Tensor> {
        let c = self.check_embeddings("grad_embeddings", grad_embeddings)?;
        let (dtype, device) = (grad_embeddings.dtype(), grad_embeddings.device());
        let mut grad_packed = Tensor::zeros(&[self.positions.len(), c], dtype, device)?;
        self.backward_into(grad_embeddings, &mut grad_packed)?;
        Ok(grad_packed)
    }

    /// [`ScatterMap::backward`] into `grad_packed` (`[rows, C]` in `grad_embeddings`' dtype, on its device, e.g. a
    /// view of a pass's arena), every row of which is written.
    pub fn backward_into(&self, grad_embeddings: &mut Tensor, grad_packed: &mut Tensor) -> Result<()> {
        let c = self.check_embeddings("grad_embeddings", grad_embeddings)?;
        check::float("grad_embeddings", grad_embeddings)?;
        let (dtype, device) = (grad_embeddings.dtype(), grad_embeddings.device());
        let rows = self.positions.len();
        check::output("grad_packed", grad_packed, &[rows, c], dtype, device)?;
        copy_rows(grad_embeddings, &self.positions, grad_packed, &(0..rows).collect::<Vec<_>>())?;
        let zero = Tensor::zeros(&[1, c], dtype, device)?;
        copy_rows(&zero, &vec![0; rows], grad_embeddings, &self.positions)
    }
}
