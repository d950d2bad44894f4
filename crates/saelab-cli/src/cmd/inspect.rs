//! `saelab inspect`: what an SAE directory holds.

use std::path::PathBuf;

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// SAE directory (SAELens, sparsify, Gemma Scope) or a run directory.
    path: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let dir = saelab_eval::report::sae_dir(&a.path);
    let info = saelab_core::format::describe(&dir)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        println!("{info}");
    }
    Ok(())
}
