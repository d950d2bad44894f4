//! `saelab encode`: one latent's value at every token of a text, through the model and
//! the SAE. It takes the path of the features pass (the jobs' model loading and
//! packing, `run_contexts` with BOS first and dropped, `Sae::encode_dense`), not the
//! dashboard server's, so that the browser test can check the prompt explorer against
//! a second computation.

use std::path::PathBuf;

use anyhow::{bail, Result};
use saelab_jobs::eval::splice_hook;
use saelab_jobs::inputs;
use saelab_lm::contexts::{run_contexts, ContextRef};
use saelab_lm::text::NOT_IN_DOCUMENT;

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
struct Token {
    pos: usize,
    id: u32,
    text: String,
    value: f32,
}

pub fn run(a: Args) -> Result<()> {
    let dir = saelab_eval::report::sae_dir(&a.sae);
    let sae = saelab_core::format::load_sae(&dir)?;
    if a.latent >= sae.cfg.d_sae {
        bail!(
            "{}: --latent {} does not exist (the SAE has {} latents)",
            dir.display(),
            a.latent,
            sae.cfg.d_sae
        );
    }
    let hook = inputs::canonical_hook(&splice_hook(
        a.hook.as_deref(),
        sae.cfg.metadata.hook_name.as_deref(),
        &dir,
    )?);
    let model = inputs::load_model(&a.model, &mut |_| {})?;
    model.hook(&hook)?;
    if sae.cfg.d_in != model.d_model() {
        bail!(
            "{}: the SAE reads d_in = {}, but {hook} of {} is {} wide",
            dir.join("cfg.json").display(),
            sae.cfg.d_in,
            a.model.display(),
            model.d_model()
        );
    }
    let ids = saelab_lm::contexts::tokenizer_for_model(&a.model)?.encode(&a.text)?;
    if ids.is_empty() {
        bail!("--text is empty");
    }
    let (tok, pack) = inputs::packing(&model, &a.model, ids.len() + 1)?;
    let mut tokens = vec![pack.bos_id];
    tokens.extend_from_slice(&ids);
    let positions: Vec<u32> = std::iter::once(NOT_IN_DOCUMENT)
        .chain(1..=ids.len() as u32)
        .collect();
    let doc_ids = vec![0u32; tokens.len()];
    let ctx = ContextRef {
        index: 0,
        tokens: &tokens,
        doc_ids: &doc_ids,
        positions: &positions,
    };
    let rows = run_contexts(&model, std::slice::from_ref(&hook), &[ctx], false)?;
    let x = saelab_core::Matrix::from_vec(
        rows.rows,
        rows.d,
        rows.acts.into_iter().next().unwrap_or_default(),
    )?;
    let dense = sae.encode_dense(&x)?;
    let out: Vec<Token> = ids
        .iter()
        .enumerate()
        .map(|(pos, &id)| Token {
            pos,
            id,
            text: tok.token_str(id).unwrap_or_default(),
            value: dense.row(pos)[a.latent],
        })
        .collect();
    if a.json {
        println!(
            "{}",
            serde_json::json!({ "latent": a.latent, "hook": hook, "tokens": out })
        );
    } else {
        println!("latent {} at {hook}", a.latent);
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
