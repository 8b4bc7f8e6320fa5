//! Charts drawn into RGB images — a family's series as a line chart ([`render`], [`line_chart`]), grouped bars
//! ([`bar_chart`]) and histograms ([`histogram`]) (plotters' bitmap backend on a buffer; text in the
//! embedded DejaVu Sans subset, so no system font is needed). Non-finite points break the lines; a point alone
//! between gaps is a dot; the legend counts each series' gaps.

use std::fmt::Display;
use std::sync::OnceLock;

use image::RgbImage;
use plotters::coord::{CoordTranslate, Shift};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use super::series::Series;
use crate::{Error, Result};

/// DejaVu Sans cut to printable ASCII (10 KB; the Bitstream Vera licence is in `font/LICENSE`).
const FONT: &[u8] = include_bytes!("font/DejaVuSans-ascii.ttf");
const FAMILY: &str = "sans-serif";

/// Registers the embedded font with plotters once per process.
fn font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    ok.then_some(()).ok_or_else(|| Error::InvalidArgument("the embedded plot font did not load".into()))
}

fn drawing(title: &str) -> impl Fn(&dyn Display) -> Error + '_ {
    move |e| Error::InvalidArgument(format!("drawing the `{title}` plot: {e}"))
}

/// Line colours: matplotlib's "tab10", distinct on white and to most colour-blind readers.
const COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// A tick label: up to 4 decimals without trailing zeros, scientific notation for the very small or large, `0`
/// for what is zero at the axis's scale (`span`).
fn tick(value: f64, span: f64) -> String {
    let size = value.abs();
    if size <= span * 1e-9 {
        "0".into()
    } else if !(1e-3..1e6).contains(&size) {
        format!("{value:.2e}")
    } else {
        let fixed = format!("{value:.4}");
        fixed.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// `lo..hi` widened by 5 % on each side (by 1 when the values are all equal).
fn padded(lo: f64, hi: f64) -> std::ops::Range<f64> {
    let pad = if hi > lo { (hi - lo) * 0.05 } else { lo.abs().max(1.0) * 0.05 };
    lo - pad..hi + pad
}

/// The x and y ranges of the finite points (y: 0..1 when there is none).
fn ranges(series: &[&Series]) -> Result<(std::ops::Range<f64>, std::ops::Range<f64>)> {
    let bounds = |values: &mut dyn Iterator<Item = f64>| {
        values.fold(None, |b: Option<(f64, f64)>, v| Some(b.map_or((v, v), |(lo, hi)| (lo.min(v), hi.max(v)))))
    };
    let points = || series.iter().flat_map(|s| s.points.iter().copied());
    let (x_lo, x_hi) = bounds(&mut points().map(|(x, _)| x)).unwrap_or((0.0, 1.0));
    let (y_lo, y_hi) = bounds(&mut points().map(|(_, y)| y).filter(|y| y.is_finite())).unwrap_or((0.0, 1.0));
    let (x, y) = (padded(x_lo, x_hi), padded(y_lo, y_hi));
    if !(x.end - x.start).is_finite() || !(y.end - y.start).is_finite() {
        return Err(Error::InvalidArgument(format!(
            "values from {y_lo:e} to {y_hi:e} over steps {x_lo:e} to {x_hi:e} span more than a float can plot"
        )));
    }
    Ok((x, y))
}

/// The runs of consecutive finite points.
fn segments(points: &[(f64, f64)]) -> impl Iterator<Item = &[(f64, f64)]> {
    points.split(|(_, y)| !y.is_finite()).filter(|run| !run.is_empty())
}

/// A white `width` × `height` canvas that `paint` draws on (plotters' bitmap backend on a buffer), as an image.
fn canvas(
    title: &str,
    width: u32,
    height: u32,
    paint: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<()>,
) -> Result<RgbImage> {
    font()?;
    let fail = drawing(title);
    let mut pixels = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        paint(&root)?;
        root.present().map_err(|e| fail(&e))?;
    }
    RgbImage::from_raw(width, height, pixels).ok_or_else(|| fail(&"the image buffer has the wrong size"))
}

/// A chart's legend, drawn in its upper right corner.
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    fail: &dyn Fn(&dyn Display) -> Error,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FAMILY, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| fail(&e))
}

/// `series` (one family, at least one series) drawn as a `width` × `height` line chart over steps, titled `title`.
pub fn render(title: &str, series: &[&Series], width: u32, height: u32) -> Result<RgbImage> {
    line_chart(title, "step", series, width, height)
}

/// `series` (at least one) drawn as a `width` × `height` line chart titled `title`, the x axis named `x_desc`.
pub fn line_chart(title: &str, x_desc: &str, series: &[&Series], width: u32, height: u32) -> Result<RgbImage> {
    let (x_range, y_range) = ranges(series)?;
    let (x_span, y_span) = (x_range.end - x_range.start, y_range.end - y_range.start);
    let fail = drawing(title);
    canvas(title, width, height, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FAMILY, 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(72)
            .build_cartesian_2d(x_range, y_range)
            .map_err(|e| fail(&e))?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .x_label_formatter(&|x| tick(*x, x_span))
            .y_label_formatter(&|y| tick(*y, y_span))
            .light_line_style(RGBColor(238, 238, 238))
            .label_style((FAMILY, 14))
            .axis_desc_style((FAMILY, 16))
            .draw()
            .map_err(|e| fail(&e))?;
        for (i, s) in series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let gaps = s.gaps();
            let label = if gaps == 0 { s.name.clone() } else { format!("{} ({gaps} gaps)", s.name) };
            // The legend entry: an empty series carries it, so a series with no finite point is still listed.
            chart
                .draw_series(LineSeries::new(std::iter::empty(), colour.stroke_width(2)))
                .map_err(|e| fail(&e))?
                .label(label)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2)));
            for run in segments(&s.points) {
                if let [point] = run {
                    chart.draw_series([Circle::new(*point, 2, colour.filled())]).map_err(|e| fail(&e))?;
                } else {
                    let line = LineSeries::new(run.iter().copied(), colour.stroke_width(2));
                    chart.draw_series(line).map_err(|e| fail(&e))?;
                }
            }
        }
        legend(&mut chart, &fail)
    })
}

/// One bar of a [`bar_chart`]: `[left, right] × [0, height]` on the x axis, in its group's colour.
struct Bar {
    left: f64,
    right: f64,
    height: f64,
    group: usize,
}

/// Bars drawn on numeric axes, with a legend entry per group name; the x axis is labelled by `x_label` and the y
/// axis named `y_desc`. Non-finite heights are left out (they are reported where the numbers are).
fn bars(
    title: &str,
    y_desc: &str,
    x_range: std::ops::Range<f64>,
    x_label: &dyn Fn(f64) -> String,
    groups: &[String],
    bars: &[Bar],
    (width, height): (u32, u32),
) -> Result<RgbImage> {
    let top = bars.iter().map(|b| b.height).filter(|h| h.is_finite()).fold(0.0f64, f64::max);
    let low = bars.iter().map(|b| b.height).filter(|h| h.is_finite()).fold(0.0f64, f64::min);
    // Headroom above the tallest bar for the legend in the upper right corner.
    let top = if top > low { top } else { low + 1.0 };
    let y_range = padded(low, top + (top - low) * 0.3);
    let y_span = y_range.end - y_range.start;
    let fail = drawing(title);
    canvas(title, width, height, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FAMILY, 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(72)
            .build_cartesian_2d(x_range, y_range)
            .map_err(|e| fail(&e))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .y_desc(y_desc)
            .x_label_formatter(&|x| x_label(*x))
            .y_label_formatter(&|y| tick(*y, y_span))
            .light_line_style(RGBColor(238, 238, 238))
            .label_style((FAMILY, 14))
            .axis_desc_style((FAMILY, 16))
            .draw()
            .map_err(|e| fail(&e))?;
        for (g, name) in groups.iter().enumerate() {
            let colour = COLOURS[g % COLOURS.len()];
            let rectangles = bars
                .iter()
                .filter(|b| b.group == g && b.height.is_finite())
                .map(|b| Rectangle::new([(b.left, 0.0), (b.right, b.height)], colour.filled()));
            chart
                .draw_series(rectangles)
                .map_err(|e| fail(&e))?
                .label(name.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], colour.filled()));
        }
        legend(&mut chart, &fail)
    })
}

/// Grouped bars: for each category (labelled under its bars), one bar per group (`groups[g].1[c]`, the value of
/// group g in category c), side by side in the group's colour. Each group has a value for every category.
pub fn bar_chart(
    title: &str,
    y_desc: &str,
    categories: &[String],
    groups: &[(String, Vec<f64>)],
    width: u32,
    height: u32,
) -> Result<RgbImage> {
    if categories.is_empty() || groups.is_empty() {
        return Err(Error::InvalidArgument(format!("the `{title}` bar chart has no categories or no groups")));
    }
    if let Some((name, values)) = groups.iter().find(|(_, v)| v.len() != categories.len()) {
        return Err(Error::InvalidArgument(format!(
            "the `{title}` bar chart: group `{name}` has {} values for {} categories",
            values.len(),
            categories.len()
        )));
    }
    // Category c spans [c − 0.4, c + 0.4], split among the groups.
    let slot = 0.8 / groups.len() as f64;
    let all: Vec<Bar> = groups
        .iter()
        .enumerate()
        .flat_map(|(g, (_, values))| {
            values.iter().enumerate().map(move |(c, &v)| {
                let left = c as f64 - 0.4 + g as f64 * slot;
                Bar { left, right: left + slot * 0.9, height: v, group: g }
            })
        })
        .collect();
    // Ticks fall on whole numbers, the categories' centres; others stay blank.
    let label = |x: f64| {
        let c = x.round();
        if (x - c).abs() < 1e-6 && c >= 0.0 && (c as usize) < categories.len() {
            categories[c as usize].clone()
        } else {
            String::new()
        }
    };
    let names: Vec<String> = groups.iter().map(|(n, _)| n.clone()).collect();
    let x_range = -0.5..categories.len() as f64 - 0.5;
    bars(title, y_desc, x_range, &label, &names, &all, (width, height))
}

/// A histogram of the finite `values` in `bins` equal-width bins over their range (one bin around them when they
/// are all equal), the x axis named by the bins' bounds, `x_desc` in the legend.
pub fn histogram(title: &str, x_desc: &str, values: &[f64], bins: usize, width: u32, height: u32) -> Result<RgbImage> {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if finite.is_empty() || bins == 0 {
        return Err(Error::InvalidArgument(format!("the `{title}` histogram has no finite values or no bins")));
    }
    let lo = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if hi > lo { (lo, hi) } else { (lo - 0.5, hi + 0.5) };
    if !(hi - lo).is_finite() {
        return Err(Error::InvalidArgument(format!("the `{title}` histogram: values span more than a float can plot")));
    }
    let step = (hi - lo) / bins as f64;
    let mut counts = vec![0usize; bins];
    for v in finite {
        counts[(((v - lo) / step) as usize).min(bins - 1)] += 1;
    }
    let all: Vec<Bar> = counts
        .iter()
        .enumerate()
        .map(|(b, &n)| Bar {
            left: lo + b as f64 * step,
            right: lo + (b + 1) as f64 * step,
            height: n as f64,
            group: 0,
        })
        .collect();
    let span = hi - lo;
    let label = |x: f64| tick(x, span);
    bars(title, "count", padded(lo, hi), &label, &[x_desc.to_string()], &all, (width, height))
}
