//! A LLaVA-OneVision prompt with media, as `unireward generate --image` and the sampler build it: each `<image>` /
//! `<video>` marker of the text stands for the next image / video, and becomes as many placeholder ids as the media's
//! packed features have rows (what transformers' processor does); the media preprocessed with the checkpoint's
//! image processor (one image alone takes the anyres tiles, several are each padded to a square).

use super::media_file::MediaFile;
use super::tokenizer::Tokenizer;
use crate::media::{ImageLayout, ImageProcessor, Size};
use crate::model::llava::packing::PlaceholderTokens;
use crate::model::llava::MediaInput;
use crate::runtime::Tensor;
use crate::{Error, Result};

/// The prompt's markers, as LLaVA-OneVision's chat templates write them.
pub const IMAGE_MARKER: &str = "<image>";
pub const VIDEO_MARKER: &str = "<video>";

/// One image or video, preprocessed.
#[derive(Debug)]
pub struct MediaPixels {
    /// An image's tiles `[tiles, 3, S, S]` or a video's frames `[F, 3, S, S]`.
    pub pixels: Tensor,
    /// An image's size before preprocessing; `None` for a video.
    pub image_size: Option<Size>,
}

impl MediaPixels {
    /// Preprocesses `file` (or pixels in memory): an image with `layout`, a video as `frames` frames sampled
    /// evenly.
    pub fn load(processor: &ImageProcessor, file: &MediaFile, layout: ImageLayout, frames: usize) -> Result<Self> {
        let rgb = file.rgb_frames(frames)?;
        Ok(if file.is_video() {
            MediaPixels { pixels: processor.preprocess_frames(&rgb)?, image_size: None }
        } else {
            let pixels = processor.preprocess(&rgb[0], layout)?;
            MediaPixels { pixels: pixels.pixel_values, image_size: Some(pixels.image_size) }
        })
    }

    /// The model's input.
    pub fn input(&self) -> MediaInput<'_> {
        match self.image_size {
            Some(size) => MediaInput::Image { pixel_values: &self.pixels, size },
            None => MediaInput::Video { frames: &self.pixels },
        }
    }
}

/// How the images of one prompt enter the model: transformers gives an image alone the anyres tiles and pads each of
/// several to a square.
pub fn image_layout(images: usize) -> ImageLayout {
    if images == 1 {
        ImageLayout::Anyres
    } else {
        ImageLayout::Square
    }
}

/// Every file (or pixels in memory) of one prompt preprocessed, an error naming the item that fails.
pub fn load_media(processor: &ImageProcessor, files: &[MediaFile], frames: usize) -> Result<Vec<MediaPixels>> {
    let layout = image_layout(files.iter().filter(|f| !f.is_video()).count());
    let named = |file: &MediaFile, e: Error| match e {
        Error::InvalidArgument(m) => Error::InvalidArgument(format!("{file}: {m}")),
        other => other,
    };
    files.iter().map(|f| MediaPixels::load(processor, f, layout, frames).map_err(|e| named(f, e))).collect()
}

/// A piece of a prompt's text: the text before, between or after its media markers, or a marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromptPiece<'a> {
    Text(&'a str),
    Image,
    Video,
}

/// `text` cut at each `<image>` / `<video>` marker, in order: a text piece (possibly empty) before each marker and
/// after the last, so that each piece is tokenized on its own, as tokenizers split at special tokens.
pub fn split_at_markers(text: &str) -> Vec<PromptPiece<'_>> {
    let mut pieces = Vec::new();
    let mut rest = text;
    loop {
        let next_marker = [(IMAGE_MARKER, PromptPiece::Image), (VIDEO_MARKER, PromptPiece::Video)]
            .into_iter()
            .filter_map(|(marker, piece)| rest.find(marker).map(|at| (at, marker, piece)))
            .min_by_key(|&(at, ..)| at);
        let Some((at, marker, piece)) = next_marker else {
            pieces.push(PromptPiece::Text(rest));
            return pieces;
        };
        pieces.extend([PromptPiece::Text(&rest[..at]), piece]);
        rest = &rest[at + marker.len()..];
    }
}

/// The ids of `text` (a rendered prompt), each marker replaced by its item's `counts` placeholders: images' counts
/// in `image_counts` in order, videos' in `video_counts`.
pub fn expand_media_markers(
    tokenizer: &Tokenizer,
    text: &str,
    placeholders: PlaceholderTokens,
    image_counts: &[usize],
    video_counts: &[usize],
) -> Result<Vec<i64>> {
    let (mut images, mut videos) = (image_counts.iter(), video_counts.iter());
    let mut ids = Vec::new();
    for piece in split_at_markers(text) {
        let (count, id, marker) = match piece {
            PromptPiece::Text(text) => {
                ids.extend(tokenizer.encode(text)?.into_iter().map(i64::from));
                continue;
            }
            PromptPiece::Image => (images.next(), placeholders.image, IMAGE_MARKER),
            PromptPiece::Video => (videos.next(), placeholders.video, VIDEO_MARKER),
        };
        let count = count.ok_or_else(|| {
            Error::InvalidArgument(format!(
                "the prompt has more {marker} markers than media (one inside the system message?)"
            ))
        })?;
        ids.extend(std::iter::repeat_n(id, *count));
    }
    if images.next().is_some() || videos.next().is_some() {
        return Err(Error::InvalidArgument("the prompt has fewer markers than media".into()));
    }
    Ok(ids)
}
