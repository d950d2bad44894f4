//! What the jobs read from outside: the model, the corpus and its contexts. Every job
//! loads its model and packs its contexts here, so that the model API is called from
//! one place.

use std::path::{Path, PathBuf};

use saelab_core::Sae;
use saelab_lm::contexts::tokenizer_for_model;
use saelab_lm::model::{HookPoint, HookedModel};
use saelab_lm::text::{Corpus, Document, HeldOut, LoadOptions, PackConfig, Part};
use saelab_lm::tokenizer::Tokenizer;

use crate::error::{Error, Result};
use crate::event::{Event, OnEvent, Phase};

/// Loads a model (GGUF file or Hugging Face directory), reporting a spinner.
pub fn load_model(path: &Path, on: &mut OnEvent) -> Result<HookedModel> {
    let _span = tracing::info_span!("load_model", model = %path.display()).entered();
    on(Event::Begin {
        phase: Phase::LoadModel,
        label: format!("loading {}", path.display()),
        total: None,
        done: 0,
    });
    let m = HookedModel::load(path);
    on(Event::End);
    let m = m?;
    tracing::info!(
        n_layers = m.n_layers(),
        d_model = m.d_model(),
        "model loaded"
    );
    Ok(m)
}

/// The canonical name of a syntactically valid hook name (the layer is checked once
/// the model is loaded); other names are kept for the model to refuse with its list.
pub fn canonical_hook(h: &str) -> String {
    HookPoint::parse(h)
        .map(|hp| hp.name())
        .unwrap_or_else(|_| h.to_string())
}

/// `hooks` in canonical form, each once, in order.
pub fn canonical_hooks<S: AsRef<str>>(hooks: &[S]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for h in hooks.iter().map(|h| canonical_hook(h.as_ref())) {
        if !out.contains(&h) {
            out.push(h);
        }
    }
    out
}

/// Reads a corpus (a folder of `.txt` files, a text file or JSONL with `jsonl_field`).
pub fn load_corpus(path: &Path, jsonl_field: &str) -> Result<Corpus> {
    let opts = LoadOptions {
        jsonl_field: jsonl_field.to_string(),
        ..LoadOptions::default()
    };
    Ok(Corpus::load(path, &opts)?)
}

/// The documents of `part` under `held_out`, or an error saying the part is empty.
pub fn part_documents<'c>(
    corpus: &'c Corpus,
    path: &Path,
    part: Part,
    held_out: HeldOut,
) -> Result<Vec<&'c Document>> {
    let docs = corpus.part(part, held_out);
    if docs.is_empty() {
        return Err(Error::invalid(format!(
            "{}: the {} part is empty: the corpus has {} documents and document ids with \
             id % {} == {} are held out",
            path.display(),
            saelab_lm::cache::part_name(part),
            corpus.len(),
            held_out.every(),
            held_out.offset()
        )));
    }
    Ok(docs)
}

/// The tokenizer of the model at `model_path` and how its contexts are packed: `ctx_len`
/// tokens (checked against the model), each starting with BOS.
pub fn packing(
    model: &HookedModel,
    model_path: &Path,
    ctx_len: usize,
) -> Result<(Tokenizer, PackConfig)> {
    if ctx_len < 2 || ctx_len > model.context_length() {
        return Err(Error::invalid(format!(
            "--ctx-len {} must be between 2 and the model's context length {}",
            ctx_len,
            model.context_length()
        )));
    }
    let tok = tokenizer_for_model(model_path)?;
    let bos = tok.bos_id().or(model.bos_token_id()).ok_or_else(|| {
        Error::invalid(format!(
            "{}: names no BOS token; saelab starts every context with BOS",
            model_path.display()
        ))
    })?;
    Ok((tok, PackConfig::new(ctx_len, bos)))
}

/// The SAE at `path` (an SAE directory or a run directory holding one), the directory
/// it was loaded from, and the canonical name of its hook: `flag` when given, else its
/// own `metadata.hook_name` (an error naming the directory when it has none).
pub fn sae_with_hook(path: &Path, flag: Option<&str>) -> Result<(Sae, PathBuf, String)> {
    let dir = saelab_eval::report::sae_dir(path);
    let sae = saelab_core::format::load_sae(&dir)?;
    let hook = canonical_hook(&crate::eval::splice_hook(
        flag,
        sae.cfg.metadata.hook_name.as_deref(),
        &dir,
    )?);
    Ok((sae, dir, hook))
}

/// Checks that `sae` (loaded from `dir`) reads and writes the width of `hook` in `model`
/// (loaded from `model_path`); the error names the SAE's `cfg.json`.
pub fn check_sae_width(
    sae: &Sae,
    dir: &Path,
    model: &HookedModel,
    model_path: &Path,
    hook: &str,
) -> Result<()> {
    if sae.cfg.d_in == model.d_model() && sae.cfg.d_out == model.d_model() {
        return Ok(());
    }
    Err(Error::invalid(format!(
        "{}: the SAE reads d_in = {} and writes d_out = {}, but {hook} of {} is {} wide",
        dir.join("cfg.json").display(),
        sae.cfg.d_in,
        sae.cfg.d_out,
        model_path.display(),
        model.d_model()
    )))
}

/// Checks that the inputs a pipeline needs exist, with a one-line error saying how to
/// get them.
pub fn require_present(what: &str, path: &Path) -> Result<()> {
    if path.exists() {
        return Ok(());
    }
    Err(Error::invalid(format!(
        "{}: the {what} is missing; run scripts/setup.sh to fetch the model and corpus",
        path.display()
    )))
}
