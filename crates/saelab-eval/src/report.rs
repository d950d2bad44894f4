//! A report comparing trained SAEs: one Markdown file with a table and plots.
//!
//! [`read_run`] gathers what a run directory holds (see `saelab_core::fit`):
//! `run.json` (architecture and hyperparameters), `metrics.jsonl` (`kind: "train"`
//! records, `kind: "val"` validation records, `kind: "val_model"` in-model records),
//! `sae/` (the SAE and its `sparsity.safetensors`), and `eval.json` (an
//! [`InModelMetrics`] written by `saelab eval --out` or `saelab report --model`).
//! A bare SAE directory works too (no curves then).
//!
//! [`write_report`] writes `report.md` plus four plots, rendered with `plotters` as PNG
//! (or SVG):
//! - `frontier` — L0 against FVU, one line per architecture (the sparsity–fidelity
//!   frontier; lower-left is better);
//! - `ce_score` — L0 against CE loss score (when in-model metrics exist; upper-left is
//!   better);
//! - `training` — FVU and L0 of the training batches against training tokens, per run;
//! - `density` — the distribution of log10 latent firing density per run (dead
//!   latents, stored as log10(0 + 1e-10), fall in the leftmost bin).
//!
//! L0 and FVU come from the last validation record of `metrics.jsonl` (the held-out
//! rows of the activation data); runs without one use `eval.json`'s reconstruction
//! metrics (tokens of held-out text).
//!
//! Text in plots needs a TrueType font: the first of `$SAELAB_FONT` and the usual
//! system locations (DejaVu Sans, Liberation Sans, Arial) that exists. Without one the
//! report is written without plots and says why.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use saelab_core::config::SaeConfig;
use saelab_core::format::{load_sae, read_log_sparsity};
use saelab_core::{Error, Result};
use serde::Serialize;

use crate::inmodel::InModelMetrics;

/// File name of the in-model metrics of a run directory.
pub const EVAL_FILE: &str = "eval.json";

/// Final metrics of a run, as plotted and tabulated.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FinalMetrics {
    /// Step of the record (0 when from `eval.json`).
    pub step: u64,
    /// Mean active latents per token.
    pub l0: f64,
    /// Fraction of variance unexplained.
    pub fvu: f64,
    /// Normalised MSE.
    pub nmse: f64,
    /// Mean cosine similarity.
    pub cos_sim: f64,
    /// Fraction of latents never firing.
    pub dead_frac: f64,
    /// Fraction of latents firing on more than 10 % of tokens.
    pub dense_frac: f64,
}

/// One point of a training curve.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CurvePoint {
    /// Optimizer step.
    pub step: u64,
    /// Training tokens seen.
    pub tokens: u64,
    /// FVU of the batch.
    pub fvu: f64,
    /// L0 of the batch.
    pub l0: f64,
}

/// Everything the report shows about one SAE.
#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    /// Short name: the directory's name.
    pub name: String,
    /// The directory given.
    pub dir: PathBuf,
    /// Architecture as trained (`batchtopk` even though it is saved as JumpReLU).
    pub arch: String,
    /// The sparsity hyperparameters, printed: `k=32`, `λ=5`, `λ0=0.001 θ0=0.001`.
    pub sparsity: String,
    /// Number of latents.
    pub d_sae: usize,
    /// Hook point from the SAE's metadata.
    pub hook: Option<String>,
    /// Final reconstruction metrics (validation record, else `eval.json`).
    pub last: Option<FinalMetrics>,
    /// Training records.
    pub curve: Vec<CurvePoint>,
    /// In-model metrics from `eval.json`.
    pub in_model: Option<InModelMetrics>,
    /// log10 firing density of each latent (`sparsity.safetensors`).
    #[serde(skip)]
    pub log10_density: Option<Vec<f32>>,
}

/// The SAE directory of a run directory (`dir/sae`) or `dir` itself.
pub fn sae_dir(dir: &Path) -> PathBuf {
    if dir.join("sae").join("cfg.json").exists() {
        dir.join("sae")
    } else {
        dir.to_path_buf()
    }
}

/// Reads a run directory (or a bare SAE directory). Errors name the file at fault.
pub fn read_run(dir: &Path) -> Result<RunSummary> {
    let sdir = sae_dir(dir);
    if !sdir.is_dir() {
        return Err(Error::bad_file(dir, "no such run or SAE directory"));
    }
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|s| s.to_string_lossy().to_string()))
        .unwrap_or_else(|| dir.display().to_string());
    // Architecture: run.json's training config when present (BatchTopK keeps its k),
    // else the SAE's own file.
    let run_json = dir.join("run.json");
    let run_cfg: Option<SaeConfig> = if run_json.is_file() {
        let bytes = std::fs::read(&run_json).map_err(|e| Error::io(&run_json, e))?;
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::bad_file(&run_json, format!("not valid JSON: {e}")))?;
        serde_json::from_value(v["sae"].clone()).ok()
    } else {
        None
    };
    let (arch, sparsity, d_sae, hook) = match run_cfg {
        Some(c) => (
            c.arch.name().to_string(),
            c.arch.sparsity_label(),
            c.d_sae,
            c.metadata.hook_name.clone(),
        ),
        None => {
            let sae = load_sae(&sdir)?;
            let c = &sae.cfg;
            (
                c.metadata
                    .trained_as
                    .clone()
                    .unwrap_or_else(|| c.arch.name().to_string()),
                c.arch.sparsity_label(),
                c.d_sae,
                c.metadata.hook_name.clone(),
            )
        }
    };
    let (curve, val) = read_metrics_log(&dir.join("metrics.jsonl"))?;
    let eval_path = dir.join(EVAL_FILE);
    let in_model: Option<InModelMetrics> =
        if eval_path.is_file() {
            let bytes = std::fs::read(&eval_path).map_err(|e| Error::io(&eval_path, e))?;
            Some(serde_json::from_slice(&bytes).map_err(|e| {
                Error::bad_file(&eval_path, format!("not an in-model evaluation: {e}"))
            })?)
        } else {
            None
        };
    let last = val.or_else(|| {
        in_model.as_ref().map(|m| FinalMetrics {
            step: 0,
            l0: m.recon.l0,
            fvu: m.recon.fvu,
            nmse: m.recon.nmse,
            cos_sim: m.recon.cos_sim,
            dead_frac: m.recon.dead_frac,
            dense_frac: m.recon.dense_frac,
        })
    });
    let log10_density = read_log_sparsity(&sdir)?;
    Ok(RunSummary {
        name,
        dir: dir.to_path_buf(),
        arch,
        sparsity,
        d_sae,
        hook,
        last,
        curve,
        in_model,
        log10_density,
    })
}

/// Training curve and last validation record of a `metrics.jsonl` (absent: empty).
/// Lines that are not JSON objects are an error naming the file and line.
fn read_metrics_log(path: &Path) -> Result<(Vec<CurvePoint>, Option<FinalMetrics>)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok((Vec::new(), None));
    };
    let mut curve = Vec::new();
    let mut last: Option<FinalMetrics> = None;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::bad_file(path, format!("line {}: not JSON: {e}", i + 1)))?;
        let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        let step = v["step"].as_u64().unwrap_or(0);
        match v["kind"].as_str() {
            Some("train") => curve.push(CurvePoint {
                step,
                tokens: v["tokens"].as_u64().unwrap_or(0),
                fvu: f("fvu"),
                l0: f("l0"),
            }),
            Some("val") if last.as_ref().is_none_or(|l| step >= l.step) => {
                last = Some(FinalMetrics {
                    step,
                    l0: f("l0"),
                    fvu: f("fvu"),
                    nmse: f("nmse"),
                    cos_sim: f("cos_sim"),
                    dead_frac: f("dead_frac"),
                    dense_frac: f("dense_frac"),
                })
            }
            _ => {}
        }
    }
    Ok((curve, last))
}

/// Image format of the plots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlotFormat {
    /// Raster PNG.
    Png,
    /// Vector SVG.
    Svg,
}

impl PlotFormat {
    fn ext(self) -> &'static str {
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
/// else the first of [`FONT_PATHS`] that exists. Returns the file used, or why none.
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

/// Points `(L0, y)` grouped by architecture, sorted by L0.
type ArchSeries = BTreeMap<String, Vec<(f64, f64, String)>>;

fn by_arch(runs: &[RunSummary], y: impl Fn(&RunSummary) -> Option<f64>) -> ArchSeries {
    let mut m: ArchSeries = BTreeMap::new();
    let widths: std::collections::BTreeSet<usize> = runs.iter().map(|r| r.d_sae).collect();
    for r in runs {
        if let (Some(l), Some(v)) = (&r.last, y(r)) {
            if l.l0.is_finite() && l.l0 > 0.0 && v.is_finite() {
                let key = if widths.len() > 1 {
                    format!("{} n={}", r.arch, r.d_sae)
                } else {
                    r.arch.clone()
                };
                m.entry(key)
                    .or_default()
                    .push((l.l0, v, r.sparsity.clone()));
            }
        }
    }
    for v in m.values_mut() {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    m
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

/// What [`write_report`] wrote.
#[derive(Clone, Debug, Default)]
pub struct ReportFiles {
    /// The Markdown report.
    pub markdown: PathBuf,
    /// The plots.
    pub plots: Vec<PathBuf>,
    /// Why plots were skipped, if they were.
    pub plots_skipped: Option<String>,
}

/// The FVU of the `reference` frontier (points sorted by L0) at `l0`, interpolated
/// linearly in log L0; `None` outside its L0 range.
pub fn frontier_at(reference: &[(f64, f64)], l0: f64) -> Option<f64> {
    let w = reference
        .windows(2)
        .find(|w| w[0].0 <= l0 && l0 <= w[1].0)?;
    let (a, b) = (w[0], w[1]);
    if a.0 == b.0 {
        return Some(a.1.min(b.1));
    }
    let t = (l0.ln() - a.0.ln()) / (b.0.ln() - a.0.ln());
    Some(a.1 + t * (b.1 - a.1))
}

fn fmt(v: f64, prec: usize) -> String {
    if v.is_finite() {
        format!("{v:.prec$}")
    } else {
        "–".to_string()
    }
}

/// Writes `out/report.md` comparing `runs`, with plots `out/{frontier,ce_score,
/// training,density}.{png,svg}`. Creates `out` if needed.
pub fn write_report(runs: &[RunSummary], out: &Path, format: PlotFormat) -> Result<ReportFiles> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut files = ReportFiles {
        markdown: out.join("report.md"),
        ..Default::default()
    };
    let ext = format.ext();
    let fvu = by_arch(runs, |r| r.last.as_ref().map(|l| l.fvu));
    let score = by_arch(runs, |r| r.in_model.as_ref().map(|m| m.ce_loss_score));
    let has_curves = runs.iter().any(|r| !r.curve.is_empty());
    let has_density = runs.iter().any(|r| r.log10_density.is_some());
    let mut images: Vec<(&str, &str, PathBuf)> = Vec::new();
    match ensure_font() {
        Err(why) => files.plots_skipped = Some(why),
        Ok(_) => {
            let size = (1000, 650);
            if !fvu.is_empty() {
                let p = out.join(format!("frontier.{ext}"));
                plot!(
                    &p,
                    format,
                    size,
                    l0_plot(
                        &fvu,
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
                        &score,
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
            files.plots = images.iter().map(|i| i.2.clone()).collect();
        }
    }
    let md = markdown(runs, &fvu, &images, files.plots_skipped.as_deref());
    saelab_core::io::write_file_atomic(&files.markdown, md.as_bytes())?;
    Ok(files)
}

fn markdown(
    runs: &[RunSummary],
    fvu: &ArchSeries,
    images: &[(&str, &str, PathBuf)],
    skipped: Option<&str>,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# SAE comparison\n");
    let hooks: Vec<&str> = {
        let mut h: Vec<&str> = runs.iter().filter_map(|r| r.hook.as_deref()).collect();
        h.sort();
        h.dedup();
        h
    };
    let _ = writeln!(
        s,
        "{} SAEs{}. L0, FVU, NMSE, cos and dead/dense fractions are the last validation \
         record of each run's `metrics.jsonl` (held-out activation rows), or the \
         reconstruction metrics of `eval.json` for runs without one. CE loss score \
         `(ce_zero − ce_sae)/(ce_zero − ce_clean)`, ΔCE `ce_sae − ce_clean` and KL \
         `KL(p_clean ‖ p_sae)` (nats per token) come from `eval.json`: the SAE spliced into \
         the model on held-out text, BOS positions excluded.\n",
        runs.len(),
        if hooks.is_empty() {
            String::new()
        } else {
            format!(" at `{}`", hooks.join("`, `"))
        }
    );
    let _ = writeln!(
        s,
        "| run | arch | sparsity | d_sae | L0 | FVU | NMSE | cos | dead | dense | CE score | ΔCE | KL | ce_clean |"
    );
    let _ = writeln!(
        s,
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut sorted: Vec<&RunSummary> = runs.iter().collect();
    sorted.sort_by(|a, b| {
        a.arch.cmp(&b.arch).then(
            a.last
                .as_ref()
                .map_or(f64::NAN, |l| l.l0)
                .total_cmp(&b.last.as_ref().map_or(f64::NAN, |l| l.l0)),
        )
    });
    for r in sorted {
        let l = r.last.clone().unwrap_or(FinalMetrics {
            l0: f64::NAN,
            fvu: f64::NAN,
            nmse: f64::NAN,
            cos_sim: f64::NAN,
            dead_frac: f64::NAN,
            dense_frac: f64::NAN,
            step: 0,
        });
        let m = r.in_model.as_ref();
        let g = |f: fn(&InModelMetrics) -> f64, p| fmt(m.map_or(f64::NAN, f), p);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.arch,
            r.sparsity,
            r.d_sae,
            fmt(l.l0, 1),
            fmt(l.fvu, 4),
            fmt(l.nmse, 4),
            fmt(l.cos_sim, 4),
            fmt(l.dead_frac, 4),
            fmt(l.dense_frac, 4),
            g(|m| m.ce_loss_score, 4),
            g(|m| m.delta_ce, 4),
            g(|m| m.kl_sae, 4),
            g(|m| m.ce_clean, 3),
        );
    }
    s.push('\n');
    // Frontier comparison against TopK at equal L0.
    if let Some(topk) = fvu.get("topk").filter(|t| t.len() >= 2) {
        let reference: Vec<(f64, f64)> = topk.iter().map(|p| (p.0, p.1)).collect();
        let mut lines = Vec::new();
        for (arch, pts) in fvu.iter().filter(|(a, _)| a.as_str() != "topk") {
            for p in pts {
                match frontier_at(&reference, p.0) {
                    Some(t) => lines.push(format!(
                        "- {arch} {} at L0 {:.1}: FVU {:.4} vs TopK {:.4} ({:+.1} %)",
                        p.2,
                        p.0,
                        p.1,
                        t,
                        100.0 * (p.1 - t) / t
                    )),
                    None => lines.push(format!(
                        "- {arch} {} at L0 {:.1}: outside TopK's L0 range [{:.1}, {:.1}]",
                        p.2,
                        p.0,
                        reference[0].0,
                        reference[reference.len() - 1].0
                    )),
                }
            }
        }
        if !lines.is_empty() {
            let _ = writeln!(
                s,
                "## Against TopK at equal L0\n\nTopK's FVU interpolated linearly in log L0 \
                 between its runs:\n\n{}\n",
                lines.join("\n")
            );
        }
    }
    let _ = writeln!(s, "## Plots\n");
    if let Some(why) = skipped {
        let _ = writeln!(s, "Plots were not drawn: {why}.\n");
    }
    for (_, title, p) in images {
        let file = p
            .file_name()
            .map(|f| f.to_string_lossy())
            .unwrap_or_default();
        let _ = writeln!(s, "### {title}\n\n![{title}]({file})\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frontier_interpolates_in_log_l0() {
        let r = [(10.0, 0.4), (40.0, 0.2)];
        assert_eq!(frontier_at(&r, 10.0), Some(0.4));
        // log-midpoint of 10 and 40 is 20.
        assert!((frontier_at(&r, 20.0).unwrap() - 0.3).abs() < 1e-12);
        assert_eq!(frontier_at(&r, 50.0), None);
    }

    #[test]
    fn si_prefixes() {
        assert_eq!(si(12_300_000.0), "12.300M");
        assert_eq!(si(2_000.0), "2k");
        assert_eq!(si(7.0), "7");
    }
}
