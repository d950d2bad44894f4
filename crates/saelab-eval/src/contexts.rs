//! Evaluation contexts from a text corpus.

use std::path::Path;

use saelab_lm::text::{ContextStream, Corpus, HeldOut, LoadOptions, PackConfig, Part};
use saelab_lm::tokenizer::Tokenizer;
use saelab_lm::{Error, Result};

/// The first `n_contexts` contexts of `ctx_len` tokens (each starting with BOS, see
/// [`PackConfig`]) packed from the documents of `part` of the corpus at `corpus`
/// (a text file, a folder of `*.txt`, or JSONL), under the default held-out rule
/// ([`HeldOut::default`]: every 20th document), in corpus order.
///
/// Errors name the corpus when it holds no document of `part` or too little text
/// for a single context.
pub fn corpus_contexts(
    tok: &Tokenizer,
    corpus: &Path,
    part: Part,
    ctx_len: usize,
    n_contexts: usize,
) -> Result<Vec<Vec<u32>>> {
    let c = Corpus::load(corpus, &LoadOptions::default())?;
    let docs = c.part(part, HeldOut::default());
    if docs.is_empty() {
        return Err(Error::bad_file(
            corpus,
            format!(
                "no {} documents ({} documents in all; every 20th is held out)",
                part_name(part),
                c.len()
            ),
        ));
    }
    let stream = ContextStream::new(tok, docs, PackConfig::for_tokenizer(ctx_len, tok)?)?;
    let mut out = Vec::with_capacity(n_contexts);
    for ctx in stream.take(n_contexts) {
        out.push(ctx?.tokens);
    }
    if out.is_empty() {
        return Err(Error::bad_file(
            corpus,
            format!(
                "the {} documents hold fewer than {ctx_len} tokens: not one context",
                part_name(part)
            ),
        ));
    }
    Ok(out)
}

fn part_name(p: Part) -> &'static str {
    match p {
        Part::Train => "training",
        Part::HeldOut => "held-out",
        Part::All => "",
    }
}
