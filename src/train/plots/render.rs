//! One family's series drawn as a line chart into an RGB image (plotters' bitmap backend on a buffer; text in the
//! embedded DejaVu Sans subset, so no system font is needed). Non-finite points break the lines; a point alone
//! between gaps is a dot; the legend counts each series' gaps.

use std::fmt::Display;
use std::sync::OnceLock;

use image::RgbImage;
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

/// `series` (one family, at least one series) drawn as a `width` × `height` chart titled `title`.
pub fn render(title: &str, series: &[&Series], width: u32, height: u32) -> Result<RgbImage> {
    font()?;
    let (x_range, y_range) = ranges(series)?;
    let (x_span, y_span) = (x_range.end - x_range.start, y_range.end - y_range.start);
    let fail = drawing(title);
    let mut pixels = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FAMILY, 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(72)
            .build_cartesian_2d(x_range, y_range)
            .map_err(|e| fail(&e))?;
        chart
            .configure_mesh()
            .x_desc("step")
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
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FAMILY, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| fail(&e))?;
        root.present().map_err(|e| fail(&e))?;
    }
    RgbImage::from_raw(width, height, pixels).ok_or_else(|| fail(&"the image buffer has the wrong size"))
}
