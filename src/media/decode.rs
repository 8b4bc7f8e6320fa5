//! Image files to [`RgbImage`]: PNG, JPEG, WebP and GIF through the `image` crate (pure Rust), recognised by their
//! contents, with the size bounds checked before the pixels are allocated, and converted to RGB as PIL's
//! `convert("RGB")` does (what transformers sees): alpha dropped without blending, grey replicated, 16-bit RGB
//! reduced to its high byte, 16-bit grey clipped at 255 (PIL's `I;16` to `RGB` conversion).

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use image::codecs::gif::GifDecoder;
use image::{AnimationDecoder, DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

use super::rgb::{check_size, RgbImage, MAX_IMAGE_SIDE};
use crate::{Error, Result};

/// The largest image file read (a 32768² PNG of noise is 3 GiB; real photos are well under 100 MiB).
pub const MAX_FILE_BYTES: u64 = 1 << 30;
/// The most memory a decoder may hold at once, the decoded pixels included.
pub const MAX_DECODE_BYTES: u64 = 2 << 30;
/// The most frames read from one animated GIF.
pub const MAX_GIF_FRAMES: usize = 100_000;

/// The first (or only) image in the file at `path`, as RGB.
pub fn decode_image(path: &Path) -> Result<RgbImage> {
    let fail = |e: image::ImageError| media_error(path, &e.to_string());
    let mut reader = ImageReader::new(open_media(path)?)
        .with_guessed_format()
        .map_err(|e| media_error(path, &format!("cannot read: {e}")))?;
    match reader.format() {
        Some(ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP | ImageFormat::Gif) => {}
        Some(other) => return Err(media_error(path, &format!("{other:?} images are not supported ({SUPPORTED})"))),
        None => return Err(media_error(path, &format!("unknown image format ({SUPPORTED})"))),
    }
    reader.limits(memory_limit());
    let mut decoder = reader.into_decoder().map_err(fail)?;
    // The header is read, the pixels not yet: the declared size is checked here, with this library's message.
    let (width, height) = decoder.dimensions();
    check_size(&format!("image {}", path.display()), width as usize, height as usize)?;
    decoder.set_limits(side_and_memory_limits()).map_err(fail)?;
    to_rgb(DynamicImage::from_decoder(decoder).map_err(fail)?).map_err(|msg| media_error(path, &msg))
}

/// The frames of the animated GIF at `path` whose indices `select` picks from the frame count, each composited as
/// the animation shows it and converted to RGB, with the frame count.
pub fn decode_gif_frames(
    path: &Path,
    select: impl FnOnce(usize) -> Result<Vec<usize>>,
) -> Result<(Vec<RgbImage>, usize)> {
    // Two passes: the count first (frames are composited in order, so each pass decodes them all), then the frames
    // picked, so that only those are kept in memory.
    let total = gif_frames(path)?.try_fold(0usize, |count, frame| {
        frame?;
        if count == MAX_GIF_FRAMES {
            return Err(media_error(path, &format!("more than {MAX_GIF_FRAMES} frames")));
        }
        Ok(count + 1)
    })?;
    let indices = select(total)?;
    let mut frames = Vec::with_capacity(indices.len());
    let mut decoded = gif_frames(path)?.enumerate();
    let mut current: Option<(usize, RgbImage)> = None;
    for &wanted in &indices {
        // Indices ascend; a repeated index reuses the frame just kept.
        let frame = loop {
            if let Some((i, frame)) = &current {
                if *i >= wanted {
                    break frame.clone();
                }
            }
            let (i, frame) = decoded.next().ok_or_else(|| media_error(path, "the animation changed while read"))?;
            current = Some((i, frame?));
        };
        frames.push(frame);
    }
    Ok((frames, total))
}

/// The GIF's frames, each as RGB.
fn gif_frames(path: &Path) -> Result<impl Iterator<Item = Result<RgbImage>> + '_> {
    let fail = move |e: image::ImageError| media_error(path, &e.to_string());
    let mut decoder = GifDecoder::new(open_media(path)?).map_err(fail)?;
    let (width, height) = decoder.dimensions();
    check_size(&format!("GIF {}", path.display()), width as usize, height as usize)?;
    decoder.set_limits(side_and_memory_limits()).map_err(fail)?;
    Ok(decoder.into_frames().map(move |frame| {
        let rgba = frame.map_err(fail)?.into_buffer();
        to_rgb(DynamicImage::ImageRgba8(rgba)).map_err(|msg| media_error(path, &msg))
    }))
}

const SUPPORTED: &str = "this library reads PNG, JPEG, WebP and GIF";

fn media_error(path: &Path, message: &str) -> Error {
    Error::InvalidArgument(format!("image {}: {message}", path.display()))
}

fn memory_limit() -> Limits {
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    limits
}

fn side_and_memory_limits() -> Limits {
    let mut limits = memory_limit();
    limits.max_image_width = Some(MAX_IMAGE_SIDE as u32);
    limits.max_image_height = Some(MAX_IMAGE_SIDE as u32);
    limits
}

/// `path` opened for buffered reading if it is a regular file (a FIFO or device could block or never end) of a
/// bounded size.
fn open_media(path: &Path) -> Result<BufReader<File>> {
    let metadata = std::fs::metadata(path).map_err(|e| media_error(path, &format!("cannot open: {e}")))?;
    if !metadata.is_file() {
        return Err(media_error(path, "not a regular file"));
    }
    if metadata.len() > MAX_FILE_BYTES {
        return Err(media_error(path, &format!("the file is larger than {MAX_FILE_BYTES} bytes")));
    }
    let file = File::open(path).map_err(|e| media_error(path, &format!("cannot open: {e}")))?;
    Ok(BufReader::new(file))
}

/// PIL's `convert("RGB")` of the mode PIL would have opened the file in.
fn to_rgb(image: DynamicImage) -> std::result::Result<RgbImage, String> {
    let (width, height) = (image.width() as usize, image.height() as usize);
    let pixels = match image {
        DynamicImage::ImageRgb8(buffer) => buffer.into_raw(),
        DynamicImage::ImageLuma8(_) | DynamicImage::ImageLumaA8(_) | DynamicImage::ImageRgba8(_) => {
            image.to_rgb8().into_raw()
        }
        // PIL opens 16-bit RGB(A) and grey-alpha PNGs as 8-bit modes, keeping each sample's high byte.
        DynamicImage::ImageRgb16(buffer) => buffer.pixels().flat_map(|p| p.0.map(high_byte)).collect(),
        DynamicImage::ImageRgba16(buffer) => {
            buffer.pixels().flat_map(|p| [0, 1, 2].map(|c| high_byte(p.0[c]))).collect()
        }
        DynamicImage::ImageLumaA16(buffer) => buffer.pixels().flat_map(|p| [high_byte(p.0[0]); 3]).collect(),
        // 16-bit grey opens as PIL's `I;16`, whose conversion to RGB clips at 255.
        DynamicImage::ImageLuma16(buffer) => buffer.pixels().flat_map(|p| [p.0[0].min(255) as u8; 3]).collect(),
        other => return Err(format!("{:?} pixels are not supported", other.color())),
    };
    RgbImage::new(width, height, pixels).map_err(|e| e.to_string())
}

fn high_byte(sample: u16) -> u8 {
    (sample >> 8) as u8
}
