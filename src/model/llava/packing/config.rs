//! What the packing step needs from a checkpoint's configuration, under either layout's names.

use crate::media::{Size, MAX_PINPOINTS, MAX_PINPOINT_SIDE, MAX_TILE_SIDE};
use crate::{Error, Result};

/// Which rows of each tile's vision features the model keeps (`vision_feature_select_strategy`,
/// `mm_vision_select_feature`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureSelect {
    /// `"full"` (and the original layout's `"patch"` with a tower without a class token, SigLIP): every row.
    Full,
    /// `"default"`: every row but the first (a class token, for towers that have one).
    Default,
}

impl FeatureSelect {
    /// The strategy of its name: `full` or `default`.
    pub fn from_name(name: &str) -> Result<FeatureSelect> {
        match name {
            "full" => Ok(FeatureSelect::Full),
            "default" => Ok(FeatureSelect::Default),
            _ => Err(Error::InvalidArgument(format!(
                "unknown vision feature select strategy `{name}`: expected `full` or `default`"
            ))),
        }
    }

    /// Rows dropped at the start of each tile.
    pub(super) fn skipped(self) -> usize {
        match self {
            FeatureSelect::Full => 0,
            FeatureSelect::Default => 1,
        }
    }
}

/// How `unpad_image` rounds the unpadded side, `original · current / original_other`: the two implementations differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnpadRounding {
    /// transformers' `int(round(x, 7))`: a product that lands a hair under an integer (23.9999999) counts as that
    /// integer. Hugging Face conversions (`model_type: "llava_onevision"`) run under this.
    Transformers,
    /// LLaVA-NeXT's `int(x)`, plain truncation. The original checkpoints (`llava_qwen`: UnifiedReward and
    /// LLaVA-OneVision as released) were trained and are served by that code.
    LlavaNext,
}

impl UnpadRounding {
    /// The unpadded side from the exact-ish product `x` ≥ 0.
    pub(super) fn apply(self, x: f64) -> usize {
        match self {
            // Python's round(x, 7) then int(): decimal rounding to 7 places, then truncation. Rounding the scaled
            // value differs from Python's correctly rounded decimal only within an ulp of a half-way point, which
            // cannot move the truncation unless x is within 5e-8 of an integer from below.
            UnpadRounding::Transformers => ((x * 1e7).round() / 1e7) as usize,
            UnpadRounding::LlavaNext => x as usize,
        }
    }
}

/// The packing step's configuration; the config loader builds it from `config.json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackingConfig {
    /// A tile's side in pixels (the vision tower's `image_size`, 384 for SigLIP-so400m).
    pub image_size: usize,
    /// A patch's side in pixels (14): a tile has `(image_size / patch_size)²` features.
    pub patch_size: usize,
    /// The anyres grid resolutions `(height, width)` in pixels, as transformers reads `image_grid_pinpoints`.
    pub grid_pinpoints: Vec<Size>,
    /// `N` of `vision_aspect_ratio` / `image_aspect_ratio` `anyres_max_N`: an unpadded grid of more than about N
    /// tiles' worth of features is down-sampled to it. `None` for plain `anyres` (no down-sampling).
    pub anyres_max: Option<usize>,
    pub feature_select: FeatureSelect,
    pub unpad_rounding: UnpadRounding,
}

/// The largest side of a tile grid in patches that the packing accepts: far above any real grid (6 tiles of 27
/// patches), low enough that every count stays small.
pub const MAX_GRID_SIDE: usize = 1 << 14;

impl PackingConfig {
    /// `N` of an aspect-ratio setting: `anyres_max_N` gives `Some(N)` (N ≥ 1), `anyres` gives `None`.
    pub fn parse_anyres_max(vision_aspect_ratio: &str) -> Result<Option<usize>> {
        if vision_aspect_ratio == "anyres" {
            return Ok(None);
        }
        let n = vision_aspect_ratio.strip_prefix("anyres_max_").and_then(|n| n.parse::<usize>().ok());
        match n {
            Some(n) if n > 0 => Ok(Some(n)),
            _ => Err(Error::InvalidArgument(format!(
                "unsupported vision aspect ratio `{vision_aspect_ratio}`: expected `anyres` or `anyres_max_N` with N ≥ 1"
            ))),
        }
    }

    /// Patches along a tile's side: `image_size / patch_size`.
    pub fn patches_per_side(&self) -> usize {
        self.image_size / self.patch_size.max(1)
    }

    /// Checks the sizes, with the image processor's bounds on tiles and pinpoints.
    pub fn validate(&self) -> Result<()> {
        if self.image_size > MAX_TILE_SIDE {
            return Err(Error::InvalidArgument(format!(
                "image_size {} exceeds the {MAX_TILE_SIDE} pixels a tile may have",
                self.image_size
            )));
        }
        if self.grid_pinpoints.len() > MAX_PINPOINTS {
            return Err(Error::InvalidArgument(format!(
                "{} grid pinpoints exceed the {MAX_PINPOINTS} supported",
                self.grid_pinpoints.len()
            )));
        }
        if let Some(&(h, w)) = self.grid_pinpoints.iter().find(|&&(h, w)| h.max(w) > MAX_PINPOINT_SIDE || h.min(w) == 0)
        {
            return Err(Error::InvalidArgument(format!(
                "grid pinpoint {h}x{w} is outside 1 to {MAX_PINPOINT_SIDE} pixels a side"
            )));
        }
        if self.patch_size == 0 || self.image_size < self.patch_size {
            return Err(Error::InvalidArgument(format!(
                "packing needs 1 ≤ patch_size ≤ image_size, got patch_size {} and image_size {}",
                self.patch_size, self.image_size
            )));
        }
        if self.patches_per_side() > MAX_GRID_SIDE {
            return Err(Error::InvalidArgument(format!(
                "image_size / patch_size = {} exceeds the {MAX_GRID_SIDE} patches a side the packing supports",
                self.patches_per_side()
            )));
        }
        if self.anyres_max == Some(0) {
            return Err(Error::InvalidArgument("anyres_max must be at least 1".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_aspect_ratios_and_rounds_like_each_implementation() {
        assert_eq!(PackingConfig::parse_anyres_max("anyres_max_9").unwrap(), Some(9));
        assert_eq!(PackingConfig::parse_anyres_max("anyres").unwrap(), None);
        for bad in ["anyres_max_0", "anyres_max_", "pad", "anyres_max_x"] {
            let e = PackingConfig::parse_anyres_max(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
        // 24 · (27·2 / 24)... a product a hair under 24: transformers keeps 24, LLaVA-NeXT truncates to 23.
        let x = 23.999_999_999_9;
        assert_eq!(UnpadRounding::Transformers.apply(x), 24);
        assert_eq!(UnpadRounding::LlavaNext.apply(x), 23);
        assert_eq!(UnpadRounding::Transformers.apply(23.4), 23);
        assert!(FeatureSelect::from_name("cls_patch").unwrap_err().to_string().contains("cls_patch"));
    }
}
