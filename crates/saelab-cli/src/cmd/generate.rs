//! `saelab generate`: continue a prompt with the model (KV-cached; greedy or sampled).

use std::path::PathBuf;

use anyhow::Result;
use saelab_jobs::steer::{PromptRequest, Steerer};

use super::GenArgs;

#[derive(clap::Args)]
pub struct Args {
    /// Model: a GGUF file, or a Hugging Face LLaMA directory.
    #[arg(long)]
    model: PathBuf,
    /// The prompt (BOS is put in front).
    #[arg(long)]
    prompt: String,
    #[command(flatten)]
    gen: GenArgs,
    /// Print JSON ({"tokens", "text", "finish"}).
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let steerer = Steerer::load(&a.model, &mut |_| {})?;
    let req = PromptRequest {
        text: a.prompt,
        chat: a.gen.chat,
        gen: a.gen.options(0.0, 0)?,
    };
    let c = steerer.generate(&req)?;
    if a.json {
        println!("{}", serde_json::to_string(&c)?);
    } else {
        println!("{}", c.text);
    }
    Ok(())
}
