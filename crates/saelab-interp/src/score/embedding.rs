//! The embedding scorer (delphi's): the explanation, as the retrieval query
//! "Instruct: Retrieve sentences that could be related to the explanation.\nQuery: …",
//! and every excerpt are embedded by a sentence encoder (all-MiniLM-L6-v2); an
//! excerpt's score is the cosine similarity of the two, and the explanation's score is
//! the AUROC of those, activating against non-activating. The excerpts' embeddings do
//! not depend on the explanation: [`EmbeddingScorer::prepare`] computes them once per
//! latent.

use saelab_embed::{cosine, SentenceEncoder};

use super::ItemScore;
use crate::render::plain;
use crate::sample::Examples;

/// The query an explanation becomes.
pub fn query(explanation: &str) -> String {
    format!(
        "Instruct: Retrieve sentences that could be related to the explanation.\nQuery: {explanation}"
    )
}

/// A sentence encoder.
pub struct EmbeddingScorer<'e> {
    encoder: &'e SentenceEncoder,
}

/// One latent's excerpts with their embeddings.
#[derive(Clone, Debug)]
pub struct Prepared {
    items: Vec<ItemScore>,
    embeddings: Vec<Vec<f32>>,
}

impl<'e> EmbeddingScorer<'e> {
    /// The scorer embedding with `encoder`.
    pub fn new(encoder: &'e SentenceEncoder) -> Self {
        EmbeddingScorer { encoder }
    }

    /// Embeds `ex`'s test and non-activating excerpts.
    pub fn prepare(&self, ex: &Examples, vocab: &[String]) -> saelab_embed::Result<Prepared> {
        let examples: Vec<_> = ex.test.iter().chain(&ex.non_activating).collect();
        let texts: Vec<String> = examples.iter().map(|e| plain(e, vocab)).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        Ok(Prepared {
            items: examples.iter().map(|e| ItemScore::new(e, vocab)).collect(),
            embeddings: self.encoder.embed(&refs)?,
        })
    }

    /// The items of `prepared` scored under `explanation`: `probability` is the cosine.
    pub fn score(
        &self,
        prepared: &Prepared,
        explanation: &str,
    ) -> saelab_embed::Result<Vec<ItemScore>> {
        let q = self.encoder.embed(&[&query(explanation)])?.remove(0);
        let mut items = prepared.items.clone();
        for (item, e) in items.iter_mut().zip(&prepared.embeddings) {
            item.probability = Some(cosine(&q, e) as f64);
        }
        Ok(items)
    }
}
