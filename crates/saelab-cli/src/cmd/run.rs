//! `saelab run CONFIG.toml`: the main job (`saelab_jobs::pipeline`) — extract the
//! train and held-out caches, train the SAE, evaluate it on held-out activations and
//! in the model — then print the summary and write `summary.txt` and `summary.json`.
//! Resumable: run it again after Ctrl-C and every step continues where it stopped; a
//! complete step is not redone.

use std::path::PathBuf;

use anyhow::{Context, Result};
use saelab_jobs::config::RunTable;
use saelab_jobs::pipeline::{self, MainConfig, StageOutcome};

use crate::progress::Reporter;
use crate::STOP;

#[derive(clap::Args)]
pub struct Args {
    /// The job's configuration (TOML), e.g. configs/main.toml (the README's main job).
    config: PathBuf,
    /// Override a value of the configuration: --set train.total_tokens=40960 --set sae.k=64
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Fail unless the figures are those of a working pipeline (finite, held-out FVU
    /// below 1, CE loss score in (0, 1], finite KL): what CI checks.
    #[arg(long)]
    check: bool,
}

pub fn run(a: Args) -> Result<()> {
    let mut table = RunTable::load(Some(&a.config))?;
    table.apply_overrides(&a.set)?;
    let cfg = MainConfig::parse(table, &a.config)?;
    let mut rep = Reporter::new();
    let result = pipeline::run_main(&cfg, &STOP, &mut |e| rep.handle(e));
    drop(rep);
    let summary = match result {
        Err(e) if e.is_interrupted() => {
            return Err(
                anyhow::Error::new(saelab_core::Error::Interrupted).context(format!(
                    "interrupted; {} keeps what is done — run the same command again to continue",
                    cfg.out.display()
                )),
            )
        }
        r => r?,
    };
    println!("\n== summary");
    print!("{}", summary.text());
    if a.check {
        let path = cfg.out.join("summary.json");
        summary
            .check()
            .with_context(|| format!("{}: the figures fail the check", path.display()))?;
        println!("check passed: the figures are within the bounds of a working pipeline");
    }
    Ok(())
}

/// Prints a finished step of the main job as its own command would.
pub(crate) fn print_stage(o: &StageOutcome<'_>) {
    match o {
        StageOutcome::Extract(x) => {
            let (out, tokens) = match x {
                saelab_jobs::extract::ExtractOutcome::Complete(c) => {
                    (c[0].0.clone(), c[0].1.target_rows)
                }
                saelab_jobs::extract::ExtractOutcome::Extracted(e) => {
                    (e.dirs[0].clone(), e.summary.progress.target_rows)
                }
            };
            crate::cmd::extract::print_outcome(x, &out, tokens)
        }
        StageOutcome::Train(t) => crate::cmd::train::print_outcome(t),
        StageOutcome::Eval(e) => println!("{}", crate::cmd::eval::table(&e.metrics, None)),
        StageOutcome::InModel(m) => println!("{}", crate::cmd::eval::in_model_table(m)),
        StageOutcome::Features(f, dir) => crate::cmd::features::print_outcome(f, dir),
    }
}
