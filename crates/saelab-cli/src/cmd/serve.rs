//! `saelab serve`: the features dashboard (`saelab_web`) on 127.0.0.1 unless `--host`
//! says otherwise; with `--sae` and `--model` also the prompt explorer and steering
//! (`POST /api/steer`, the panel on each feature page), over one loaded model. With
//! `--llm MODEL` instead of `--features`: the model as an OpenAI-compatible
//! chat-completion API (`saelab_web::llm_server`, `/v1/chat/completions` and
//! `/v1/models`). Prints the address to open; Ctrl-C stops it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use saelab_web::{AppState, Explorer, ServeOptions, Site};

use crate::STOP;

#[derive(clap::Args)]
pub struct Args {
    /// The features folder (written by `saelab features`).
    #[arg(long, required_unless_present = "llm")]
    features: Option<PathBuf>,
    /// Serve this instruct model (GGUF file or Hugging Face directory, with a ChatML
    /// chat template) as an OpenAI-compatible API at /v1, instead of a dashboard.
    #[arg(long, conflicts_with_all = ["features", "sae", "model"])]
    llm: Option<PathBuf>,
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
    let opts = ServeOptions {
        host: a.host,
        port: a.port,
    };
    if let Some(model) = &a.llm {
        return serve_llm(model, opts);
    }
    let Some(folder) = a.features.clone() else {
        anyhow::bail!("give --features FOLDER (a dashboard) or --llm MODEL (a chat API)");
    };
    let features = saelab_features::Features::open(&folder)?;
    let explorer = match (&a.sae, &a.model) {
        (Some(sae), Some(model)) => Some(Explorer::load(&features, sae, model)?),
        _ => None,
    };
    let site = Site::from_features(features)?;
    let n = site.n_latents();
    let with_explorer = explorer.is_some();
    let state = AppState::new(site, explorer);
    runtime()?.block_on(async move {
        let listener = saelab_web::server::bind(opts).await?;
        let addr = listener.local_addr()?;
        println!(
            "saelab: serving {} ({n} latents{}) at http://{addr}/ (Ctrl-C to stop)",
            folder.display(),
            if with_explorer {
                ", prompt explorer at /prompt, steering on the latent pages"
            } else {
                ""
            }
        );
        saelab_web::server::serve(listener, state, stopped()).await?;
        anyhow::Ok(())
    })
}

/// `--llm`: the model behind the OpenAI-compatible API.
fn serve_llm(model: &Path, opts: ServeOptions) -> Result<()> {
    let client = saelab_llm::LocalClient::load(&saelab_llm::LocalConfig::new(model))?;
    let ctx = client.context_length();
    let state = saelab_web::llm_server::LlmServer::new(client)
        .context("cannot start the model's worker")?;
    runtime()?.block_on(async move {
        let listener = saelab_web::server::bind(opts).await?;
        let addr = listener.local_addr()?;
        println!(
            "saelab: serving {} ({ctx}-token context) as an OpenAI-compatible API at \
             http://{addr}/v1 (Ctrl-C to stop)",
            state.model_name()
        );
        saelab_web::llm_server::serve(listener, state, stopped()).await?;
        anyhow::Ok(())
    })
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the server's runtime")
}

/// Completes when Ctrl-C has set the stop flag.
async fn stopped() {
    while !STOP.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
