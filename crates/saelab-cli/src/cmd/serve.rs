//! `saelab serve`: the features dashboard (`saelab_web`) on 127.0.0.1 unless `--host`
//! says otherwise; with `--sae` and `--model` also the prompt explorer and steering
//! (`POST /api/steer`, the panel on each feature page), over one loaded model. Prints
//! the address to open; Ctrl-C stops it.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use saelab_web::{AppState, Explorer, ServeOptions, Site};

use crate::STOP;

#[derive(clap::Args)]
pub struct Args {
    /// The features folder (written by `saelab features`).
    #[arg(long)]
    features: PathBuf,
    /// The SAE the folder was made from (run or SAE directory): enables the prompt
    /// explorer and steering, with --model.
    #[arg(long, requires = "model")]
    sae: Option<PathBuf>,
    /// The model the folder was made with (GGUF file or Hugging Face directory).
    #[arg(long, requires = "sae")]
    model: Option<PathBuf>,
    /// Address to listen on (127.0.0.1: only this machine can connect).
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    port: u16,
}

pub fn run(a: Args) -> Result<()> {
    let features = saelab_features::Features::open(&a.features)?;
    let explorer = match (&a.sae, &a.model) {
        (Some(sae), Some(model)) => Some(Explorer::load(&features, sae, model)?),
        _ => None,
    };
    let site = Site::from_features(features)?;
    let n = site.n_latents();
    let with_explorer = explorer.is_some();
    let state = AppState::new(site, explorer);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the server's runtime")?;
    rt.block_on(async move {
        let listener = saelab_web::server::bind(ServeOptions {
            host: a.host,
            port: a.port,
        })
        .await?;
        let addr = listener.local_addr()?;
        println!(
            "saelab: serving {} ({n} latents{}) at http://{addr}/ (Ctrl-C to stop)",
            a.features.display(),
            if with_explorer {
                ", prompt explorer at /prompt, steering on the latent pages"
            } else {
                ""
            }
        );
        let stop = async {
            while !STOP.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        saelab_web::server::serve(listener, state, stop).await?;
        anyhow::Ok(())
    })
}
