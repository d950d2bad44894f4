//! A report comparing trained SAEs: one Markdown file with a table and plots.
//!
//! [`read_run`] (in `runs.rs`, the data model) gathers what a run directory holds
//! (see `saelab_core::rundir`):
//! `run.json` (architecture and hyperparameters), `metrics.jsonl` (`kind: "train"`
//! records and `kind: "val"` validation records; other kinds are skipped),
//! `sae/` (the SAE and its `sparsity.safetensors`), and `eval.json` (an
//! [`crate::InModelMetrics`] written by `saelab eval --out` or `saelab report --model`).
//! A bare SAE directory works too (no curves then).
//!
//! [`write_report`] writes `report.md` (`markdown.rs`) plus four plots (`plots.rs`),
//! rendered with `plotters` as PNG (or SVG):
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

mod markdown;
mod plots;
mod runs;

use std::path::{Path, PathBuf};

use saelab_core::{Error, Result};

pub use markdown::frontier_at;
pub use plots::{ensure_font, PlotFormat};
pub use runs::{
    by_arch, curves, read_run, sae_dir, ArchSeries, CurvePoint, FinalMetrics, RunSummary,
};

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

/// Writes `out/report.md` comparing `runs`, with plots `out/{frontier,ce_score,
/// training,density}.{png,svg}`. Creates `out` if needed.
pub fn write_report(runs: &[RunSummary], out: &Path, format: PlotFormat) -> Result<ReportFiles> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut files = ReportFiles {
        markdown: out.join("report.md"),
        ..Default::default()
    };
    let fvu = by_arch(runs, |r| r.last.as_ref().map(|l| l.fvu));
    let score = by_arch(runs, |r| r.in_model.as_ref().map(|m| m.ce_loss_score));
    let images = match ensure_font() {
        Err(why) => {
            files.plots_skipped = Some(why);
            Vec::new()
        }
        Ok(_) => plots::draw(runs, &fvu, &score, out, format)?,
    };
    files.plots = images.iter().map(|i| i.2.clone()).collect();
    let md = markdown::markdown(runs, &fvu, &images, files.plots_skipped.as_deref());
    saelab_core::io::write_file_atomic(&files.markdown, md.as_bytes())?;
    Ok(files)
}
