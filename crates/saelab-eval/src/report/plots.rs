//! The report's plots, rendered with `plotters` as PNG or SVG: the L0–FVU frontier,
//! L0 against CE loss score, training curves and latent densities.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use saelab_core::{Error, Result};

use super::runs::{ArchSeries, CurvePoint, RunSummary};

/// Image format of the plots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlotFormat {
    /// Raster PNG.
    Png,
    /// Vector SVG.
    Svg,
}

impl PlotFormat {
    /// The file extension (`png`, `svg`).
    pub fn ext(self) -> &'static str {
        match self {
            PlotFormat::Png => "png",
            PlotFormat::Svg => "svg",
        }
    }
}

/// Places where a TrueType font is commonly found.
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "/Library/Fonts/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// Registers a TrueType font for the plots' text (once per process): `$SAELAB_FONT`,
/// else the first of the usual system font paths that exists. Returns the file used, or why none.
pub fn ensure_font() -> std::result::Result<PathBuf, String> {
    static FONT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let candidates: Vec<PathBuf> = std::env::var_os("SAELAB_FONT")
            .map(PathBuf::from)
            .into_iter()
            .chain(FONT_PATHS.iter().map(PathBuf::from))
            .collect();
        for p in &candidates {
            let Ok(bytes) = std::fs::read(p) else {
                continue;
            };
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return Ok(p.clone());
            }
        }
        Err("no TrueType font found (set SAELAB_FONT to a .ttf file)".to_string())
    })
    .clone()
}

/// Colour of an architecture (fixed, so that reports are comparable); a series key
/// `"arch n=width"` takes its architecture's colour unless another width came first.
fn arch_color(key: &str, i: usize, taken: &mut Vec<String>) -> RGBColor {
    let arch = key.split(' ').next().unwrap_or(key);
    if taken.iter().any(|t| t == arch) {
        return run_color(i + 10);
    }
    taken.push(arch.to_string());
    match arch {
        "topk" => RGBColor(31, 119, 180),
        "batchtopk" => RGBColor(255, 127, 14),
        "jumprelu" => RGBColor(44, 160, 44),
        "relu" => RGBColor(214, 39, 40),
        "gated" => RGBColor(148, 103, 189),
        _ => run_color(i + 5),
    }
}

/// A qualitative palette for runs (20 colours: strong, then light variants).
fn run_color(i: usize) -> RGBColor {
    const P: [RGBColor; 20] = [
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
        RGBColor(0, 0, 128),
        RGBColor(255, 187, 120),
        RGBColor(0, 100, 0),
        RGBColor(255, 152, 150),
        RGBColor(197, 176, 213),
        RGBColor(196, 156, 148),
        RGBColor(128, 0, 64),
        RGBColor(64, 64, 64),
        RGBColor(128, 128, 0),
        RGBColor(0, 128, 128),
    ];
    P[i % P.len()]
}

type PlotResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// Draws into `path` with whichever backend `format` names.
fn render(
    path: &Path,
    format: PlotFormat,
    size: (u32, u32),
    draw_png: impl FnOnce(DrawingArea<BitMapBackend<'_>, Shift>) -> PlotResult,
    draw_svg: impl FnOnce(DrawingArea<SVGBackend<'_>, Shift>) -> PlotResult,
) -> Result<()> {
    let r = match format {
        PlotFormat::Png => {
            let root = BitMapBackend::new(path, size).into_drawing_area();
            draw_png(root)
        }
        PlotFormat::Svg => {
            let root = SVGBackend::new(path, size).into_drawing_area();
            draw_svg(root)
        }
    };
    r.map_err(|e| Error::bad_file(path, format!("cannot draw the plot: {e}")))
}

/// Calls `render` with one generic drawing function for both backends.
macro_rules! plot {
    ($path:expr, $fmt:expr, $size:expr, $f:ident ( $($arg:expr),* )) => {
        render($path, $fmt, $size, |root| $f(root, $($arg),*), |root| $f(root, $($arg),*))
    };
}

/// A range padded by a fraction of its span (or ±1 when empty), in linear space.
fn padded(lo: f64, hi: f64, frac: f64) -> (f64, f64) {
    if !(lo.is_finite() && hi.is_finite()) {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    if span <= 0.0 {
        return (lo - 0.5 * lo.abs().max(1.0), hi + 0.5 * hi.abs().max(1.0));
    }
    (lo - frac * span, hi + frac * span)
}

/// A range padded in log space (positive values).
fn log_padded(lo: f64, hi: f64) -> (f64, f64) {
    let (lo, hi) = (lo.max(1e-6), hi.max(1e-6));
    if hi / lo < 1.5 {
        (lo / 1.5, hi * 1.5)
    } else {
        (lo / 1.2, hi * 1.2)
    }
}

/// Tick values for a log axis over `[lo, hi]`: powers of two, or 1-2-5 decades when
/// the range is wide.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut out = Vec::new();
    let wide = hi / lo.max(1e-12) > 1e4;
    let mut e = lo.max(1e-12).log10().floor() as i32 - 1;
    while 10f64.powi(e) <= hi * 10.0 {
        let steps: &[f64] = if wide { &[1.0] } else { &[1.0, 2.0, 5.0] };
        for m in steps {
            let v = m * 10f64.powi(e);
            if v >= lo && v <= hi {
                out.push(v);
            }
        }
        e += 1;
    }
    if out.len() < 3 && !wide {
        // Narrow range: powers of two.
        out.clear();
        let mut v = 2f64.powi(lo.max(1e-12).log2().ceil() as i32);
        while v <= hi {
            out.push(v);
            v *= 2.0;
        }
    }
    out
}

/// Compact tick label.
fn tick(v: &f64) -> String {
    if *v >= 1000.0 {
        si(*v)
    } else if *v >= 1.0 {
        format!("{}", (*v * 100.0).round() / 100.0)
    } else if *v >= 1e-3 {
        format!("{}", (*v * 1000.0).round() / 1000.0)
    } else {
        format!("{v:.0e}")
    }
}

/// L0 (log axis) against a metric, one line + markers per architecture.
fn l0_plot<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    series: &ArchSeries,
    title: &str,
    y_desc: &str,
    log_y: bool,
) -> PlotResult
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let pts: Vec<&(f64, f64, String)> = series.values().flatten().collect();
    let (x0, x1) = log_padded(
        pts.iter().map(|p| p.0).fold(f64::INFINITY, f64::min),
        pts.iter().map(|p| p.0).fold(0.0, f64::max),
    );
    let (ylo, yhi) = (
        pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min),
        pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max),
    );
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(title, ("sans-serif", 24))
        .margin(18)
        .x_label_area_size(50)
        .y_label_area_size(70);
    macro_rules! body {
        ($chart:ident) => {{
            $chart
                .configure_mesh()
                .x_label_formatter(&tick)
                .x_desc("L0 (active latents per token)")
                .y_desc(y_desc)
                .label_style(("sans-serif", 15))
                .axis_desc_style(("sans-serif", 17))
                .draw()?;
            let mut taken = Vec::new();
            for (i, (arch, pts)) in series.iter().enumerate() {
                let c = arch_color(arch, i, &mut taken);
                let xy: Vec<(f64, f64)> = pts.iter().map(|p| (p.0, p.1)).collect();
                $chart
                    .draw_series(LineSeries::new(xy.clone(), c.stroke_width(2)))?
                    .label(arch.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 22, y)], c.stroke_width(3))
                    });
                $chart.draw_series(pts.iter().map(|p| {
                    EmptyElement::at((p.0, p.1))
                        + Circle::new((0, 0), 5, c.filled())
                        + Text::new(
                            p.2.clone(),
                            (7, -16),
                            ("sans-serif", 13).into_font().color(&c),
                        )
                }))?;
            }
            $chart
                .configure_series_labels()
                .label_font(("sans-serif", 16))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperRight)
                .draw()?;
        }};
    }
    let xr = (x0..x1).log_scale().with_key_points(log_ticks(x0, x1));
    if log_y {
        let (y0, y1) = log_padded(ylo, yhi);
        let yr = (y0..y1).log_scale().with_key_points(log_ticks(y0, y1));
        let mut chart = builder.build_cartesian_2d(xr, yr)?;
        body!(chart);
    } else {
        let (y0, y1) = padded(ylo, yhi, 0.12);
        let mut chart = builder.build_cartesian_2d(xr, y0..y1)?;
        body!(chart);
    }
    root.present()?;
    Ok(())
}

/// One panel of the training plot: its area, axis label and the value plotted.
type Panel<'a, DB> = (&'a DrawingArea<DB, Shift>, &'a str, fn(&CurvePoint) -> f64);

/// FVU and L0 of training batches against tokens, one line per run.
fn training_plot<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    runs: &[RunSummary],
) -> PlotResult
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let root = root.titled("Training curves", ("sans-serif", 24))?;
    let (left, right) = root.split_horizontally(root.dim_in_pixel().0 / 2);
    let panels: [Panel<'_, DB>; 2] = [
        (&left, "FVU (training batch)", |p| p.fvu),
        (&right, "L0 (training batch)", |p| p.l0),
    ];
    let t_max = runs
        .iter()
        .flat_map(|r| r.curve.iter().map(|p| p.tokens))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    for (pi, (area, desc, get)) in panels.into_iter().enumerate() {
        let vals: Vec<f64> = runs
            .iter()
            .flat_map(|r| r.curve.iter().map(get))
            .filter(|v| v.is_finite() && *v > 0.0)
            .collect();
        let (y0, y1) = log_padded(
            vals.iter().cloned().fold(f64::INFINITY, f64::min),
            vals.iter().cloned().fold(0.0, f64::max),
        );
        let mut chart = ChartBuilder::on(area)
            .margin(14)
            .x_label_area_size(45)
            .y_label_area_size(65)
            .build_cartesian_2d(
                0f64..t_max,
                (y0..y1).log_scale().with_key_points(log_ticks(y0, y1)),
            )?;
        chart
            .configure_mesh()
            .x_desc("training tokens")
            .y_desc(desc)
            .x_label_formatter(&|v| si(*v))
            .y_label_formatter(&tick)
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .draw()?;
        for (i, r) in runs.iter().enumerate() {
            let c = run_color(i);
            let xy: Vec<(f64, f64)> = r
                .curve
                .iter()
                .map(|p| (p.tokens as f64, get(p)))
                .filter(|p| p.1.is_finite() && p.1 > 0.0)
                .collect();
            let s = chart.draw_series(LineSeries::new(xy, c.stroke_width(2)))?;
            if pi == 1 {
                s.label(r.name.as_str()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 22, y)], c.stroke_width(3))
                });
            }
        }
        if pi == 1 {
            chart
                .configure_series_labels()
                .label_font(("sans-serif", 13))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperRight)
                .draw()?;
        }
    }
    root.present()?;
    Ok(())
}

/// Histogram bins of log10 density: `[-10, 0]` in steps of 0.25.
const DENSITY_LO: f64 = -10.0;
const DENSITY_BIN: f64 = 0.25;

/// Fraction of latents per log10-density bin, as a frequency polygon per run.
fn density_plot<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, runs: &[RunSummary]) -> PlotResult
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let n_bins = (-DENSITY_LO / DENSITY_BIN) as usize + 1;
    let hists: Vec<(usize, &RunSummary, Vec<f64>)> = runs
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let d = r.log10_density.as_ref()?;
            let mut h = vec![0f64; n_bins];
            for &v in d {
                let b = ((v as f64 - DENSITY_LO) / DENSITY_BIN).floor();
                h[(b.max(0.0) as usize).min(n_bins - 1)] += 1.0 / d.len().max(1) as f64;
            }
            Some((i, r, h))
        })
        .collect();
    let y1 = hists
        .iter()
        .flat_map(|h| h.2.iter().cloned())
        .fold(0.0, f64::max)
        * 1.1;
    // Start the axis just left of the rarest live latent; dead ones stay in bin 0.
    let live_min = runs
        .iter()
        .filter_map(|r| r.log10_density.as_ref())
        .flatten()
        .filter(|&&v| v > -9.9)
        .fold(0.0f64, |m, &v| m.min(v as f64));
    let x_lo = ((live_min - 0.5) / DENSITY_BIN).floor() * DENSITY_BIN - DENSITY_BIN;
    let x_lo = x_lo.max(DENSITY_LO);
    let mut chart = ChartBuilder::on(&root)
        .caption("Latent firing density", ("sans-serif", 24))
        .margin(18)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(x_lo..0.0, 0.0..y1.max(1e-3))?;
    chart
        .configure_mesh()
        .x_desc("log10 firing density (fraction of tokens)")
        .y_desc("fraction of latents")
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .draw()?;
    for (i, r, h) in &hists {
        let c = run_color(*i);
        let xy: Vec<(f64, f64)> = h
            .iter()
            .enumerate()
            .map(|(b, &v)| (DENSITY_LO + (b as f64 + 0.5) * DENSITY_BIN, v))
            .filter(|p| p.0 >= x_lo)
            .collect();
        let dead = r
            .log10_density
            .as_ref()
            .map_or(0, |d| d.iter().filter(|&&v| v <= -9.9).count());
        chart
            .draw_series(LineSeries::new(xy, c.stroke_width(2)))?
            .label(format!("{} (dead {dead})", r.name))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], c.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

/// `12_300_000` → `12.3M`.
fn si(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.3}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.3}M", v / 1e6)
    } else if a >= 1e3 {
        format!("{:.3}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
    .replace(".000", "")
}

/// A plot written by [`draw`]: its file stem, its title in the report, its path.
pub(super) type Image = (&'static str, &'static str, PathBuf);

/// Draws the report's plots into `out` (those the runs have data for): the frontier
/// from `fvu`, the CE loss score from `score`, training curves and latent densities.
pub(super) fn draw(
    runs: &[RunSummary],
    fvu: &ArchSeries,
    score: &ArchSeries,
    out: &Path,
    format: PlotFormat,
) -> Result<Vec<Image>> {
    let ext = format.ext();
    let has_curves = runs.iter().any(|r| !r.curve.is_empty());
    let has_density = runs.iter().any(|r| r.log10_density.is_some());
    let mut images: Vec<Image> = Vec::new();
    let size = (1000, 650);
    if !fvu.is_empty() {
        let p = out.join(format!("frontier.{ext}"));
        plot!(
            &p,
            format,
            size,
            l0_plot(
                fvu,
                "Sparsity–fidelity frontier",
                "FVU (fraction of variance unexplained)",
                true
            )
        )?;
        images.push(("frontier", "L0 vs FVU (lower left is better)", p));
    }
    if !score.is_empty() {
        let p = out.join(format!("ce_score.{ext}"));
        plot!(
            &p,
            format,
            size,
            l0_plot(
                score,
                "CE loss score with the SAE spliced in",
                "CE loss score",
                false
            )
        )?;
        images.push(("ce_score", "L0 vs CE loss score (upper left is better)", p));
    }
    if has_curves {
        let p = out.join(format!("training.{ext}"));
        plot!(&p, format, (1300, 600), training_plot(runs))?;
        images.push(("training", "Training curves", p));
    }
    if has_density {
        let p = out.join(format!("density.{ext}"));
        plot!(&p, format, size, density_plot(runs))?;
        images.push(("density", "log10 latent density", p));
    }
    Ok(images)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn si_prefixes() {
        assert_eq!(si(12_300_000.0), "12.300M");
        assert_eq!(si(2_000.0), "2k");
        assert_eq!(si(7.0), "7");
    }
}
