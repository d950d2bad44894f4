//! `saelab report RUN_DIR… --out DIR`: one Markdown report comparing SAEs, with plots
//! (L0–FVU frontier, L0 vs CE loss score, training curves, latent density).
//!
//! In-model metrics come from each run's `eval.json`; with `--model` and `--corpus`
//! they are computed for the runs that lack one (all runs with `--recompute`) on one
//! shared set of held-out contexts — the clean and ablated forwards run once, then one
//! spliced forward per SAE — and saved as `RUN_DIR/eval.json`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use anyhow::{bail, Context, Result};
use saelab_core::format::load_sae;
use saelab_eval::contexts::corpus_contexts;
use saelab_eval::report::{read_run, sae_dir, write_report, PlotFormat, EVAL_FILE};
use saelab_eval::{InModelEvalSet, InModelOptions};
use saelab_lm::text::Part;
use saelab_lm::tokenizer::Tokenizer;

use crate::cmd::eval::{load_model, DEFAULT_CTX_LEN};
use crate::progress;
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
    #[arg(long, default_value_t = 8192)]
    tokens: usize,
    /// Tokens per context for the in-model metrics.
    #[arg(long, default_value_t = DEFAULT_CTX_LEN)]
    ctx_len: usize,
    /// Hook to splice at (default: each SAE's metadata.hook_name).
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
        // Runs needing an evaluation, grouped by hook.
        let mut by_hook: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, s) in summaries.iter().enumerate() {
            if s.in_model.is_some() && !a.recompute {
                continue;
            }
            let hook = super::splice_hook(a.hook.as_deref(), s.hook.as_deref(), &s.dir)?;
            by_hook.entry(hook).or_default().push(i);
        }
        if !by_hook.is_empty() {
            let lm = load_model(model)?;
            let tok = Tokenizer::from_path(lm.source())
                .with_context(|| format!("tokenizer of {}", lm.source().display()))?;
            let n_ctx = a.tokens.div_ceil(a.ctx_len.max(1)).max(1);
            let contexts = corpus_contexts(&tok, corpus, Part::HeldOut, a.ctx_len, n_ctx)?;
            let opts = InModelOptions {
                batch_size: (1024 / a.ctx_len).max(1),
                bos_id: tok.bos_id(),
                ..Default::default()
            };
            let stop = |_| {
                if STOP.load(Ordering::SeqCst) {
                    Err(saelab_core::Error::Interrupted)
                } else {
                    Ok(())
                }
            };
            for (hook, idx) in by_hook {
                let pb = progress::spinner(&format!("baseline at {hook}"));
                let set = InModelEvalSet::new_with(&lm, &hook, contexts.clone(), &opts, stop)?;
                pb.finish_and_clear();
                for i in idx {
                    let s = &summaries[i];
                    let pb = progress::spinner(&format!("in-model evaluation of {}", s.name));
                    let sae = load_sae(&sae_dir(&s.dir))?;
                    let m = set
                        .evaluate_with(&lm, &sae, stop)
                        .with_context(|| format!("{}", s.dir.display()))?;
                    pb.finish_and_clear();
                    let path = s.dir.join(EVAL_FILE);
                    saelab_core::io::write_file_atomic(
                        &path,
                        (serde_json::to_string_pretty(&m)? + "\n").as_bytes(),
                    )?;
                    eprintln!(
                        "{}: CE loss score {:.4}, KL {:.4}, ΔCE {:.4}",
                        s.name, m.ce_loss_score, m.kl_sae, m.delta_ce
                    );
                    summaries[i] = read_run(&s.dir.clone())?;
                }
            }
        }
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
