//! PNG plots of a run's metrics log: one chart per metric family (`loss.png` with the per-task and evaluation
//! losses, `lr.png`, `grad_norm.png`, `rewards.png` for TRL's `rewards/*`, … — whatever numeric keys the log holds),
//! written beside the checkpoints. Any trainer that appends JSON lines of metrics gets its plots from
//! [`write_metric_plots`]; `unireward plot` is the same call.
//!
//! - [`series`]: the log parsed into series (flattening, NaN and missing values, a cut last line, bounds);
//! - [`render()`]: one family drawn into an image.

pub mod render;
pub mod series;

use std::path::{Path, PathBuf};

use image::{ImageFormat, RgbImage};

pub use render::{bar_chart, histogram, line_chart, render};
pub use series::{parse_metrics, read_metrics, MetricsLog, Series, MAX_METRICS_BYTES, MAX_SERIES};

use crate::{Error, Result};

/// The width of every plot, in pixels.
pub const PLOT_WIDTH: u32 = 960;
/// The height of every plot, in pixels.
pub const PLOT_HEIGHT: u32 = 540;

/// What [`write_metric_plots`] wrote and found.
#[derive(Clone, Debug)]
pub struct PlotReport {
    /// One PNG per family, in the order of [`families`].
    pub files: Vec<PathBuf>,
    /// The log's series (with their gap counts, [`Series::gaps`]).
    pub log: MetricsLog,
}

impl PlotReport {
    /// `(series name, non-finite points)` for each series with any: the gaps in the plotted lines.
    pub fn gaps(&self) -> Vec<(&str, usize)> {
        self.log.series.iter().map(|s| (s.name.as_str(), s.gaps())).filter(|(_, n)| *n > 0).collect()
    }
}

/// The families of `log`'s series ([`Series::family`]), each with its series: `loss` first, then the others in
/// order of first appearance (the keys of one record come in alphabetical order).
pub fn families(log: &MetricsLog) -> Vec<(String, Vec<&Series>)> {
    let mut families: Vec<(String, Vec<&Series>)> = Vec::new();
    for s in &log.series {
        let family = s.family();
        match families.iter_mut().find(|(name, _)| *name == family) {
            Some((_, members)) => members.push(s),
            None => families.push((family, vec![s])),
        }
    }
    families.sort_by_key(|(name, _)| name != "loss");
    families
}

/// Reads the metrics log `metrics` (JSONL) and writes `<family>.png` for each metric family into `out_dir`
/// (created if missing), replacing older plots of the same names. Every chart is drawn before any file is written;
/// each file appears whole (written under a temporary name, then renamed).
pub fn write_metric_plots(metrics: &Path, out_dir: &Path) -> Result<PlotReport> {
    let log = read_metrics(metrics)?;
    if log.series.is_empty() {
        return Err(Error::InvalidArgument(format!("{}: no numeric metrics to plot", metrics.display())));
    }
    let mut images = Vec::new();
    for (family, members) in families(&log) {
        let image = render(&family, &members, PLOT_WIDTH, PLOT_HEIGHT).map_err(series::naming(metrics))?;
        images.push((family.clone(), image));
    }
    let mut files = Vec::new();
    for (family, image) in images {
        files.push(save_png(&image, out_dir, &format!("{family}.png"))?);
    }
    Ok(PlotReport { files, log })
}

/// Writes `image` as the PNG `out_dir/name` (the folder created if missing), whole: under a temporary name, then
/// renamed; returns its path.
pub fn save_png(image: &RgbImage, out_dir: &Path, name: &str) -> Result<PathBuf> {
    let io = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
        Error::Checkpoint(format!("cannot {what} {}: {e}", path.display()))
    };
    std::fs::create_dir_all(out_dir).map_err(|e| io("create", out_dir, &e))?;
    let path = out_dir.join(name);
    let partial = out_dir.join(format!(".{name}.partial"));
    image.save_with_format(&partial, ImageFormat::Png).map_err(|e| io("write", &partial, &e))?;
    std::fs::rename(&partial, &path).map_err(|e| io("rename into place", &path, &e))?;
    Ok(path)
}
