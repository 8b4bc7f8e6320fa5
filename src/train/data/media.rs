//! The media of training records for a LLaVA-OneVision checkpoint: each image or video decoded and preprocessed with
//! the checkpoint's image processor, and each placeholder token of a tokenized record expanded to as many
//! placeholder ids as the item's packed features have rows (what transformers' processor does), so that the lengths
//! the batching groups by and the labels are those the model sees.
//!
//! Pixels are not kept between uses: a record's media are decoded when the data is loaded (to count its
//! placeholders, and to find an unreadable file there, as a bad record with its line, instead of mid-run) and again
//! when a batch holding it is trained on. One anyres image of SigLIP-so400m is up to ten 3×384×384 f32 tiles
//! (17 MiB), so a training set's pixels do not fit in memory, while decoding and resizing a batch's few images
//! costs little next to the forward and backward that follow.

use std::path::{Path, PathBuf};

use super::problems::Problem;
use super::record::{MediaKind, MediaRef};
use super::tokenize::IGNORE_INDEX;
use crate::media::{ImageLayout, ImageProcessor, Size, MAX_SAMPLED_FRAMES};
use crate::model::llava::packing::{Media, PackingConfig, PlaceholderTokens};
use crate::model::llava::{LlavaOnevisionModel, MediaInput};
use crate::runtime::Tensor;
use crate::{Error, Result};

/// Frames sampled from each video when nothing else is asked (UnifiedReward's setting).
pub const DEFAULT_VIDEO_FRAMES: usize = 8;

/// One decoded and preprocessed image or video.
#[derive(Debug)]
pub struct LoadedMedia {
    pub kind: MediaKind,
    /// `[tiles or frames, 3, S, S]` f32 on the CPU.
    pub pixels: Tensor,
    /// An image's `(height, width)` before preprocessing (for a video, its frames' after; the model does not use it).
    pub size: Size,
}

impl LoadedMedia {
    /// The model's view of the item.
    pub fn input(&self) -> MediaInput<'_> {
        match self.kind {
            MediaKind::Image => MediaInput::Image { pixel_values: &self.pixels, size: self.size },
            MediaKind::Video => MediaInput::Video { frames: &self.pixels },
        }
    }
}

/// A record's token ids and labels.
type Tokens = (Vec<i64>, Vec<i64>);

/// Decodes, preprocesses and counts the media of records for one LLaVA-OneVision checkpoint.
#[derive(Clone, Debug)]
pub struct MediaLoader {
    processor: ImageProcessor,
    packing: PackingConfig,
    /// Feature rows of one tile (the tower's patches).
    patches_per_tile: usize,
    placeholders: PlaceholderTokens,
    video_frames: usize,
}

impl MediaLoader {
    /// A loader for `model` with `processor` (the checkpoint's `preprocessor_config.json`), sampling `video_frames`
    /// frames from each video.
    pub fn new(processor: ImageProcessor, model: &LlavaOnevisionModel, video_frames: usize) -> Result<MediaLoader> {
        if !(1..=MAX_SAMPLED_FRAMES).contains(&video_frames) {
            return Err(Error::InvalidArgument(format!(
                "`video_frames` is {video_frames}: it must be from 1 to {MAX_SAMPLED_FRAMES}"
            )));
        }
        let tile = model.vision_tower.config.image_size;
        if processor.config().size != (tile, tile) {
            return Err(Error::Checkpoint(format!(
                "the image processor makes {:?} tiles but the vision tower takes {tile}x{tile}",
                processor.config().size
            )));
        }
        Ok(MediaLoader {
            processor,
            packing: model.packing.clone(),
            patches_per_tile: model.vision_tower.config.num_patches(),
            placeholders: model.placeholders(),
            video_frames,
        })
    }

    /// [`MediaLoader::new`] with the processor of the checkpoint in `dir`: its `preprocessor_config.json`, or
    /// transformers' defaults when it has none (as the judge and the sampler preprocess for it).
    pub fn for_checkpoint(dir: &Path, model: &LlavaOnevisionModel, video_frames: usize) -> Result<MediaLoader> {
        MediaLoader::new(ImageProcessor::for_checkpoint_or_defaults(dir)?, model, video_frames)
    }

    /// The ids the model reads as image and video placeholders.
    pub fn placeholders(&self) -> PlaceholderTokens {
        self.placeholders
    }

    pub fn video_frames(&self) -> usize {
        self.video_frames
    }

    /// One record's media, in its order: images in the anyres layout when the record has one image, each padded to
    /// a square when it has several (as transformers decides per sample), videos sampled to the loader's frame
    /// count. An unreadable file is an error naming it.
    pub fn load(&self, media: &[MediaRef]) -> Result<Vec<LoadedMedia>> {
        self.try_load(media).map_err(|(path, e)| Error::InvalidArgument(format!("{}: {e}", path.display())))
    }

    /// [`MediaLoader::load`], failing with the file that cannot be read.
    fn try_load(&self, media: &[MediaRef]) -> std::result::Result<Vec<LoadedMedia>, (PathBuf, Error)> {
        let images = media.iter().filter(|m| m.kind == MediaKind::Image).count();
        let layout = if images == 1 { ImageLayout::Anyres } else { ImageLayout::Square };
        let one = |item: &MediaRef| -> Result<LoadedMedia> {
            Ok(match item.kind {
                MediaKind::Image => {
                    let pixels = self.processor.preprocess_file(&item.path, layout)?;
                    LoadedMedia { kind: MediaKind::Image, pixels: pixels.pixel_values, size: pixels.image_size }
                }
                MediaKind::Video => {
                    let frames = self.processor.preprocess_video(&item.path, self.video_frames)?;
                    let size = (frames.shape()[2], frames.shape()[3]);
                    LoadedMedia { kind: MediaKind::Video, pixels: frames, size }
                }
            })
        };
        media.iter().map(|item| one(item).map_err(|e| (item.path.clone(), e))).collect()
    }

    /// The placeholder ids each item takes (its packed feature rows), as
    /// [`LlavaOnevisionModel::placeholder_counts`] counts them.
    pub fn placeholder_counts(&self, media: &[LoadedMedia]) -> Result<Vec<usize>> {
        media
            .iter()
            .map(|item| {
                let tiles = item.pixels.shape()[0];
                let packed = match item.kind {
                    MediaKind::Image => Media::Image { size: item.size, tiles },
                    MediaKind::Video => Media::Video { frames: tiles },
                };
                packed.packed_rows(&self.packing, self.patches_per_tile)
            })
            .collect()
    }

    /// A record's tokens with the media loaded and each placeholder expanded: the `k`-th token equal to `markers`'
    /// image (video) id becomes `counts[k]` copies of the model's image (video) placeholder id, labelled
    /// [`IGNORE_INDEX`]. A record whose media cannot be read, or whose placeholder tokens do not match its media, is
    /// a [`Problem`].
    pub(crate) fn expand(
        &self,
        ids: &[i64],
        labels: &[i64],
        media: &[MediaRef],
        markers: PlaceholderTokens,
    ) -> Result<std::result::Result<Tokens, Problem>> {
        let (image_id, video_id) = (self.placeholders.image, self.placeholders.video);
        let loaded = match self.try_load(media) {
            Ok(loaded) => loaded,
            Err((path, e)) => return Ok(Err(Problem::UnreadableMedia { path, reason: e.to_string() })),
        };
        let counts = self.placeholder_counts(&loaded)?;
        let kinds = [MediaKind::Image, MediaKind::Video];
        let mismatch = |queue: usize| Problem::PlaceholderMismatch {
            placeholder: [super::IMAGE_PLACEHOLDER, super::VIDEO_PLACEHOLDER][queue],
            found: ids.iter().filter(|&&t| t == [markers.image, markers.video][queue]).count(),
            media: loaded.iter().filter(|m| m.kind == kinds[queue]).count(),
        };
        let mut queues =
            kinds.map(|kind| loaded.iter().zip(&counts).filter(move |(m, _)| m.kind == kind).map(|(_, &c)| c));
        let (mut out_ids, mut out_labels) = (Vec::with_capacity(ids.len()), Vec::with_capacity(labels.len()));
        for (&id, &label) in ids.iter().zip(labels) {
            let (queue, placeholder) = match id {
                i if i == markers.image => (0, image_id),
                i if i == markers.video => (1, video_id),
                _ => {
                    out_ids.push(id);
                    out_labels.push(label);
                    continue;
                }
            };
            let Some(count) = queues[queue].next() else {
                return Ok(Err(mismatch(queue)));
            };
            out_ids.extend(std::iter::repeat_n(placeholder, count));
            out_labels.extend(std::iter::repeat_n(IGNORE_INDEX, count));
        }
        if let Some(queue) = (0..2).find(|&q| queues[q].next().is_some()) {
            return Ok(Err(mismatch(queue)));
        }
        Ok(Ok((out_ids, out_labels)))
    }
}
