//! `RgbImage`: 8-bit RGB pixels, row-major and interleaved (`[height, width, 3]`), the form every decoded image and
//! video frame takes before preprocessing.

use crate::{Error, Result};

/// The longest side accepted anywhere in `media`: decoded files, caller pixels, resize targets. 32768 is past any
/// camera or generated image and keeps every index and product of sizes far from overflow.
pub const MAX_IMAGE_SIDE: usize = 1 << 15;

/// An 8-bit RGB image. Ordered (size, then bytes) so that media holding one can key a map. Its `Debug` names the size,
/// never the pixels (an error or a log line stays short).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RgbImage {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

impl std::fmt::Debug for RgbImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RgbImage({}x{})", self.width, self.height)
    }
}

impl RgbImage {
    /// Wraps `pixels` (`height · width · 3` bytes, row-major, R G B interleaved): the entry point for callers who
    /// decode images themselves.
    pub fn new(width: usize, height: usize, pixels: Vec<u8>) -> Result<RgbImage> {
        check_size("image", width, height)?;
        if pixels.len() != width * height * 3 {
            return Err(Error::Shape(format!(
                "an RGB image of {width}x{height} needs {} bytes (height x width x 3), got {}",
                width * height * 3,
                pixels.len()
            )));
        }
        Ok(RgbImage { width, height, pixels })
    }

    /// An image of one colour.
    pub fn filled(width: usize, height: usize, rgb: [u8; 3]) -> Result<RgbImage> {
        check_size("image", width, height)?;
        Ok(RgbImage { width, height, pixels: rgb.repeat(width * height) })
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn height(&self) -> usize {
        self.height
    }

    /// `[height, width, 3]` bytes.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// One row: `width · 3` bytes.
    pub fn row(&self, y: usize) -> &[u8] {
        &self.pixels[y * self.width * 3..(y + 1) * self.width * 3]
    }

    /// The `width x height` window whose top-left pixel is (`x`, `y`); the caller keeps it inside the image.
    pub(crate) fn crop(&self, x: usize, y: usize, width: usize, height: usize) -> RgbImage {
        let mut pixels = Vec::with_capacity(width * height * 3);
        for row in y..y + height {
            pixels.extend_from_slice(&self.row(row)[x * 3..(x + width) * 3]);
        }
        RgbImage { width, height, pixels }
    }

    /// This image on a `width x height` canvas of `background`, its top-left pixel at (`left`, `top`); the caller
    /// makes the canvas large enough.
    pub(crate) fn paste_onto(
        &self,
        width: usize,
        height: usize,
        left: usize,
        top: usize,
        background: [u8; 3],
    ) -> RgbImage {
        let mut canvas = background.repeat(width * height);
        for y in 0..self.height {
            let start = ((top + y) * width + left) * 3;
            canvas[start..start + self.width * 3].copy_from_slice(self.row(y));
        }
        RgbImage { width, height, pixels: canvas }
    }
}

/// Refuses empty and oversized images, naming `what`.
pub(crate) fn check_size(what: &str, width: usize, height: usize) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(Error::InvalidArgument(format!("{what} has a zero size ({width}x{height})")));
    }
    if width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
        return Err(Error::InvalidArgument(format!(
            "{what} is {width}x{height}, larger than this library accepts ({MAX_IMAGE_SIDE} pixels a side)"
        )));
    }
    Ok(())
}
