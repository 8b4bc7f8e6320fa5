//! `ImageProcessorConfig`: what a checkpoint's `preprocessor_config.json` says about turning pixels into the vision
//! tower's input, with the defaults of transformers' `LlavaOnevisionImageProcessor` for absent keys.
//!
//! Keys that would change the computation in a way not implemented here (`do_resize: false`, a centre crop, NEAREST
//! resampling) are refused by name; keys that change nothing here (`processor_class`, `crop_size` when
//! `do_center_crop` is off, `do_convert_rgb`: decoded images are always RGB) are ignored.

use std::path::Path;

use serde_json::{Map, Value};

use super::resample::{Filter, PassOrder};
use crate::model::files::{read_text, MAX_JSON_BYTES};
use crate::{Error, Result};

/// Largest tile side accepted from a config (SigLIP uses 384; the largest vision towers use a little over 1000).
pub const MAX_TILE_SIDE: usize = 4096;
/// Largest grid pinpoint side (LLaVA-OneVision's largest is 2304) and most pinpoints (it has 36).
pub const MAX_PINPOINT_SIDE: usize = 16384;
pub const MAX_PINPOINTS: usize = 1024;

/// OpenAI CLIP's normalisation, transformers' default for this processor.
const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// The preprocessing of images (and, with the same size and normalisation, of video frames).
#[derive(Clone, Debug, PartialEq)]
pub struct ImageProcessorConfig {
    /// The vision tower's input, `(height, width)`: each tile and video frame is resized to it.
    pub size: (usize, usize),
    /// Candidate `(height, width)` resolutions of the tile grid (anyres).
    pub grid_pinpoints: Vec<(usize, usize)>,
    pub resample: Filter,
    /// The Pillow version whose resampling to reproduce (not a `preprocessor_config.json` key: transformers resizes
    /// with whatever Pillow is installed). Pillow 13 by default.
    pub pass_order: PassOrder,
    /// `None`: pixels stay in 0..=255.
    pub rescale_factor: Option<f64>,
    /// The checkpoint's mean and std; the mean also colours the padding of square-layout images.
    pub normalization: Normalization,
    /// `false`: the mean and std are not applied (transformers' `do_normalize`).
    pub do_normalize: bool,
    /// Whether a batch's images are padded with empty tiles to the same tile count (transformers' `do_pad`).
    pub pad_tiles: bool,
}

/// Per-channel `(x - mean) / std`, after rescaling.
#[derive(Clone, Debug, PartialEq)]
pub struct Normalization {
    pub mean: [f64; 3],
    pub std: [f64; 3],
}

impl Default for ImageProcessorConfig {
    /// `LlavaOnevisionImageProcessor()`: 384x384 tiles, grids of 1 to 6 tiles a side, bicubic, 1/255, CLIP's
    /// mean and std.
    fn default() -> Self {
        ImageProcessorConfig {
            size: (384, 384),
            grid_pinpoints: grid_range((1, 1), (6, 6), 384),
            resample: Filter::Bicubic,
            pass_order: PassOrder::Pillow13,
            rescale_factor: Some(1.0 / 255.0),
            normalization: Normalization { mean: CLIP_MEAN, std: CLIP_STD },
            do_normalize: true,
            pad_tiles: true,
        }
    }
}

impl ImageProcessorConfig {
    /// Reads and validates `path` (a `preprocessor_config.json`).
    pub fn from_file(path: &Path) -> Result<ImageProcessorConfig> {
        let text = read_text(path, MAX_JSON_BYTES)?;
        ImageProcessorConfig::from_json(&text).map_err(|e| match e {
            Error::Checkpoint(msg) => Error::Checkpoint(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// Parses and validates the text of a `preprocessor_config.json`.
    pub fn from_json(text: &str) -> Result<ImageProcessorConfig> {
        let map: Map<String, Value> = serde_json::from_str(text)
            .map_err(|e| Error::Checkpoint(format!("preprocessor config is not a JSON object: {e}")))?;
        let flag = |key: &str, default: bool| match map.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(invalid(key, other, "true or false")),
        };
        if !flag("do_resize", true)? {
            return Err(invalid("do_resize", &Value::Bool(false), "true (tiles are always resized to `size`)"));
        }
        if flag("do_center_crop", false)? {
            return Err(invalid("do_center_crop", &Value::Bool(true), "false (LLaVA-OneVision does not crop)"));
        }
        let defaults = ImageProcessorConfig::default();
        let size = match map.get("size") {
            None | Some(Value::Null) => defaults.size,
            Some(value) => parse_size(value)?,
        };
        let grid_pinpoints = match map.get("image_grid_pinpoints") {
            None | Some(Value::Null) => defaults.grid_pinpoints,
            Some(value) => parse_grid_pinpoints(value, size.0)?,
        };
        let resample = match map.get("resample") {
            None | Some(Value::Null) => defaults.resample,
            Some(value) => value
                .as_i64()
                .ok_or_else(|| invalid("resample", value, "a PIL filter number"))
                .and_then(|code| Filter::from_pil(code).map_err(|e| Error::Checkpoint(format!("`resample`: {e}"))))?,
        };
        let rescale_factor = match map.get("rescale_factor") {
            None | Some(Value::Null) => 1.0 / 255.0,
            Some(value) => value
                .as_f64()
                .filter(|f| f.is_finite() && *f > 0.0)
                .ok_or_else(|| invalid("rescale_factor", value, "a positive finite number"))?,
        };
        let normalization = Normalization {
            mean: channels(&map, "image_mean", CLIP_MEAN, |m| (0.0..=1.0).contains(&m), "in [0, 1]")?,
            std: channels(&map, "image_std", CLIP_STD, |s| s.is_finite() && s > 0.0, "positive and finite")?,
        };
        let config = ImageProcessorConfig {
            size,
            grid_pinpoints,
            resample,
            pass_order: PassOrder::Pillow13,
            rescale_factor: flag("do_rescale", true)?.then_some(rescale_factor),
            normalization,
            do_normalize: flag("do_normalize", true)?,
            pad_tiles: flag("do_pad", true)?,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks a configuration built in code (a parsed one already is): sizes within the bounds above, at least one
    /// pinpoint, a positive finite rescale factor, means in [0, 1], positive finite stds.
    pub fn validate(&self) -> Result<()> {
        let fail = |what: String| Err(Error::InvalidArgument(format!("image processor config: {what}")));
        let (height, width) = self.size;
        if !(1..=MAX_TILE_SIDE).contains(&height) || !(1..=MAX_TILE_SIDE).contains(&width) {
            return fail(format!("size {height}x{width} is outside 1 to {MAX_TILE_SIDE} a side"));
        }
        if self.grid_pinpoints.is_empty() || self.grid_pinpoints.len() > MAX_PINPOINTS {
            return fail(format!("{} grid pinpoints (1 to {MAX_PINPOINTS} accepted)", self.grid_pinpoints.len()));
        }
        if let Some(&(h, w)) = self
            .grid_pinpoints
            .iter()
            .find(|(h, w)| !(1..=MAX_PINPOINT_SIDE).contains(h) || !(1..=MAX_PINPOINT_SIDE).contains(w))
        {
            return fail(format!("grid pinpoint {h}x{w} is outside 1 to {MAX_PINPOINT_SIDE} a side"));
        }
        if let Some(factor) = self.rescale_factor.filter(|f| !(f.is_finite() && *f > 0.0)) {
            return fail(format!("rescale factor {factor} is not positive and finite"));
        }
        let Normalization { mean, std } = &self.normalization;
        if !mean.iter().all(|m| (0.0..=1.0).contains(m)) || !std.iter().all(|s| s.is_finite() && *s > 0.0) {
            return fail(format!("mean {mean:?} must be in [0, 1] and std {std:?} positive and finite"));
        }
        Ok(())
    }

    /// The same configuration with the grid pinpoints of a model's `config.json` (the original LLaVA layout keeps
    /// them there: a list of `[height, width]` pairs, or a range string such as `"(1x1),...,(6x6)"` in tiles).
    pub fn with_grid_pinpoints(mut self, value: &Value) -> Result<ImageProcessorConfig> {
        self.grid_pinpoints = parse_grid_pinpoints(value, self.size.0)?;
        Ok(self)
    }
}

fn invalid(key: &str, value: &Value, expected: &str) -> Error {
    Error::Checkpoint(format!("preprocessor config: `{key}` = {value} is not supported (expected {expected})"))
}

fn side(key: &str, value: &Value, max: usize) -> Result<usize> {
    value
        .as_u64()
        .and_then(|v| usize::try_from(v).ok())
        .filter(|v| (1..=max).contains(v))
        .ok_or_else(|| invalid(key, value, &format!("a whole number from 1 to {max}")))
}

/// `{"height", "width"}`, `{"shortest_edge"}` or a bare number (transformers' `get_size_dict` without
/// `default_to_square`): the processor resizes to `(height, width)`, or to a square of the shortest edge.
fn parse_size(value: &Value) -> Result<(usize, usize)> {
    if value.is_u64() {
        let edge = side("size", value, MAX_TILE_SIDE)?;
        return Ok((edge, edge));
    }
    let Some(map) = value.as_object() else {
        return Err(invalid("size", value, "{\"height\", \"width\"} or {\"shortest_edge\"}"));
    };
    match (map.get("height"), map.get("width"), map.get("shortest_edge")) {
        (Some(h), Some(w), _) => Ok((side("size.height", h, MAX_TILE_SIDE)?, side("size.width", w, MAX_TILE_SIDE)?)),
        (None, None, Some(edge)) => {
            let edge = side("size.shortest_edge", edge, MAX_TILE_SIDE)?;
            Ok((edge, edge))
        }
        _ => Err(invalid("size", value, "{\"height\", \"width\"} or {\"shortest_edge\"}")),
    }
}

/// A list of `[height, width]` pairs in pixels, or LLaVA's range string `"(1x1),...,(6x6)"` in tiles of `tile`
/// pixels (every grid from the first to the last, as LLaVA-NeXT's `process_anyres_image` expands it).
pub fn parse_grid_pinpoints(value: &Value, tile: usize) -> Result<Vec<(usize, usize)>> {
    const KEY: &str = "image_grid_pinpoints";
    let pinpoints = match value {
        Value::String(text) => {
            let grids =
                parse_grid_string(text).ok_or_else(|| invalid(KEY, value, "a string like \"(1x1),...,(6x6)\""))?;
            let (first, last) = (grids[0], grids[grids.len() - 1]);
            if first.0 > last.0 || first.1 > last.1 || last.0.max(last.1) > MAX_PINPOINT_SIDE / tile {
                return Err(invalid(KEY, value, "an increasing range of tile grids within bounds"));
            }
            grid_range(first, last, tile)
        }
        Value::Array(pairs) if !pairs.is_empty() && pairs.len() <= MAX_PINPOINTS => pairs
            .iter()
            .map(|pair| match pair.as_array().map(Vec::as_slice) {
                Some([h, w]) => Ok((side(KEY, h, MAX_PINPOINT_SIDE)?, side(KEY, w, MAX_PINPOINT_SIDE)?)),
                _ => Err(invalid(KEY, pair, "[height, width] pairs")),
            })
            .collect::<Result<Vec<_>>>()?,
        _ => return Err(invalid(KEY, value, &format!("1 to {MAX_PINPOINTS} [height, width] pairs"))),
    };
    Ok(pinpoints)
}

/// The `(AxB)` groups of a LLaVA pinpoint string, or `None` when it has none or anything else.
fn parse_grid_string(text: &str) -> Option<Vec<(usize, usize)>> {
    let grids = text
        .split(',')
        .map(str::trim)
        .filter(|part| *part != "...")
        .map(|part| {
            let (a, b) = part.strip_prefix('(')?.strip_suffix(')')?.split_once('x')?;
            Some((a.trim().parse().ok().filter(|&a| a > 0)?, b.trim().parse().ok().filter(|&b| b > 0)?))
        })
        .collect::<Option<Vec<(usize, usize)>>>()?;
    (!grids.is_empty()).then_some(grids)
}

/// Every `(rows · tile, cols · tile)` from `first` to `last` grids, rows outermost.
fn grid_range(first: (usize, usize), last: (usize, usize), tile: usize) -> Vec<(usize, usize)> {
    (first.0..=last.0).flat_map(|r| (first.1..=last.1).map(move |c| (r * tile, c * tile))).collect()
}

/// A per-channel value: three numbers or one for all, each satisfying `ok`.
fn channels(
    map: &Map<String, Value>,
    key: &str,
    default: [f64; 3],
    ok: fn(f64) -> bool,
    rule: &str,
) -> Result<[f64; 3]> {
    let expected = format!("3 numbers (or one) {rule}");
    let values = match map.get(key) {
        None | Some(Value::Null) => return Ok(default),
        Some(Value::Array(items)) if items.len() == 3 => [items[0].as_f64(), items[1].as_f64(), items[2].as_f64()],
        Some(single) if single.is_number() => [single.as_f64(); 3],
        Some(other) => return Err(invalid(key, other, &expected)),
    };
    match values {
        [Some(a), Some(b), Some(c)] if [a, b, c].into_iter().all(ok) => Ok([a, b, c]),
        _ => Err(invalid(key, &map[key], &expected)),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn defaults_are_transformers_defaults() {
        let config = ImageProcessorConfig::from_json("{}").unwrap();
        assert_eq!(config, ImageProcessorConfig::default());
        assert_eq!(config.grid_pinpoints.len(), 36);
        assert_eq!(config.grid_pinpoints[1], (384, 768));
        assert_eq!(config.grid_pinpoints[35], (2304, 2304));
    }

    #[test]
    fn llava_range_strings_expand_to_every_grid() {
        let pinpoints = parse_grid_pinpoints(&json!("(1x1),...,(6x6)"), 384).unwrap();
        assert_eq!(pinpoints, ImageProcessorConfig::default().grid_pinpoints);
        assert_eq!(parse_grid_pinpoints(&json!("(1x2)"), 10).unwrap(), vec![(10, 20)]);
        for bad in [json!("(0x1)"), json!("1x1"), json!("(2x2),(1x1)"), json!([]), json!([[1]]), json!([[0, 5]])] {
            let err = parse_grid_pinpoints(&bad, 384).unwrap_err().to_string();
            assert!(err.contains("image_grid_pinpoints"), "{bad}: {err}");
        }
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            (r#"{"size": {"height": 0, "width": 4}}"#, "size.height"),
            (r#"{"size": {"longest_edge": 4}}"#, "`size`"),
            (r#"{"size": 100000}"#, "`size`"),
            (r#"{"image_mean": [0.5, 0.5]}"#, "image_mean"),
            (r#"{"image_mean": [0.5, 0.5, 2]}"#, "image_mean"),
            (r#"{"image_std": [0.5, 0, 0.5]}"#, "image_std"),
            (r#"{"rescale_factor": -1}"#, "rescale_factor"),
            (r#"{"resample": 0}"#, "NEAREST"),
            (r#"{"resample": "bicubic"}"#, "resample"),
            (r#"{"do_resize": false}"#, "do_resize"),
            (r#"{"do_center_crop": true}"#, "do_center_crop"),
            (r#"{"do_pad": 1}"#, "do_pad"),
            ("[1]", "not a JSON object"),
        ];
        for (text, expected) in cases {
            let err = ImageProcessorConfig::from_json(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn configs_built_in_code_are_validated() {
        let valid = ImageProcessorConfig::default();
        let cases = [
            (ImageProcessorConfig { size: (0, 384), ..valid.clone() }, "size 0x384"),
            (ImageProcessorConfig { grid_pinpoints: Vec::new(), ..valid.clone() }, "0 grid pinpoints"),
            (ImageProcessorConfig { grid_pinpoints: vec![(384, 0)], ..valid.clone() }, "pinpoint 384x0"),
            (ImageProcessorConfig { rescale_factor: Some(f64::NAN), ..valid.clone() }, "rescale factor NaN"),
            (
                ImageProcessorConfig {
                    normalization: Normalization { mean: [0.5; 3], std: [0.5, 0.0, 0.5] },
                    ..valid.clone()
                },
                "std",
            ),
        ];
        for (config, expected) in cases {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
        valid.validate().unwrap();
    }

    #[test]
    fn flags_turn_steps_off() {
        let config = ImageProcessorConfig::from_json(
            r#"{"do_rescale": false, "do_normalize": false, "do_pad": false, "image_mean": 0.5, "size": {"shortest_edge": 8}}"#,
        )
        .unwrap();
        assert_eq!(
            (config.rescale_factor, config.do_normalize, config.pad_tiles, config.size),
            (None, false, false, (8, 8))
        );
        assert_eq!(config.normalization.mean, [0.5; 3]);
    }
}
