//! `saelab convert`: any supported SAE format → saelab's SAELens v6 layout.

use std::path::PathBuf;

use anyhow::Result;
use saelab_core::format::{load_sae, save_sae};

#[derive(clap::Args)]
pub struct Args {
    /// SAE to read (SAELens v6 or legacy, sparsify, Gemma Scope `params.npz` directory).
    input: PathBuf,
    /// Directory to write (created atomically; must not exist).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    if a.out.exists() {
        anyhow::bail!("{}: already exists; choose a new --out", a.out.display());
    }
    let sae = load_sae(&saelab_eval::report::sae_dir(&a.input))?;
    save_sae(&sae, &a.out, None)?;
    println!(
        "wrote {} ({}, d_in {}, d_sae {})",
        a.out.display(),
        sae.cfg.arch.name(),
        sae.cfg.d_in,
        sae.cfg.d_sae
    );
    Ok(())
}
