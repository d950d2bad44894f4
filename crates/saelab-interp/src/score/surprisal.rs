//! The surprisal scorer (delphi's, in saelab's wording): a base language model reads
//! each excerpt after a prefix that gives the explanation, and after a prefix that
//! gives none ("various unrelated sentences"). An explanation that predicts where the
//! latent fires lowers the loss of activating excerpts more than of the others; the
//! score of an excerpt is its gain, mean next-token loss without the explanation
//! minus with it, and the explanation's score is the AUROC of the gains, activating
//! against non-activating.
//!
//! The excerpts are re-tokenised from their text by the base model's tokenizer, so
//! the base model need not be the SAE's. The control prefix does not depend on the
//! explanation: [`SurprisalScorer::prepare`] computes its losses once per latent, and
//! [`SurprisalScorer::score`] then costs one forward per explanation. The prefix,
//! shared by every excerpt of a forward, runs once into a KV cache that each excerpt
//! continues (about 40 % of the tokens of a 32-token excerpt's sequence).

use saelab_lm::model::{ForwardOptions, HookedModel};
use saelab_lm::tokenizer::Tokenizer;
use saelab_lm::Result;

use super::ItemScore;
use crate::render::plain;
use crate::sample::Examples;

/// The prefix with an explanation.
fn with(explanation: &str) -> String {
    format!("The following sentences are examples of text where this appears: {explanation}\nSentences:\n")
}

/// The control prefix.
const CONTROL: &str = "The following sentences are examples of text where this appears: various unrelated sentences.\nSentences:\n";

/// Sequences per forward.
const BATCH: usize = 32;

/// A base model and its tokenizer.
pub struct SurprisalScorer<'m> {
    model: &'m HookedModel,
    tokenizer: &'m Tokenizer,
}

/// One latent's excerpts, tokenised, with their losses after the control prefix.
#[derive(Clone, Debug)]
pub struct Prepared {
    items: Vec<ItemScore>,
    ids: Vec<Vec<u32>>,
    control: Vec<f64>,
}

impl<'m> SurprisalScorer<'m> {
    /// The scorer reading with `model`.
    pub fn new(model: &'m HookedModel, tokenizer: &'m Tokenizer) -> Self {
        SurprisalScorer { model, tokenizer }
    }

    /// Tokenises `ex`'s test and non-activating excerpts and computes their control
    /// losses.
    pub fn prepare(&self, ex: &Examples, vocab: &[String]) -> Result<Prepared> {
        let examples: Vec<_> = ex.test.iter().chain(&ex.non_activating).collect();
        let items = examples.iter().map(|e| ItemScore::new(e, vocab)).collect();
        let ids = examples
            .iter()
            .map(|e| self.tokenizer.encode(&plain(e, vocab)))
            .collect::<Result<Vec<_>>>()?;
        let control = self.losses(CONTROL, &ids)?;
        Ok(Prepared {
            items,
            ids,
            control,
        })
    }

    /// The items of `prepared` scored under `explanation`: `probability` is the gain.
    pub fn score(&self, prepared: &Prepared, explanation: &str) -> Result<Vec<ItemScore>> {
        let losses = self.losses(&with(explanation), &prepared.ids)?;
        let mut items = prepared.items.clone();
        for ((item, &c), l) in items.iter_mut().zip(&prepared.control).zip(losses) {
            item.probability = c.is_finite().then_some(c - l).filter(|g| g.is_finite());
        }
        Ok(items)
    }

    /// Mean next-token loss of each excerpt after BOS and `prefix` (NaN for an empty
    /// excerpt). The prefix runs once into a KV cache, all but its last token; each
    /// batch of excerpts continues copies of that cache from the prefix's last token,
    /// whose prediction is the excerpt's first loss.
    pub fn losses(&self, prefix: &str, excerpts: &[Vec<u32>]) -> Result<Vec<f64>> {
        let mut head = Vec::new();
        head.extend(self.tokenizer.bos_id().or(self.model.bos_token_id()));
        head.extend(self.tokenizer.encode(prefix)?);
        let last = *head.last().expect("the prefix is not empty");
        let mut shared = self.model.kv_cache(1);
        if head.len() > 1 {
            self.model.forward_cached(
                &[&head[..head.len() - 1]],
                &mut shared,
                &[0],
                &ForwardOptions::new(),
            )?;
        }
        let mut out = vec![f64::NAN; excerpts.len()];
        // Batches of similar lengths, padded at the end: the forward is causal, so the
        // padding changes no loss before it, and those after are not read.
        let mut order: Vec<usize> = (0..excerpts.len())
            .filter(|&i| !excerpts[i].is_empty())
            .collect();
        order.sort_by_key(|&i| excerpts[i].len());
        for chunk in order.chunks(BATCH) {
            let longest = chunk.iter().map(|&i| excerpts[i].len()).max().unwrap_or(0);
            let batch: Vec<Vec<u32>> = chunk
                .iter()
                .map(|&i| {
                    let mut seq = [&[last], excerpts[i].as_slice()].concat();
                    seq.resize(1 + longest, *seq.last().expect("not empty"));
                    seq
                })
                .collect();
            let mut cache = shared.replicate(0, chunk.len());
            let streams: Vec<usize> = (0..chunk.len()).collect();
            let loss = self
                .model
                .forward_cached(
                    &batch,
                    &mut cache,
                    &streams,
                    &ForwardOptions::new().loss(true),
                )?
                .loss
                .expect("asked for the loss");
            // Column j predicts new token j + 1: the excerpt's tokens are 1..=len.
            for (row, &i) in chunk.iter().enumerate() {
                let len = excerpts[i].len();
                let r = &loss.data[row * loss.cols..(row + 1) * loss.cols];
                out[i] = r[..len].iter().map(|&v| v as f64).sum::<f64>() / len as f64;
            }
        }
        Ok(out)
    }
}
