//! The encode job: one text through the model to the SAE's hook and through the SAE,
//! every latent at every token (`saelab encode`).
//!
//! It takes the features pass's path (the jobs' model loading and packing,
//! [`run_contexts`] with BOS first and left out, [`Sae::encode_dense`]), not the
//! dashboard server's, so that the browser test can check the prompt explorer against
//! a second computation; the steering issue's measures re-encode generated text the
//! same way.

use std::path::PathBuf;

use saelab_core::{Matrix, Sae};
use saelab_lm::contexts::{run_contexts, tokenizer_for_model, ContextRef};
use saelab_lm::text::NOT_IN_DOCUMENT;

use crate::error::{Error, Result};
use crate::event::OnEvent;
use crate::inputs;

/// What to encode.
#[derive(Clone, Debug, PartialEq)]
pub struct EncodeRequest {
    /// The SAE (any supported format) or a run directory holding one.
    pub sae: PathBuf,
    /// The model: a GGUF file or a Hugging Face directory.
    pub model: PathBuf,
    /// The text; BOS is put in front and left out of the result.
    pub text: String,
    /// Hook point (default: the SAE's own `metadata.hook_name`).
    pub hook: Option<String>,
}

/// A text's tokens and the SAE's latents at each.
#[derive(Clone, Debug)]
pub struct EncodedText {
    /// The hook (canonical name).
    pub hook: String,
    /// The SAE, as loaded.
    pub sae: Sae,
    /// The text's token ids (BOS left out).
    pub ids: Vec<u32>,
    /// The text of each token.
    pub texts: Vec<String>,
    /// Every latent at every token: `[ids.len(), n_latents]`.
    pub latents: Matrix,
}

/// Encodes `req.text`. Errors: an empty text, an SAE whose width is not the hook's (naming
/// its `cfg.json`), a text longer than the model's context, a missing file.
pub fn encode_text(req: &EncodeRequest, on: &mut OnEvent) -> Result<EncodedText> {
    let (sae, dir, hook) = inputs::sae_with_hook(&req.sae, req.hook.as_deref())?;
    let ids = tokenizer_for_model(&req.model)?.encode(&req.text)?;
    if ids.is_empty() {
        return Err(Error::invalid("the text is empty"));
    }
    let model = inputs::load_model(&req.model, on)?;
    model.hook(&hook)?;
    inputs::check_sae_width(&sae, &dir, &model, &req.model, &hook)?;
    if ids.len() + 1 > model.context_length() {
        return Err(Error::invalid(format!(
            "the text is {} tokens; {} reads at most {} with BOS",
            ids.len(),
            req.model.display(),
            model.context_length()
        )));
    }
    let (tok, pack) = inputs::packing(&model, &req.model, ids.len() + 1)?;
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
    let x = Matrix::from_vec(
        rows.rows,
        rows.d,
        rows.acts.into_iter().next().unwrap_or_default(),
    )?;
    let latents = sae.encode_dense(&x)?;
    let texts = ids
        .iter()
        .map(|&id| tok.token_str(id).unwrap_or_default())
        .collect();
    Ok(EncodedText {
        hook,
        sae,
        ids,
        texts,
        latents,
    })
}
