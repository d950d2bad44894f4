//! The features folder as the pages see it: opened once, with the small per-latent
//! summary that the index sorts and searches kept in memory, and every full record
//! read from its own line on demand (`saelab_features::Features::latent`), so that the
//! server's memory does not grow with the records' size. The folder's
//! `explanations.json` (`saelab autointerp`'s explanations and scores, small: one
//! record per explained latent and explainer) is read once, whole, when it is opened.

use std::path::Path;

use rayon::prelude::*;
use saelab_features::explanations::{self, read_explanations, ExplanationRecord};
use saelab_features::{Features, LatentRecord};

use crate::error::{Result, WebError};

/// What the index shows of one latent, and what its search looks at.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Summary {
    /// The latent.
    pub latent: u32,
    /// Active positions.
    pub count: u64,
    /// Fraction of positions where it is active.
    pub density: f64,
    /// Largest value.
    pub max: f32,
    /// Mean of the non-zero values.
    pub mean: f64,
    /// The token at each top context's qualifying position, best first, each once.
    pub max_tokens: Vec<u32>,
    /// The most promoted tokens of the logit table, largest first.
    pub promoted: Vec<u32>,
}

/// A features folder opened for the pages.
#[derive(Debug)]
pub struct Site {
    features: Features,
    vocab: Vec<String>,
    tokens: Vec<u32>,
    ctx_len: usize,
    bos: Option<u32>,
    summaries: Vec<Summary>,
    /// Every explanation, by latent then explainer.
    explanations: Vec<ExplanationRecord>,
}

impl Site {
    /// Opens the folder `dir` (complete, as `saelab features` leaves it), reads every
    /// latent's record once to build the index and reads its `explanations.json`, if
    /// any. Errors name the file at fault.
    pub fn open(dir: &Path) -> saelab_core::Result<Site> {
        Site::from_features(Features::open(dir)?)
    }

    /// [`Site::open`] on an already opened folder (for example one checked against its
    /// SAE with `Features::open_for`).
    pub fn from_features(features: Features) -> saelab_core::Result<Site> {
        let s = &features.manifest().settings;
        let (ctx_len, bos) = (s.ctx_len, s.model.bos_token_id);
        let tokens = features.tokens()?;
        let vocab = features.vocab()?;
        let vocab_path = features.layout().vocab();
        if vocab.len() != s.model.d_vocab {
            return Err(saelab_core::Error::bad_file(
                &vocab_path,
                format!(
                    "holds {} token texts, the model has {} tokens",
                    vocab.len(),
                    s.model.d_vocab
                ),
            ));
        }
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= vocab.len()) {
            return Err(saelab_core::Error::bad_file(
                features.layout().tokens(),
                format!("token id {t} is outside the vocabulary of {}", vocab.len()),
            ));
        }
        let summaries = (0..features.n_latents())
            .into_par_iter()
            .map(|i| {
                let r = features.latent(i)?;
                check_record(&features, &r, tokens.len() / ctx_len.max(1), ctx_len)?;
                Ok(summarise(&r, &tokens, ctx_len))
            })
            .collect::<saelab_core::Result<Vec<_>>>()?;
        let explanations = load_explanations(features.layout().dir(), summaries.len())?;
        Ok(Site {
            features,
            vocab,
            tokens,
            ctx_len,
            bos,
            summaries,
            explanations,
        })
    }

    /// The folder.
    pub fn features(&self) -> &Features {
        &self.features
    }

    /// Number of latents.
    pub fn n_latents(&self) -> usize {
        self.summaries.len()
    }

    /// Every latent's summary, in latent order.
    pub fn summaries(&self) -> &[Summary] {
        &self.summaries
    }

    /// The record of latent `i`: a 404 when there is no such latent.
    pub fn record(&self, i: usize) -> Result<LatentRecord> {
        if i >= self.n_latents() {
            return Err(WebError::NotFound(format!(
                "latent {i} does not exist (the SAE has {} latents)",
                self.n_latents()
            )));
        }
        Ok(self.features.latent(i)?)
    }

    /// Tokens per context.
    pub fn ctx_len(&self) -> usize {
        self.ctx_len
    }

    /// The tokens of context `seq` (checked against the folder when it was opened).
    pub fn context(&self, seq: u32) -> &[u32] {
        let a = seq as usize * self.ctx_len;
        &self.tokens[a..a + self.ctx_len]
    }

    /// Whether `id` is the BOS token.
    pub fn is_bos(&self, id: u32) -> bool {
        self.bos == Some(id)
    }

    /// The text of token `id` as stored in `vocab.json` (empty for an unknown id).
    pub fn token_text(&self, id: u32) -> &str {
        self.vocab.get(id as usize).map_or("", String::as_str)
    }

    /// The token texts.
    pub fn vocab(&self) -> &[String] {
        &self.vocab
    }

    /// Every explanation of the folder, by latent then explainer (none without an
    /// `explanations.json`).
    pub fn explanations(&self) -> &[ExplanationRecord] {
        &self.explanations
    }

    /// The explanations of latent `i`, by explainer (none for a latent not explained).
    pub fn explanations_of(&self, i: u32) -> &[ExplanationRecord] {
        let lo = self.explanations.partition_point(|r| r.latent < i);
        let hi = self.explanations.partition_point(|r| r.latent <= i);
        &self.explanations[lo..hi]
    }
}

/// The records of `dir`'s `explanations.json`, sorted by latent then explainer (the
/// file is written sorted; one edited by hand need not be). A record of a latent the
/// SAE does not have means the file belongs to another folder: an error naming it.
fn load_explanations(dir: &Path, n_latents: usize) -> saelab_core::Result<Vec<ExplanationRecord>> {
    let mut records = read_explanations(dir)?;
    if let Some(r) = records.iter().find(|r| r.latent as usize >= n_latents) {
        return Err(saelab_core::Error::bad_file(
            explanations::path(dir),
            format!(
                "an explanation of latent {}, outside the SAE's {n_latents} latents (a file \
                 of another features folder?)",
                r.latent
            ),
        ));
    }
    records.sort_by(|a, b| (a.latent, &a.explainer).cmp(&(b.latent, &b.explainer)));
    Ok(records)
}

/// The summary of one record: its scalars and the token ids the search looks at.
fn summarise(r: &LatentRecord, tokens: &[u32], ctx_len: usize) -> Summary {
    let mut max_tokens: Vec<u32> = Vec::new();
    for s in &r.top {
        let t = tokens[s.seq as usize * ctx_len + s.pos as usize];
        if !max_tokens.contains(&t) {
            max_tokens.push(t);
        }
    }
    Summary {
        latent: r.latent,
        count: r.count,
        density: r.density,
        max: r.max,
        mean: r.mean,
        max_tokens,
        promoted: r.logits.top.iter().map(|t| t.token).collect(),
    }
}

/// Checks that every sample of `r` points inside the token matrix, so that the pages
/// can index it without a bound check failing later.
fn check_record(
    f: &Features,
    r: &LatentRecord,
    contexts: usize,
    ctx_len: usize,
) -> saelab_core::Result<()> {
    let samples = r
        .top
        .iter()
        .chain(r.intervals.iter().flat_map(|g| &g.samples))
        .chain(r.quantiles.iter().flat_map(|g| &g.samples));
    for s in samples {
        let bad_act = s.acts.iter().any(|&(p, _)| p as usize >= ctx_len);
        if s.seq as usize >= contexts || s.pos as usize >= ctx_len || bad_act {
            return Err(saelab_core::Error::bad_file(
                f.layout().dir().join("stats"),
                format!(
                    "corrupt: latent {} has a sample at context {}, position {} outside \
                     the {contexts} contexts of {ctx_len} tokens",
                    r.latent, s.seq, s.pos
                ),
            ));
        }
    }
    Ok(())
}

/// How a token reads on a page: the text of `vocab.json` with a newline shown as `↵`
/// a tab as `→` and a token of spaces only as `␣`s, so that every token has a visible
/// width.
pub fn display_token(text: &str) -> String {
    if text.is_empty() {
        return "∅".into();
    }
    if text.chars().all(|c| c == ' ') {
        return "␣".repeat(text.chars().count());
    }
    text.replace('\n', "↵").replace('\t', "→").replace('\r', "")
}

/// Whether a token's text matches a search: equal after trimming whitespace, ignoring
/// case.
pub fn token_matches(text: &str, query: &str) -> bool {
    let q = query.trim();
    !q.is_empty() && text.trim().to_lowercase() == q.to_lowercase()
}
