//! `saelab encode`: one latent's value at every token of a text, through the model and
//! the SAE (`saelab_jobs::encode`, the features pass's path, so that the browser test
//! checks the prompt explorer against a second computation).

use std::path::PathBuf;

use anyhow::{bail, Result};
use saelab_jobs::encode::{encode_text, EncodeRequest};

#[derive(clap::Args)]
pub struct Args {
    /// SAE directory (any supported format), or a `saelab train` run directory.
    #[arg(long)]
    sae: PathBuf,
    /// Model: a GGUF file, or a Hugging Face LLaMA directory.
    #[arg(long)]
    model: PathBuf,
    /// The text (BOS is added in front and left out of the output).
    #[arg(long)]
    text: String,
    /// The latent.
    #[arg(long)]
    latent: usize,
    /// Hook point (default: the SAE's hook from its cfg.json).
    #[arg(long)]
    hook: Option<String>,
    /// Print JSON ({"latent", "hook", "tokens": [{"pos", "id", "text", "value"}]}).
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct Token<'a> {
    pos: usize,
    id: u32,
    text: &'a str,
    value: f32,
}

pub fn run(a: Args) -> Result<()> {
    let req = EncodeRequest {
        sae: a.sae,
        model: a.model,
        text: a.text,
        hook: a.hook,
    };
    let e = encode_text(&req, &mut |_| {})?;
    if a.latent >= e.sae.cfg.d_sae {
        bail!(
            "{}: --latent {} does not exist (the SAE has {} latents)",
            req.sae.display(),
            a.latent,
            e.sae.cfg.d_sae
        );
    }
    let out: Vec<Token> = e
        .ids
        .iter()
        .zip(&e.texts)
        .enumerate()
        .map(|(pos, (&id, text))| Token {
            pos,
            id,
            text,
            value: e.latents.row(pos)[a.latent],
        })
        .collect();
    if a.json {
        println!(
            "{}",
            serde_json::json!({ "latent": a.latent, "hook": e.hook, "tokens": out })
        );
    } else {
        println!("latent {} at {}", a.latent, e.hook);
        for t in &out {
            println!(
                "{:>4}  {:>6}  {:<16} {}",
                t.pos,
                t.id,
                format!("{:?}", t.text),
                t.value
            );
        }
    }
    Ok(())
}
