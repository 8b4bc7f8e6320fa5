//! The packing plan: where every packed row comes from, computed on the host from the configuration, the media
//! list and the features' shape, before any tensor is touched.

use super::config::PackingConfig;
use super::geometry::{downsampled, pooled, unpadded};
use crate::media::{select_best_resolution, Size, MAX_IMAGE_SIDE};
use crate::{Error, Result};

/// One image or video of a batch, in the order its features come from the vision tower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Media {
    /// An image of `size` `(height, width)` pixels before preprocessing (transformers' `image_sizes`), taking
    /// `tiles` tiles of features: 1 for an image packed whole (several images in one sample, each padded to a
    /// square: its features and one newline), or 1 + the anyres grid's tiles (the base image first).
    Image { size: Size, tiles: usize },
    /// A video of `frames` frames, a tile each: every frame pooled 2×2, then one newline after the last frame.
    Video { frames: usize },
}

impl Media {
    /// Tiles of features the item takes.
    pub fn tiles(&self) -> usize {
        match *self {
            Media::Image { tiles, .. } => tiles,
            Media::Video { frames } => frames,
        }
    }

    /// The packed feature rows the item takes alone under `config` with `patches` feature rows a tile: the
    /// placeholder ids its `<image>` / `<video>` expands to.
    pub fn packed_rows(&self, config: &PackingConfig, patches: usize) -> Result<usize> {
        Ok(PackingPlan::new(config, std::slice::from_ref(self), [self.tiles(), patches])?.rows())
    }
}

/// A bilinear resize inside the packing: `src` rows of the features, gathered as `[n, input]` grids, resized to
/// `[n, output]` and written to the packed rows `dst` (both in row-major grid order).
#[derive(Clone, Debug)]
pub(super) struct Resample {
    pub n: usize,
    pub input: [usize; 2],
    pub output: [usize; 2],
    pub src: Vec<usize>,
    pub dst: Vec<usize>,
}

/// Where every packed row comes from. Packed rows are every image's rows (in media order), then every video's.
#[derive(Clone, Debug)]
pub struct PackingPlan {
    /// Features `[tiles, rows_per_tile, C]` the plan was made for.
    pub(super) tiles: usize,
    pub(super) rows_per_tile: usize,
    /// Feature rows copied as they are, and their packed rows.
    pub(super) direct_src: Vec<usize>,
    pub(super) direct_dst: Vec<usize>,
    /// Packed rows holding `image_newline`.
    pub(super) newline_dst: Vec<usize>,
    pub(super) resamples: Vec<Resample>,
    image_rows: usize,
    video_rows: usize,
}

/// Packed rows being laid out for one of the two kinds, before the images' and videos' offsets are known.
#[derive(Default)]
struct Builder {
    direct: Vec<(usize, usize)>,
    newlines: Vec<usize>,
    resamples: Vec<Resample>,
    rows: usize,
}

impl Builder {
    fn feature(&mut self, src: usize) {
        self.direct.push((src, self.rows));
        self.rows += 1;
    }

    fn newline(&mut self) {
        self.newlines.push(self.rows);
        self.rows += 1;
    }

    /// Reserves `count` packed rows for a resample's output; returns them.
    fn reserve(&mut self, count: usize) -> Vec<usize> {
        let rows = (self.rows..self.rows + count).collect();
        self.rows += count;
        rows
    }
}

impl PackingPlan {
    /// The plan for `media` over features of `[tiles, rows_per_tile, C]` (every item's tiles, in media order) under
    /// `config`. Errors name the item (by its index in `media`) and what does not fit: a tile count that is not the item's, an empty image
    /// size, a tile whose feature count is not the grid's.
    pub fn new(config: &PackingConfig, media: &[Media], features_shape: [usize; 2]) -> Result<PackingPlan> {
        config.validate()?;
        let [tiles, rows_per_tile] = features_shape;
        let total: usize = media.iter().try_fold(0usize, |acc, m| acc.checked_add(m.tiles())).unwrap_or(usize::MAX);
        if total != tiles {
            return Err(Error::Shape(format!(
                "the media take {total} tiles of features in all, but the features hold {tiles} tiles"
            )));
        }
        let skipped = config.feature_select.skipped();
        if rows_per_tile <= skipped && tiles > 0 {
            return Err(Error::Shape(format!(
                "each tile has {rows_per_tile} feature rows, none left after the `default` selection drops the first"
            )));
        }
        let kept = rows_per_tile.saturating_sub(skipped);
        let side = config.patches_per_side();
        let (mut images, mut videos) = (Builder::default(), Builder::default());
        let mut first_tile = 0;
        for (i, item) in media.iter().enumerate() {
            // Feature row of patch `p` of tile `t` of this item.
            let row = |t: usize, p: usize| (first_tile + t) * rows_per_tile + skipped + p;
            match *item {
                Media::Image { size, tiles: 0 } => {
                    return Err(Error::Shape(format!("image {i} ({}x{}) has 0 tiles of features", size.0, size.1)))
                }
                Media::Image { size, .. } if size.0 == 0 || size.1 == 0 || size.0.max(size.1) > MAX_IMAGE_SIDE => {
                    return Err(Error::InvalidArgument(format!(
                        "image {i} has size {}x{} (height x width): each side must be 1 to {MAX_IMAGE_SIDE} pixels",
                        size.0, size.1
                    )))
                }
                Media::Image { tiles: 1, .. } => {
                    (0..kept).for_each(|p| images.feature(row(0, p)));
                    images.newline();
                }
                Media::Image { size, tiles } => {
                    Self::anyres(config, i, size, tiles, kept, &mut images, &row)?;
                }
                Media::Video { frames: 0 } => return Err(Error::Shape(format!("video {i} has 0 frames"))),
                Media::Video { frames } => {
                    check_square("video", i, kept, side)?;
                    let out = pooled(side);
                    let src = (0..frames).flat_map(|f| (0..side * side).map(move |p| (f, p))).map(|(f, p)| row(f, p));
                    let dst = videos.reserve(frames * out * out);
                    let src = src.collect();
                    videos.resamples.push(Resample { n: frames, input: [side, side], output: [out, out], src, dst });
                    videos.newline();
                }
            }
            first_tile += item.tiles();
        }
        Ok(Self::join(images, videos, tiles, rows_per_tile))
    }

    /// An anyres image: the base tile's rows, then the unpadded (and maybe down-sampled) grid row by row, each row
    /// followed by a newline.
    fn anyres(
        config: &PackingConfig,
        i: usize,
        size: Size,
        tiles: usize,
        kept: usize,
        out: &mut Builder,
        row: &dyn Fn(usize, usize) -> usize,
    ) -> Result<()> {
        let side = config.patches_per_side();
        check_square("anyres image", i, kept, side)?;
        let (best_h, best_w) = select_best_resolution(size, &config.grid_pinpoints)?;
        let (grid_rows, grid_cols) = (best_h / config.image_size, best_w / config.image_size);
        if 1 + grid_rows * grid_cols != tiles {
            return Err(Error::Shape(format!(
                "image {i} of {}x{} pixels takes the {best_h}x{best_w} grid resolution, {grid_rows}x{grid_cols} tiles \
                 of {} plus the base tile, but has {tiles} tiles of features",
                size.0, size.1, config.image_size
            )));
        }
        let (grid_h, grid_w) = (grid_rows * side, grid_cols * side);
        if grid_h > super::config::MAX_GRID_SIDE || grid_w > super::config::MAX_GRID_SIDE {
            return Err(Error::Shape(format!("image {i}'s grid of {grid_h}x{grid_w} patches is too large")));
        }
        (0..kept).for_each(|p| out.feature(row(0, p)));
        // Feature row of grid cell (y, x): tile 1 + (y / side)·cols + x / side, patch (y % side)·side + x % side.
        let cell = |y: usize, x: usize| row(1 + (y / side) * grid_cols + x / side, (y % side) * side + x % side);
        let (rows, cols) = unpadded([grid_h, grid_w], size, config.unpad_rounding);
        if rows.is_empty() || cols.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "image {i} of {}x{} pixels unpads to an empty grid: its aspect ratio is too extreme",
                size.0, size.1
            )));
        }
        let (h, w) = (rows.len(), cols.len());
        match config.anyres_max.and_then(|n| downsampled(h, w, n, side)) {
            None => {
                for y in rows {
                    cols.clone().for_each(|x| out.feature(cell(y, x)));
                    out.newline();
                }
            }
            Some([h2, w2]) if h2 == 0 || w2 == 0 => {
                return Err(Error::InvalidArgument(format!(
                    "image {i} of {}x{} pixels would be down-sampled to {h2}x{w2} patches: its aspect ratio is too \
                     extreme",
                    size.0, size.1
                )))
            }
            Some([h2, w2]) => {
                let src = rows.flat_map(|y| cols.clone().map(move |x| (y, x))).map(|(y, x)| cell(y, x)).collect();
                let mut dst = Vec::with_capacity(h2 * w2);
                for _ in 0..h2 {
                    dst.extend(out.reserve(w2));
                    out.newline();
                }
                out.resamples.push(Resample { n: 1, input: [h, w], output: [h2, w2], src, dst });
            }
        }
        Ok(())
    }

    /// Both kinds' rows in one list: images first, videos after.
    fn join(images: Builder, videos: Builder, tiles: usize, rows_per_tile: usize) -> PackingPlan {
        let offset = images.rows;
        let (mut direct_src, mut direct_dst): (Vec<_>, Vec<_>) = images.direct.into_iter().unzip();
        direct_src.extend(videos.direct.iter().map(|&(s, _)| s));
        direct_dst.extend(videos.direct.iter().map(|&(_, d)| d + offset));
        let mut newline_dst = images.newlines;
        newline_dst.extend(videos.newlines.iter().map(|d| d + offset));
        let mut resamples = images.resamples;
        resamples.extend(videos.resamples.into_iter().map(|mut r| {
            r.dst.iter_mut().for_each(|d| *d += offset);
            r
        }));
        PackingPlan {
            tiles,
            rows_per_tile,
            direct_src,
            direct_dst,
            newline_dst,
            resamples,
            image_rows: images.rows,
            video_rows: videos.rows,
        }
    }

    /// Packed rows of all the images (the first rows of the packed tensor).
    pub fn image_rows(&self) -> usize {
        self.image_rows
    }

    /// Packed rows of all the videos (after the images').
    pub fn video_rows(&self) -> usize {
        self.video_rows
    }

    /// All packed rows.
    pub fn rows(&self) -> usize {
        self.image_rows + self.video_rows
    }

    /// The features' `[tiles, rows_per_tile]` the plan was made for.
    pub fn features_shape(&self) -> [usize; 2] {
        [self.tiles, self.rows_per_tile]
    }
}

/// A grid-packed item's tiles must hold `side²` features after the selection (transformers refuses otherwise too).
fn check_square(what: &str, i: usize, kept: usize, side: usize) -> Result<()> {
    if kept != side * side {
        return Err(Error::Shape(format!(
            "{what} {i}: each tile has {kept} features after the selection, but a {side}x{side} patch grid needs {}",
            side * side
        )));
    }
    Ok(())
}
