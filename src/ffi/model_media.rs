//! `ur_media`: the images and videos of a `ur_model_forward_ex` / `ur_model_generate_ex` call, as DLPack pixel
//! values (with an image's original size) or as files the library decodes and preprocesses with the checkpoint's
//! `preprocessor_config.json`.

use std::ffi::{c_char, CStr};
use std::path::Path;

use super::context::{caller_size, read_config, size_of_u32, Config, Versioned};
use super::dlpack::{DLTensor, Desc};
use super::media::layout_of;
use super::status::{Failure, FfiResult};
use crate::media::{ImageLayout, ImageProcessor};
use crate::model::llava::MediaInput;
use crate::Tensor;

/// An image: its placeholders are the model's image token.
pub const UR_MEDIA_IMAGE: i32 = 0;
/// A video: its placeholders are the model's video token.
pub const UR_MEDIA_VIDEO: i32 = 1;
/// The frames sampled from a video file when `num_frames` is 0 (UnifiedReward's count).
pub const UR_DEFAULT_VIDEO_FRAMES: u32 = 8;

/// One image or video of a batch. Initialise with `ur_media_default()`. Images and videos are matched to the
/// placeholders in order, each kind on its own: the first image to the first run of image placeholders over the
/// batch (sample by sample), and so on. Pass an array of them; every item's `struct_size` must be the same (the
/// array's stride).
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ur_media {
    /// `sizeof(ur_media)`.
    pub struct_size: u32,
    /// `UR_MEDIA_IMAGE` (default) or `UR_MEDIA_VIDEO`.
    pub kind: i32,
    /// The preprocessed pixels `[tiles or frames, 3, S, S]` (float32/bfloat16/float16, on the model's device), as
    /// `ur_image_processor_run` or transformers' processor makes them; NULL to read `path` instead.
    pub pixel_values: *const DLTensor,
    /// An image's height and width before preprocessing (transformers' `image_sizes`), with `pixel_values`.
    pub height: u64,
    pub width: u64,
    /// With `pixel_values` NULL: an image file (PNG, JPEG, WebP, GIF), or a video as a folder of frame files or an
    /// animated GIF; NUL-terminated UTF-8. Needs the checkpoint's `preprocessor_config.json`.
    pub path: *const c_char,
    /// For an image read from `path`: `UR_IMAGE_LAYOUT_ANYRES` (default: an image alone in its sample) or
    /// `UR_IMAGE_LAYOUT_SQUARE` (one of several images in a sample), as transformers' processor decides.
    pub layout: i32,
    /// For a video read from `path`: frames to sample evenly (0: `UR_DEFAULT_VIDEO_FRAMES`).
    pub num_frames: u32,
}

impl Versioned for ur_media {
    const NAME: &'static str = "ur_media";
}

impl Config for ur_media {
    fn default_value() -> Self {
        ur_media {
            struct_size: size_of_u32::<Self>(),
            kind: UR_MEDIA_IMAGE,
            pixel_values: std::ptr::null(),
            height: 0,
            width: 0,
            path: std::ptr::null(),
            layout: super::media::UR_IMAGE_LAYOUT_ANYRES,
            num_frames: 0,
        }
    }
}

/// An image with no pixels or path yet, anyres layout, 8 video frames.
#[no_mangle]
pub extern "C" fn ur_media_default() -> ur_media {
    ur_media::default_value()
}

/// Where one item's pixels come from, checked but not yet read.
pub(super) enum Source {
    Pixels(Desc),
    File(String),
}

/// One item, checked.
pub(super) struct MediaItem {
    pub is_image: bool,
    pub source: Source,
    /// `(height, width)` of an image given as pixels.
    pub size: (usize, usize),
    pub layout: ImageLayout,
    pub frames: usize,
}

/// Prefixes a failure with the item it is about.
fn at(i: usize, f: Failure) -> Failure {
    Failure { message: format!("media[{i}]: {}", f.message), ..f }
}

/// Reads and checks `count` items at `media` (NULL only when `count` is 0), reading no pixel and no file yet.
///
/// # Safety
/// `media` is NULL or points to `count` items of its first item's `struct_size` each, whose pointers are NULL or
/// valid (`pixel_values` a readable `DLTensor`, `path` NUL-terminated).
pub(super) unsafe fn read_media(media: *const ur_media, count: usize) -> FfiResult<Vec<MediaItem>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    if media.is_null() {
        return Err(Failure::null("media"));
    }
    // SAFETY: this function's contract; `ur_media` starts with its `u32` size.
    let first = unsafe { *(media as *const u32) };
    let stride = caller_size::<ur_media>(first, "initialise each item with ur_media_default()")?;
    (0..count)
        .map(|i| {
            // SAFETY: this function's contract: item `i` starts `i · stride` bytes in.
            let item = unsafe { (media as *const u8).add(i * stride) as *const ur_media };
            // SAFETY: as above.
            let size = unsafe { *(item as *const u32) };
            if size != first {
                return Err(Failure::invalid(format!(
                    "media[{i}].struct_size is {size}, media[0]'s {first}: every item of the array has the same size"
                )));
            }
            // SAFETY: as above.
            unsafe { check_item(read_config(item)?) }.map_err(|f| at(i, f))
        })
        .collect()
}

/// # Safety
/// As for [`read_media`], for one item.
unsafe fn check_item(m: ur_media) -> FfiResult<MediaItem> {
    let is_image = match m.kind {
        UR_MEDIA_IMAGE => true,
        UR_MEDIA_VIDEO => false,
        other => {
            return Err(Failure::invalid(format!(
                "`kind` is {other}; use UR_MEDIA_IMAGE ({UR_MEDIA_IMAGE}) or UR_MEDIA_VIDEO ({UR_MEDIA_VIDEO})"
            )))
        }
    };
    let frames = match m.num_frames {
        0 => UR_DEFAULT_VIDEO_FRAMES,
        n => n,
    } as usize;
    let layout = layout_of(m.layout)?;
    let dim = |value: u64, name: &str| -> FfiResult<usize> {
        match usize::try_from(value) {
            Ok(v) if v > 0 || !is_image => Ok(v),
            _ => Err(Failure::invalid(format!("`{name}` is {value}: an image given as pixel values needs its size"))),
        }
    };
    // SAFETY: this function's contract.
    let source = match (unsafe { Desc::optional("pixel_values", m.pixel_values) }?, m.path.is_null()) {
        (Some(desc), true) => Source::Pixels(desc),
        (None, false) => {
            // SAFETY: this function's contract.
            let path = unsafe { CStr::from_ptr(m.path) };
            Source::File(path.to_str().map_err(|_| Failure::invalid("`path` is not valid UTF-8"))?.to_string())
        }
        (Some(_), false) => return Err(Failure::invalid("both `pixel_values` and `path` are set: give one")),
        (None, true) => return Err(Failure::invalid("neither `pixel_values` nor `path` is set: give one")),
    };
    let size = match source {
        Source::Pixels(_) if is_image => (dim(m.height, "height")?, dim(m.width, "width")?),
        _ => (0, 0),
    };
    Ok(MediaItem { is_image, source, size, layout, frames })
}

/// The pixel descriptors of `items` (for the device and overlap checks).
pub(super) fn pixel_descs(items: &[MediaItem]) -> Vec<&Desc> {
    items
        .iter()
        .filter_map(|item| match &item.source {
            Source::Pixels(desc) => Some(desc),
            Source::File(_) => None,
        })
        .collect()
}

/// Every item's pixels as a tensor with its original size: DLPack pixels wrapped as they are, files decoded and
/// preprocessed with the processor of the checkpoint in `dir` (read once, only when a file is given).
///
/// # Safety
/// The pixel descriptors describe memory valid for their extent; on CUDA, called on the caller's stream.
pub(super) unsafe fn load_pixels(items: &[MediaItem], dir: &Path) -> FfiResult<Vec<(Tensor, (usize, usize))>> {
    let mut processor: Option<ImageProcessor> = None;
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let loaded = match &item.source {
            // SAFETY: this function's contract.
            Source::Pixels(desc) => Ok((unsafe { desc.tensor() }?, item.size)),
            Source::File(path) => {
                let processor = match &mut processor {
                    Some(p) => p,
                    None => processor.insert(ImageProcessor::for_checkpoint(dir)?),
                };
                let path = Path::new(path);
                let loaded = if item.is_image {
                    processor.preprocess_file(path, item.layout).map(|p| (p.pixel_values, p.image_size))
                } else {
                    processor.preprocess_video(path, item.frames).map(|frames| (frames, (0, 0)))
                };
                loaded.map_err(Failure::from)
            }
        };
        out.push(loaded.map_err(|f| at(i, f))?);
    }
    Ok(out)
}

/// The model's view of loaded items.
pub(super) fn media_inputs<'a>(items: &[MediaItem], pixels: &'a [(Tensor, (usize, usize))]) -> Vec<MediaInput<'a>> {
    items
        .iter()
        .zip(pixels)
        .map(|(item, (tensor, size))| match item.is_image {
            true => MediaInput::Image { pixel_values: tensor, size: *size },
            false => MediaInput::Video { frames: tensor },
        })
        .collect()
}
