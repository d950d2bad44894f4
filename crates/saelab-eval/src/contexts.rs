//! Evaluation contexts from a text corpus.

use std::path::Path;

use saelab_lm::contexts::{ContextOrder, ContextPlan};
use saelab_lm::text::{Corpus, HeldOut, LoadOptions, PackConfig, Part};
use saelab_lm::tokenizer::Tokenizer;
use saelab_lm::{Error, Result};

/// Seed of the context order of [`corpus_contexts`] (that of `saelab extract`'s default).
pub const EVAL_SEED: u64 = 0;

/// `n_contexts` contexts of `ctx_len` tokens (each starting with BOS, see
/// [`PackConfig`]) packed from the documents of `part` of the corpus at `corpus`
/// (a text file, a folder of `*.txt`, or JSONL), under the default held-out rule
/// ([`HeldOut::default`]: every 20th document): the first `n_contexts` of the
/// shuffled order with seed [`EVAL_SEED`], i.e. a uniform sample of the part's contexts
/// (in corpus order a small evaluation would see only the first few documents).
/// These are the contexts `saelab extract --part … --order shuffled --seed 0` stores
/// first, so in-model and cache metrics can be compared on the same tokens.
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
    let plan = ContextPlan::new(
        tok,
        &docs,
        PackConfig::for_tokenizer(ctx_len, tok)?,
        ContextOrder::Shuffled { seed: EVAL_SEED },
    )
    .map_err(|e| Error::bad_file(corpus, format!("{} documents: {e}", part_name(part))))?;
    Ok((0..n_contexts.min(plan.len()))
        .map(|g| plan.first_epoch(g).tokens.to_vec())
        .collect())
}

fn part_name(p: Part) -> &'static str {
    match p {
        Part::Train => "training",
        Part::HeldOut => "held-out",
        Part::All => "",
    }
}
