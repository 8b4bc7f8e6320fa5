//! `ImageProcessor`: RGB images and video frames to the vision tower's pixel input, equal to transformers'
//! `LlavaOnevisionImageProcessor` (the slow, PIL-based one) for images and to its per-frame resize for videos.
//!
//! Every resize goes through [`resize`] (Pillow's algorithm, byte-exact), then each byte `v` becomes
//! `f32(v · rescale_factor)` (the product in f64, as numpy does it) and `(x - mean) / std` in f32: the result is the
//! processor's float32 output bit for bit.

use std::borrow::Borrow;
use std::path::Path;

use super::anyres::{centring_offset, fitted_size, select_best_resolution, Size};
use super::config::{ImageProcessorConfig, Normalization};
use super::decode::decode_image;
use super::resample::resize;
use super::rgb::{check_size, RgbImage};
use super::video::{load_video, VideoSource};
use crate::{DType, Device, Result, Tensor};

/// How an image enters the model. transformers decides by the sample: an image alone in its sample takes the anyres
/// tiles; each of several images in one sample is padded to a square and resized whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageLayout {
    Anyres,
    Square,
}

/// The tile grid of an anyres image: the grid resolution chosen among the pinpoints and its tiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TileGrid {
    /// `(height, width)` in pixels, one of the configuration's grid pinpoints.
    pub resolution: Size,
    pub rows: usize,
    pub cols: usize,
}

/// One preprocessed image.
#[derive(Debug)]
pub struct ImagePixels {
    /// `[patches, 3, height, width]` f32 on the CPU. Anyres: the whole image resized to one tile first, then the
    /// grid's tiles row by row; square: one patch.
    pub pixel_values: Tensor,
    /// `(height, width)` of the image before preprocessing (transformers' `image_sizes`), which the packing step
    /// uses to unpad the tile grid's features.
    pub image_size: Size,
    /// `None` for [`ImageLayout::Square`].
    pub grid: Option<TileGrid>,
}

/// Preprocessing under one checkpoint's configuration.
#[derive(Clone, Debug)]
pub struct ImageProcessor {
    config: ImageProcessorConfig,
}

impl ImageProcessor {
    /// A processor for `config` (checked with [`ImageProcessorConfig::validate`]).
    pub fn new(config: ImageProcessorConfig) -> Result<ImageProcessor> {
        config.validate()?;
        Ok(ImageProcessor { config })
    }

    pub fn config(&self) -> &ImageProcessorConfig {
        &self.config
    }

    /// The patches of one image in `layout`.
    pub fn preprocess(&self, image: &RgbImage, layout: ImageLayout) -> Result<ImagePixels> {
        let image_size = (image.height(), image.width());
        let (patches, grid) = match layout {
            ImageLayout::Anyres => {
                let (patches, grid) = self.anyres_patches(image)?;
                (patches, Some(grid))
            }
            ImageLayout::Square => (vec![self.resize_to_tile(&self.pad_to_square(image))?], None),
        };
        Ok(ImagePixels { pixel_values: self.to_tensor(&patches)?, image_size, grid })
    }

    /// Several images' pixel values as one `[images, patches, 3, H, W]` tensor (transformers' batching): with
    /// `do_pad` (the default) images with fewer patches are padded with zero patches up to the most any image has,
    /// which the packing step skips (it knows each image's patch count from its size); without it, the counts must
    /// be equal.
    pub fn stack(&self, images: &[ImagePixels]) -> Result<Tensor> {
        let (height, width) = self.config.size;
        let patch_len = 3 * height * width;
        for (i, image) in images.iter().enumerate() {
            let shape = image.pixel_values.shape();
            if shape.len() != 4 || shape[1..] != [3, height, width] {
                return Err(crate::Error::Shape(format!(
                    "image {i} has pixel values of shape {shape:?}; this processor makes [patches, 3, {height}, {width}]"
                )));
            }
        }
        let most = images.iter().map(|image| image.pixel_values.shape()[0]).max().unwrap_or(0);
        let mut out = Tensor::zeros(&[images.len(), most, 3, height, width], DType::F32, Device::Cpu)?;
        let values = out.as_mut_slice::<f32>()?;
        for (i, image) in images.iter().enumerate() {
            let shape = image.pixel_values.shape();
            if shape[0] != most && !self.config.pad_tiles {
                return Err(crate::Error::Shape(format!(
                    "image {i} has {} patches and another {most}: stacking them needs `do_pad`",
                    shape[0]
                )));
            }
            let start = i * most * patch_len;
            values[start..start + shape[0] * patch_len].copy_from_slice(image.pixel_values.as_slice::<f32>()?);
        }
        Ok(out)
    }

    /// The tile grid an image of `image_size` (`(height, width)`) takes in the anyres layout: what the model's
    /// packing step needs to arrange the tiles' features, without the pixels.
    pub fn tile_grid(&self, image_size: Size) -> Result<TileGrid> {
        let resolution = select_best_resolution(image_size, &self.config.grid_pinpoints)?;
        let tile = self.config.size.0;
        Ok(TileGrid { resolution, rows: resolution.0.div_ceil(tile), cols: resolution.1.div_ceil(tile) })
    }

    /// The shape [`ImageProcessor::preprocess`] gives an image of `image_size` (`(height, width)`) in `layout`.
    pub fn output_shape(&self, image_size: Size, layout: ImageLayout) -> Result<[usize; 4]> {
        check_size("image", image_size.1, image_size.0)?;
        let patches = match layout {
            ImageLayout::Anyres => {
                let grid = self.tile_grid(image_size)?;
                1 + grid.rows * grid.cols
            }
            ImageLayout::Square => 1,
        };
        Ok([patches, 3, self.config.size.0, self.config.size.1])
    }

    /// The processor of the checkpoint in `dir`, from its `preprocessor_config.json` (an error naming the file when
    /// it is missing: the tile size and normalisation are the checkpoint's, never guessed).
    pub fn for_checkpoint(dir: &Path) -> Result<ImageProcessor> {
        ImageProcessor::new(ImageProcessorConfig::from_file(&dir.join("preprocessor_config.json"))?)
    }

    /// The processor of the checkpoint in `dir`: its `preprocessor_config.json`, transformers' defaults when absent
    /// (as the judge and the sampler load LLaVA-OneVision checkpoints).
    pub fn for_checkpoint_or_defaults(dir: &Path) -> Result<ImageProcessor> {
        let preprocessor = dir.join("preprocessor_config.json");
        if preprocessor.is_file() {
            ImageProcessor::for_checkpoint(dir)
        } else {
            ImageProcessor::new(ImageProcessorConfig::default())
        }
    }

    /// The image file `path` decoded and preprocessed in `layout`.
    pub fn preprocess_file(&self, path: &Path, layout: ImageLayout) -> Result<ImagePixels> {
        self.preprocess(&decode_image(path)?, layout)
    }

    /// `frames` frames sampled evenly from the video at `path` (a folder of frame files or an animated GIF, see
    /// [`VideoSource::from_path`]) and preprocessed: `[frames, 3, height, width]` f32.
    pub fn preprocess_video(&self, path: &Path, frames: usize) -> Result<Tensor> {
        self.preprocess_frames(&load_video(&VideoSource::from_path(path)?, frames)?.frames)
    }

    /// Video frames (already sampled; owned or borrowed) each resized plainly to one tile: `[frames, 3, height,
    /// width]` f32.
    pub fn preprocess_frames<F: Borrow<RgbImage>>(&self, frames: &[F]) -> Result<Tensor> {
        if frames.is_empty() {
            return Err(crate::Error::InvalidArgument("a video needs at least one frame".into()));
        }
        let resized = frames.iter().map(|frame| self.resize_to_tile(frame.borrow())).collect::<Result<Vec<_>>>()?;
        self.to_tensor(&resized)
    }

    /// transformers' `get_image_patches`: the image scaled to fit the best grid resolution, centred on black,
    /// cut into tiles of `size.0` pixels a side (each then resized to `size`), after the whole image resized to `size`.
    fn anyres_patches(&self, image: &RgbImage) -> Result<(Vec<RgbImage>, TileGrid)> {
        let original = (image.height(), image.width());
        let grid = self.tile_grid(original)?;
        let resolution = grid.resolution;
        let fitted = fitted_size(original, resolution);
        let scaled = resize(image, fitted.1, fitted.0, self.config.resample, self.config.pass_order)?;
        let (top, left) = centring_offset(fitted, resolution);
        let canvas = scaled.paste_onto(resolution.1, resolution.0, left, top, [0, 0, 0]);
        let tile = self.config.size.0;
        let mut patches = Vec::with_capacity(1 + grid.rows * grid.cols);
        patches.push(self.resize_to_tile(image)?);
        for row in 0..grid.rows {
            for col in 0..grid.cols {
                let (y, x) = (row * tile, col * tile);
                let piece = canvas.crop(x, y, tile.min(resolution.1 - x), tile.min(resolution.0 - y));
                patches.push(self.resize_to_tile(&piece)?);
            }
        }
        Ok((patches, grid))
    }

    /// transformers' `pad_to_square`: centred on the mean colour (`int(mean · 255)` per channel).
    fn pad_to_square(&self, image: &RgbImage) -> RgbImage {
        let side = image.width().max(image.height());
        if image.width() == image.height() {
            return image.clone();
        }
        let background = self.config.normalization.mean.map(|m| (m * 255.0) as u8);
        let (top, left) = centring_offset((image.height(), image.width()), (side, side));
        image.paste_onto(side, side, left, top, background)
    }

    fn resize_to_tile(&self, image: &RgbImage) -> Result<RgbImage> {
        resize(image, self.config.size.1, self.config.size.0, self.config.resample, self.config.pass_order)
    }

    /// Rescaled, normalised, channels first.
    fn to_tensor(&self, patches: &[RgbImage]) -> Result<Tensor> {
        let (height, width) = self.config.size;
        let plane = height * width;
        let mut out = Tensor::zeros(&[patches.len(), 3, height, width], DType::F32, Device::Cpu)?;
        let values = out.as_mut_slice::<f32>()?;
        // Per channel, the byte-to-value table: 256 entries computed as the processor computes each pixel.
        let tables: Vec<[f32; 256]> = (0..3)
            .map(|c| {
                std::array::from_fn(|v| {
                    let x = match self.config.rescale_factor {
                        Some(factor) => (v as f64 * factor) as f32,
                        None => v as f32,
                    };
                    let Normalization { mean, std } = &self.config.normalization;
                    if self.config.do_normalize {
                        (x - mean[c] as f32) / std[c] as f32
                    } else {
                        x
                    }
                })
            })
            .collect();
        for (patch, out) in patches.iter().zip(values.chunks_exact_mut(3 * plane)) {
            for (i, rgb) in patch.pixels().chunks_exact(3).enumerate() {
                for c in 0..3 {
                    out[c * plane + i] = tables[c][usize::from(rgb[c])];
                }
            }
        }
        Ok(out)
    }
}
