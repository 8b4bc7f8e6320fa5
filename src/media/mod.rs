//! Image and video input of the vision-language reward model: decoding (PNG, JPEG, WebP, GIF), frame sampling, and
//! preprocessing equal to transformers' `LlavaOnevisionImageProcessor` (PIL's resampling reproduced byte for byte,
//! anyres tiling, rescale and normalisation). It depends on no model: the packing of the vision features (which
//! needs [`ImagePixels::image_size`] and [`ImagePixels::grid`]) belongs to the model.
//!
//! ```no_run
//! use unireward::media::{decode_image, ImageLayout, ImageProcessor, ImageProcessorConfig};
//! # fn main() -> unireward::Result<()> {
//! let config = ImageProcessorConfig::from_file("checkpoint/preprocessor_config.json".as_ref())?;
//! let processor = ImageProcessor::new(config)?;
//! let image = decode_image("cat.jpg".as_ref())?;
//! let pixels = processor.preprocess(&image, ImageLayout::Anyres)?; // [1 + tiles, 3, 384, 384]
//! # Ok(()) }
//! ```

mod anyres;
mod config;
mod decode;
mod processor;
mod resample;
mod rgb;
mod video;

pub use anyres::{centring_offset, fitted_size, select_best_resolution, Size};
pub use config::{
    parse_grid_pinpoints, ImageProcessorConfig, Normalization, MAX_PINPOINTS, MAX_PINPOINT_SIDE, MAX_TILE_SIDE,
};
pub use decode::{decode_gif_frames, decode_image, MAX_DECODE_BYTES, MAX_FILE_BYTES, MAX_GIF_FRAMES};
pub use processor::{ImageLayout, ImagePixels, ImageProcessor, TileGrid};
pub use resample::{resize, Filter, PassOrder};
pub use rgb::{RgbImage, MAX_IMAGE_SIDE};
pub use video::{load_video, sample_frame_indices, VideoFrames, VideoSource, MAX_SAMPLED_FRAMES, MAX_VIDEO_FRAMES};
