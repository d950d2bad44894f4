//! `saelab report RUN_DIR… --out DIR`: one Markdown report comparing SAEs, with plots
//! (L0–FVU frontier, L0 vs CE loss score, training curves, latent density).
//!
//! In-model metrics come from each run's `eval.json`; with `--model` and `--corpus`
//! they are computed for the runs that lack one (all runs with `--recompute`) on one
//! shared set of held-out contexts — the clean and ablated forwards run once, then one
//! spliced forward per SAE — and saved as `RUN_DIR/eval.json`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use saelab_core::rundir::EVAL_FILE;
use saelab_eval::report::{read_run, write_report, PlotFormat};
use saelab_jobs::eval::{self, RunsInModel, DEFAULT_CTX_LEN, DEFAULT_REPORT_TOKENS};

use crate::progress::Reporter;
use crate::STOP;

/// Image format of the plots.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Format {
    /// PNG images.
    Png,
    /// SVG images.
    Svg,
}

#[derive(clap::Args)]
pub struct Args {
    /// Run directories of `saelab train` / `saelab sweep` (or SAE directories).
    #[arg(required = true, num_args = 1..)]
    runs: Vec<PathBuf>,
    /// Folder for report.md and the plots.
    #[arg(long)]
    out: PathBuf,
    /// Plot format.
    #[arg(long, value_enum, default_value = "png")]
    format: Format,
    /// Language model: compute in-model metrics for runs without eval.json.
    #[arg(long, requires = "corpus")]
    model: Option<PathBuf>,
    /// Text corpus whose held-out documents the in-model metrics use.
    #[arg(long, requires = "model")]
    corpus: Option<PathBuf>,
    /// Tokens of held-out text for the in-model metrics (whole contexts).
    #[arg(long, default_value_t = DEFAULT_REPORT_TOKENS)]
    tokens: usize,
    /// Tokens per context for the in-model metrics.
    #[arg(long, default_value_t = DEFAULT_CTX_LEN)]
    ctx_len: usize,
    /// Hook to splice at [default: each SAE's metadata.hook_name].
    #[arg(long)]
    hook: Option<String>,
    /// Recompute eval.json even where it exists.
    #[arg(long)]
    recompute: bool,
}

pub fn run(a: Args) -> Result<()> {
    let mut summaries = a
        .runs
        .iter()
        .map(|d| read_run(d).map_err(anyhow::Error::from))
        .collect::<Result<Vec<_>>>()?;
    if let (Some(model), Some(corpus)) = (&a.model, &a.corpus) {
        let req = RunsInModel {
            model: model.clone(),
            corpus: corpus.clone(),
            tokens: a.tokens,
            ctx_len: a.ctx_len,
            hook: a.hook.clone(),
            recompute: a.recompute,
        };
        let mut rep = Reporter::new();
        eval::evaluate_runs_in_model(&mut summaries, &req, &STOP, &mut |e| rep.handle(e))?;
    }
    if summaries.iter().all(|s| s.last.is_none()) {
        bail!(
            "none of the runs has validation metrics or an {EVAL_FILE}: nothing to compare \
             (pass --model and --corpus to evaluate them)"
        );
    }
    let format = match a.format {
        Format::Png => PlotFormat::Png,
        Format::Svg => PlotFormat::Svg,
    };
    let files = write_report(&summaries, &a.out, format)?;
    if let Some(why) = &files.plots_skipped {
        eprintln!("saelab: plots skipped: {why}");
    }
    println!("report written to {}", files.markdown.display());
    for p in &files.plots {
        println!("  {}", p.display());
    }
    Ok(())
}
