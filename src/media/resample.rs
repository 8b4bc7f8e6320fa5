//! Resizing exactly as Pillow's `Image.resize` does for 8-bit RGB images (`libImaging/Resample.c`), since
//! transformers' slow image processors resize through PIL and the model was trained on those pixels.
//!
//! Pillow's resampling is a separable convolution: a horizontal pass, then a vertical one, each output pixel a
//! weighted sum of the input pixels under the filter, the filter stretched by the down-scaling factor (so that
//! shrinking averages instead of skipping). The weights are normalised to sum to one and then rounded to 22-bit fixed
//! point, and each pass rounds its result to 8 bits: both roundings are reproduced here, so the output is the same
//! bytes PIL produces (the `image` crate's resize is a different algorithm and differs by many levels). Pillow 13
//! changed the order of the passes for some sizes; [`PassOrder`] picks the version to match.

use rayon::prelude::*;

use super::rgb::{check_size, RgbImage};
use crate::{Error, Result};

/// Fixed-point precision of Pillow's 8-bit weights: 32 bits less 8 for the pixel and 2 for overshoot.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's convolution filters, by their numbers in `PIL.Image.Resampling` (what a `preprocessor_config.json`
/// stores as `resample`). NEAREST (0) is not a convolution in Pillow and is not implemented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    Lanczos,
    Bilinear,
    Bicubic,
    Box,
    Hamming,
}

impl Filter {
    /// The filter with Pillow's number `code`.
    pub fn from_pil(code: i64) -> Result<Filter> {
        match code {
            1 => Ok(Filter::Lanczos),
            2 => Ok(Filter::Bilinear),
            3 => Ok(Filter::Bicubic),
            4 => Ok(Filter::Box),
            5 => Ok(Filter::Hamming),
            0 => Err(Error::InvalidArgument(
                "resample 0 (NEAREST) is not implemented; use 1 (LANCZOS), 2 (BILINEAR), 3 (BICUBIC), 4 (BOX) or \
                 5 (HAMMING)"
                    .into(),
            )),
            other => Err(Error::InvalidArgument(format!(
                "resample {other} is not a PIL resampling filter (1 LANCZOS, 2 BILINEAR, 3 BICUBIC, 4 BOX, 5 HAMMING)"
            ))),
        }
    }

    /// Half the filter's width at scale 1.
    fn support(self) -> f64 {
        match self {
            Filter::Box => 0.5,
            Filter::Bilinear | Filter::Hamming => 1.0,
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
        }
    }

    /// The filter's weight at distance `x`, with Pillow's constants (bicubic a = -0.5; Hamming's float literals).
    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::Box => f64::from(u8::from(x > -0.5 && x <= 0.5)),
            Filter::Bilinear => (1.0 - x.abs()).max(0.0),
            Filter::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * std::f64::consts::PI;
                    x.sin() / x * (f64::from(0.54f32) + f64::from(0.46f32) * x.cos())
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Filter::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

/// The fixed-point weights of one pass: for each output pixel, the first input pixel it reads and its weights.
struct Coefficients {
    /// Weights per output pixel (unused tail entries are zero).
    ksize: usize,
    first: Vec<usize>,
    count: Vec<usize>,
    weights: Vec<i32>,
}

impl Coefficients {
    /// Pillow's `precompute_coeffs` followed by `normalize_coeffs_8bpc`, for the whole input span.
    fn new(in_size: usize, out_size: usize, filter: Filter) -> Coefficients {
        let scale = in_size as f64 / out_size as f64;
        let filter_scale = scale.max(1.0);
        let support = filter.support() * filter_scale;
        let ksize = support.ceil() as usize * 2 + 1;
        let mut first = Vec::with_capacity(out_size);
        let mut count = Vec::with_capacity(out_size);
        let mut weights = vec![0i32; out_size * ksize];
        let inverse_scale = 1.0 / filter_scale;
        let mut row = vec![0f64; ksize];
        for (xx, out) in weights.chunks_exact_mut(ksize).enumerate() {
            let center = (xx as f64 + 0.5) * scale;
            // Pillow truncates toward zero (a C cast) and then clamps, in this order.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
            let mut total = 0.0;
            for (x, w) in row[..xmax].iter_mut().enumerate() {
                *w = filter.weight(((x + xmin) as f64 - center + 0.5) * inverse_scale);
                total += *w;
            }
            for (w, fixed) in row[..xmax].iter().zip(out.iter_mut()) {
                let w = if total != 0.0 { w / total } else { *w };
                let scaled = w * f64::from(1u32 << PRECISION_BITS);
                *fixed = if w < 0.0 { (scaled - 0.5) as i32 } else { (scaled + 0.5) as i32 };
            }
            first.push(xmin);
            count.push(xmax);
        }
        Coefficients { ksize, first, count, weights }
    }

    /// The weights and first input index of output pixel `i`.
    fn taps(&self, i: usize) -> (usize, &[i32]) {
        (self.first[i], &self.weights[i * self.ksize..i * self.ksize + self.count[i]])
    }
}

/// A weighted sum of `taps.len()` values `stride` bytes apart starting at `data[0]`, rounded and clamped to 8 bits
/// as Pillow does (its accumulator starts at one half).
fn convolve(data: &[u8], stride: usize, taps: &[i32]) -> u8 {
    let sum = taps
        .iter()
        .enumerate()
        .fold(1i64 << (PRECISION_BITS - 1), |acc, (i, &w)| acc + i64::from(data[i * stride]) * i64::from(w));
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Which Pillow's order of the two passes to follow. The order changes the 8-bit rounding between them, so a resize
/// that both passes take can differ by a level or two in some bytes between the two.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PassOrder {
    /// Pillow 13 and later: the vertical pass first when the height shrinks by more than twice as many pixels as the
    /// width does, the horizontal pass first otherwise.
    #[default]
    Pillow13,
    /// Pillow 12 and older: always the horizontal pass first.
    Pillow12,
}

/// `image` resized to `width x height` with `filter`, byte for byte as `PIL.Image.resize` in the Pillow that `order`
/// names (a copy when the size does not change).
pub fn resize(image: &RgbImage, width: usize, height: usize, filter: Filter, order: PassOrder) -> Result<RgbImage> {
    check_size("resize target", width, height)?;
    let (in_width, in_height) = (image.width(), image.height());
    let shrink_y = in_height as i64 - height as i64;
    let vertical_first =
        order == PassOrder::Pillow13 && shrink_y > 0 && shrink_y > (in_width as i64 - width as i64) * 2;
    let horizontal = (width != in_width).then(|| Coefficients::new(in_width, width, filter));
    let vertical = (height != in_height).then(|| Coefficients::new(in_height, height, filter));
    match (horizontal, vertical) {
        (Some(h), None) => horizontal_pass(image, 0..in_height, &h),
        (None, Some(v)) => vertical_pass(image, 0, &v),
        (Some(h), Some(v)) if vertical_first => horizontal_pass(&vertical_pass(image, 0, &v)?, 0..height, &h),
        (Some(h), Some(v)) => {
            // Only the input rows the vertical pass reads go through the horizontal one (no value changes).
            let rows = v.first[0]..v.first[height - 1] + v.count[height - 1];
            vertical_pass(&horizontal_pass(image, rows.clone(), &h)?, rows.start, &v)
        }
        (None, None) => Ok(image.clone()),
    }
}

/// Rows `rows` of `image`, each resampled to `coefficients`' output width.
fn horizontal_pass(image: &RgbImage, rows: std::ops::Range<usize>, coefficients: &Coefficients) -> Result<RgbImage> {
    let width = coefficients.first.len();
    let mut pixels = vec![0u8; rows.len() * width * 3];
    pixels.par_chunks_mut(width * 3).enumerate().for_each(|(y, out)| {
        let row = image.row(rows.start + y);
        for (x, pixel) in out.chunks_exact_mut(3).enumerate() {
            let (first, taps) = coefficients.taps(x);
            for (c, value) in pixel.iter_mut().enumerate() {
                *value = convolve(&row[first * 3 + c..], 3, taps);
            }
        }
    });
    RgbImage::new(width, rows.len(), pixels)
}

/// Each column of `image` resampled to `coefficients`' output height; `image` starts at input row `first_row`.
fn vertical_pass(image: &RgbImage, first_row: usize, coefficients: &Coefficients) -> Result<RgbImage> {
    let stride = image.width() * 3;
    let height = coefficients.first.len();
    let mut pixels = vec![0u8; height * stride];
    pixels.par_chunks_mut(stride).enumerate().for_each(|(y, out)| {
        let (first, taps) = coefficients.taps(y);
        let start = (first - first_row) * stride;
        for (i, value) in out.iter_mut().enumerate() {
            *value = convolve(&image.pixels()[start + i..], stride, taps);
        }
    });
    RgbImage::new(image.width(), height, pixels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_of_each_filter_sum_to_one_in_fixed_point() {
        for filter in [Filter::Lanczos, Filter::Bilinear, Filter::Bicubic, Filter::Box, Filter::Hamming] {
            for (input, output) in [(7, 3), (3, 7), (500, 384), (1, 384), (384, 384)] {
                let c = Coefficients::new(input, output, filter);
                for i in 0..output {
                    let total: i64 = c.taps(i).1.iter().map(|&w| i64::from(w)).sum();
                    assert!((total - (1 << PRECISION_BITS)).abs() <= c.ksize as i64, "{filter:?} {input}->{output}");
                }
            }
        }
    }

    #[test]
    fn a_flat_image_stays_flat_and_nearest_is_refused() {
        let flat = RgbImage::filled(13, 5, [7, 200, 255]).unwrap();
        let out = resize(&flat, 4, 9, Filter::Bicubic, PassOrder::Pillow13).unwrap();
        assert!(out.pixels().chunks(3).all(|p| p == [7, 200, 255]));
        assert!(Filter::from_pil(0).unwrap_err().to_string().contains("NEAREST"));
        assert!(resize(&flat, 0, 9, Filter::Bicubic, PassOrder::Pillow12)
            .unwrap_err()
            .to_string()
            .contains("zero size"));
    }
}
