//! `saelab export-html`: the dashboard's pages as a static folder (index and one page
//! per latent, relative links) that opens from `file://`, written atomically.

use std::path::PathBuf;

use anyhow::Result;
use saelab_web::Site;

#[derive(clap::Args)]
pub struct Args {
    /// The features folder (written by `saelab features`).
    #[arg(long)]
    features: PathBuf,
    /// The folder to write (replaced only once the new export is complete).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    let site = Site::open(&a.features)?;
    let s = saelab_web::export_html(&site, &a.out)?;
    println!(
        "{}: {} latent pages and the index ({:.1} MB); open {}",
        a.out.display(),
        s.pages,
        s.bytes as f64 / 1e6,
        a.out.join("index.html").display()
    );
    Ok(())
}
