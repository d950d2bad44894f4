//! `saelab sweep`: train a grid of SAEs (architectures × sparsity × widths) from one
//! activation dataset in a single pass. The sweep file's format and its run names are
//! `saelab_jobs::sweep`'s; this command reads the file, applies `--set`, and prints.

use std::path::PathBuf;

use anyhow::{Context, Result};
use saelab_jobs::config::RunTable;
use saelab_jobs::sweep::Sweep;
use saelab_jobs::train;

use crate::cmd::train::{interrupted_context, print_outcome};
use crate::progress::Reporter;
use crate::STOP;

#[derive(clap::Args)]
pub struct Args {
    /// Sweep file (TOML): shared [data], [sae], [train] and [[grid]] tables.
    #[arg(long)]
    config: PathBuf,
    /// Output folder, one run directory per SAE [default: the file's `out`].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Override a shared value: --set train.total_tokens=1e6 --set data.paths=['x']
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// List the runs and exit.
    #[arg(long)]
    dry_run: bool,
    /// Continue an interrupted sweep from its runs' checkpoints (the same as
    /// `saelab train --resume OUT`).
    #[arg(long)]
    resume: bool,
}

pub fn run(a: Args) -> Result<()> {
    let mut table = RunTable::load(Some(&a.config))?;
    table.apply_overrides(&a.set)?;
    let sweep = Sweep::expand(table, &a.config)?;
    let out = a.out.clone().or(sweep.out.clone()).with_context(|| {
        format!(
            "{}: no `out` folder (set it or pass --out)",
            a.config.display()
        )
    })?;
    // Every run is parsed before anything is touched, so that a bad grid fails early.
    let job = sweep.job(&a.config, out.clone())?;
    if a.dry_run {
        println!("{} runs into {}:", job.members.len(), out.display());
        for m in &job.members {
            println!(
                "  {:<28} {:?} lr={}",
                m.name.as_deref().unwrap_or_default(),
                m.sae.arch,
                m.train.lr
            );
        }
        return Ok(());
    }
    let mut rep = Reporter::new();
    let result = if a.resume {
        // The sweep folder holds `sweep.json`, so this is `saelab train --resume`.
        train::resume(&out, &STOP, &mut |e| rep.handle(e))
    } else {
        train::train(&job, &STOP, &mut |e| rep.handle(e))
    };
    let outcome = interrupted_context(result, &rep, &out)?;
    print_outcome(&outcome);
    Ok(())
}
