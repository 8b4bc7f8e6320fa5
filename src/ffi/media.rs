//! `ur_image_processor_*`: LLaVA-OneVision's image preprocessing (`media::ImageProcessor`) for callers who decode
//! images themselves: 8-bit RGB pixels in host memory, the vision tower's float32 pixel values out.

use std::ffi::{c_char, CStr};
use std::path::Path;

use super::context::{self, ur_context};
use super::status::{call, ur_status, Failure, FfiResult};
use crate::media::{ImageLayout, ImageProcessor, ImageProcessorConfig, RgbImage};
use crate::Error;

/// An image alone in its sample: the whole image resized to one tile, then the tiles of the best grid resolution.
pub const UR_IMAGE_LAYOUT_ANYRES: i32 = 0;
/// One of several images in a sample: padded to a square of the mean colour and resized to one tile.
pub const UR_IMAGE_LAYOUT_SQUARE: i32 = 1;

/// Tells a live processor from garbage (a freed or never-created pointer is still undefined behaviour).
const MAGIC: u64 = 0x7572_5f69_6d67_0001; // "ur_img" v1

/// A checkpoint's image preprocessing. Opaque; create it with `ur_image_processor_create`, free it with
/// `ur_image_processor_free`. It is only read after creation: any thread may use it.
#[allow(non_camel_case_types)]
pub struct ur_image_processor {
    magic: u64,
    processor: ImageProcessor,
}

/// Reads the preprocessing of a checkpoint from `config_path` (its `preprocessor_config.json`; NULL: transformers'
/// `LlavaOnevisionImageProcessor` defaults) into `*out`. A missing, unreadable or unsupported file is
/// `UR_ERROR_CHECKPOINT`, with a message naming it. On failure `*out` is left unchanged.
///
/// # Safety
/// `ctx` comes from `ur_context_create`; `config_path` is NULL or a NUL-terminated UTF-8 path; `out` is NULL (an
/// error) or writable.
#[no_mangle]
pub unsafe extern "C" fn ur_image_processor_create(
    ctx: *mut ur_context,
    config_path: *const c_char,
    out: *mut *mut ur_image_processor,
) -> ur_status {
    // SAFETY (whole body): this function's contract.
    call(|| unsafe {
        context::check(ctx)?;
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        let config = if config_path.is_null() {
            ImageProcessorConfig::default()
        } else {
            let path = CStr::from_ptr(config_path)
                .to_str()
                .map_err(|_| Failure::invalid("`config_path` is not valid UTF-8"))?;
            ImageProcessorConfig::from_file(Path::new(path))?
        };
        *out = Box::into_raw(Box::new(ur_image_processor { magic: MAGIC, processor: ImageProcessor::new(config)? }));
        Ok(())
    })
}

/// Frees a processor. NULL is accepted and does nothing.
///
/// # Safety
/// `processor` is NULL or a pointer returned by `ur_image_processor_create`, not yet freed, and no call is using it.
#[no_mangle]
pub unsafe extern "C" fn ur_image_processor_free(processor: *mut ur_image_processor) {
    if processor.is_null() {
        return;
    }
    // A panic while dropping must not cross into C: the memory is then leaked instead.
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: this function's contract: `processor` came from `Box::into_raw` in `ur_image_processor_create`.
        let mut processor = unsafe { Box::from_raw(processor) };
        processor.magic = 0;
    });
}

/// The shape `[patches, 3, tile height, tile width]` that `ur_image_processor_run` writes for a `height x width`
/// image in `layout` (`UR_IMAGE_LAYOUT_*`), into `shape[0..4]`.
///
/// # Safety
/// `processor` comes from `ur_image_processor_create`; `shape` is NULL (an error) or has 4 writable values.
#[no_mangle]
pub unsafe extern "C" fn ur_image_processor_output_shape(
    processor: *const ur_image_processor,
    height: u64,
    width: u64,
    layout: i32,
    shape: *mut u64,
) -> ur_status {
    // SAFETY (whole body): this function's contract.
    call(|| unsafe {
        let processor = live(processor)?;
        if shape.is_null() {
            return Err(Failure::null("shape"));
        }
        let dims = processor.output_shape((size(height, "height")?, size(width, "width")?), layout_of(layout)?)?;
        for (i, d) in dims.into_iter().enumerate() {
            *shape.add(i) = d as u64;
        }
        Ok(())
    })
}

/// Preprocesses one image: `pixels` holds `height · width · 3` bytes (rows top to bottom, R G B interleaved), `out`
/// receives `out_len` float32 values, which must be exactly the count of `ur_image_processor_output_shape`'s shape.
/// Both are host memory. Nothing is written to `out` on failure.
///
/// # Safety
/// `processor` comes from `ur_image_processor_create`; `pixels` is NULL (an error) or has `height · width · 3`
/// readable bytes; `out` is NULL (an error) or has `out_len` writable floats not overlapping `pixels`.
#[no_mangle]
pub unsafe extern "C" fn ur_image_processor_run(
    processor: *const ur_image_processor,
    pixels: *const u8,
    height: u64,
    width: u64,
    layout: i32,
    out: *mut f32,
    out_len: u64,
) -> ur_status {
    // SAFETY (whole body): this function's contract.
    call(|| unsafe {
        let processor = live(processor)?;
        if pixels.is_null() {
            return Err(Failure::null("pixels"));
        }
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        let (height, width) = (size(height, "height")?, size(width, "width")?);
        let layout = layout_of(layout)?;
        let expected: usize = processor.output_shape((height, width), layout)?.iter().product();
        if usize::try_from(out_len).ok() != Some(expected) {
            return Err(Error::Shape(format!(
                "`out` holds {out_len} floats; the pixel values of a {width}x{height} image are {expected}"
            ))
            .into());
        }
        // The size was checked (at most 32768 a side) by output_shape: the byte count cannot overflow.
        let in_bytes = height * width * 3;
        let (out_start, in_start) = (out as usize, pixels as usize);
        if out_start < in_start + in_bytes && in_start < out_start + expected * 4 {
            return Err(Failure::invalid("`out` overlaps `pixels`: an output must be separate memory"));
        }
        let bytes = std::slice::from_raw_parts(pixels, in_bytes).to_vec();
        let result = processor.preprocess(&RgbImage::new(width, height, bytes)?, layout)?;
        let values = result.pixel_values.as_slice::<f32>()?;
        std::slice::from_raw_parts_mut(out, expected).copy_from_slice(values);
        Ok(())
    })
}

/// # Safety
/// `processor` is NULL or points to a `ur_image_processor` (live or not: the magic number tells).
unsafe fn live<'a>(processor: *const ur_image_processor) -> FfiResult<&'a ImageProcessor> {
    // SAFETY: this function's contract.
    match unsafe { processor.as_ref() } {
        None => Err(Failure::null("processor")),
        Some(p) if p.magic == MAGIC => Ok(&p.processor),
        Some(_) => Err(Failure::invalid("`processor` is not a live ur_image_processor")),
    }
}

fn size(value: u64, name: &str) -> FfiResult<usize> {
    usize::try_from(value).map_err(|_| Failure::invalid(format!("`{name}` {value} does not fit in memory")))
}

pub(super) fn layout_of(layout: i32) -> FfiResult<ImageLayout> {
    match layout {
        UR_IMAGE_LAYOUT_ANYRES => Ok(ImageLayout::Anyres),
        UR_IMAGE_LAYOUT_SQUARE => Ok(ImageLayout::Square),
        other => Err(Failure::invalid(format!(
            "`layout` is {other}; use UR_IMAGE_LAYOUT_ANYRES (0) or UR_IMAGE_LAYOUT_SQUARE (1)"
        ))),
    }
}
