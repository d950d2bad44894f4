//! `features.json`: what a features folder was made from, with which settings, and how
//! far the pass got. Written atomically after every shard part and every latent range,
//! so a stopped or killed pass continues from it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use saelab_core::rundir::{read_json, write_json};
use saelab_core::{Error, Result};

use crate::stats::StatsConfig;

/// The `format` field of every `features.json`.
pub const FORMAT: &str = "saelab-features";
/// The layout version this crate writes and reads.
pub const VERSION: u32 = 2;

/// The whole manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`VERSION`].
    pub version: u32,
    /// What the pass computes from; fixed once the folder exists.
    pub settings: Settings,
    /// How far it got.
    pub state: State,
}

/// The inputs and settings of a pass. A pass continues a folder only when all of them
/// agree (paths aside: the same files may be named differently).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// The SAE.
    pub sae: SaeInfo,
    /// The model.
    pub model: ModelInfo,
    /// The text.
    pub corpus: CorpusInfo,
    /// The activation cache Stage A read its rows from (`saelab extract`'s folder), or
    /// `None` when the model ran over the contexts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activations: Option<ActivationsInfo>,
    /// The hook point the SAE reads.
    pub hook: String,
    /// Tokens per context (BOS first).
    pub ctx_len: usize,
    /// Tokens asked for (non-BOS).
    pub tokens_requested: u64,
    /// Contexts the pass reads: the first contexts of the corpus part's shuffled order
    /// (of the cache's order when read from a cache) whose non-BOS tokens reach
    /// `tokens_requested` (or all of them).
    pub contexts: usize,
    /// Non-BOS positions in those contexts: the denominator of every density.
    pub positions: u64,
    /// Seed of the context order and of every sample drawn.
    pub seed: u64,
    /// Contexts per shard part.
    pub contexts_per_part: usize,
    /// Contexts per model forward.
    pub batch_contexts: usize,
    /// Most latents per range (per delphi file and per stats file).
    pub range_size: usize,
    /// Most active positions per range (more latents, fewer positions each): what
    /// Stage B holds in memory at once, whatever the token count.
    pub range_entries: u64,
    /// Sizes of the per-latent tables.
    pub stats: StatsConfig,
    /// Sizes of the weights-only tables.
    pub tables: TablesConfig,
}

/// The SAE a folder was made from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SaeInfo {
    /// Its directory, as given.
    pub path: String,
    /// Fingerprint of its config and weights ([`crate::fingerprint::sae_fingerprint`]).
    pub fingerprint: String,
    /// Architecture name.
    pub architecture: String,
    /// Input width.
    pub d_in: usize,
    /// Number of latents.
    pub n_latents: usize,
}

/// The model a folder was made with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Its file or directory, as given.
    pub path: String,
    /// Fingerprint of its files (`saelab_lm::contexts::model_fingerprint`).
    pub fingerprint: String,
    /// Its name.
    pub name: String,
    /// Residual width.
    pub d_model: usize,
    /// Vocabulary size.
    pub d_vocab: usize,
    /// BOS token id.
    pub bos_token_id: Option<u32>,
}

/// The text a folder was made from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CorpusInfo {
    /// Its path, as given.
    pub path: String,
    /// Fingerprint of the part's documents.
    pub fingerprint: String,
    /// Which part (`train`, `heldout`, `all`).
    pub part: String,
    /// Documents in the part.
    pub documents: usize,
}

/// The activation cache a folder's rows were read from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivationsInfo {
    /// Its directory, as given.
    pub path: String,
    /// The stored element type (`f32`, `f16`, `bf16`): anything but `f32` rounds the
    /// activations the SAE encodes.
    pub dtype: String,
    /// Its context order (`shuffled` with its seed, or `corpus`).
    pub order: String,
}

/// Sizes and conventions of the weights-only tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TablesConfig {
    /// Tokens in each logit table (top and bottom).
    pub logit_tokens: usize,
    /// Bins of the logit histogram.
    pub logit_hist_bins: usize,
    /// Neighbours kept (decoder cosine and co-occurrence).
    pub neighbours: usize,
    /// Whether the final norm's gain is folded into `W_U` for the logit tables: always
    /// false (SAEDashboard's convention: `W_dec[i] · W_Uᵀ` as stored).
    pub final_norm_folded: bool,
}

impl Default for TablesConfig {
    fn default() -> Self {
        TablesConfig {
            logit_tokens: 10,
            logit_hist_bins: 50,
            neighbours: 10,
            final_norm_folded: false,
        }
    }
}

/// How far a pass got. Parts and ranges are done in order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Shard parts in the pass.
    pub parts_total: usize,
    /// Parts `0..parts_done` are written.
    pub parts_done: usize,
    /// The ranges, `(start, end)` with `end` inclusive, planned from the latents'
    /// counts when Stage B begins ([`crate::store::plan_ranges`]); empty before.
    pub ranges: Vec<(usize, usize)>,
    /// Ranges `0..ranges_done` have their delphi file and stats file written.
    pub ranges_done: usize,
    /// Everything is written, the index included.
    pub complete: bool,
}

impl Settings {
    /// The first setting in which `self` (a folder's) and `other` (a new pass's)
    /// differ, as a phrase, or `None` when the pass may continue the folder. Paths are
    /// not compared; fingerprints are.
    pub fn difference(&self, other: &Settings) -> Option<String> {
        if self.sae.fingerprint != other.sae.fingerprint {
            return Some(format!(
                "made from another SAE (fingerprint {}, this SAE {})",
                self.sae.fingerprint, other.sae.fingerprint
            ));
        }
        if self.model.fingerprint != other.model.fingerprint {
            return Some(format!(
                "made with another model (fingerprint {}, this model {})",
                self.model.fingerprint, other.model.fingerprint
            ));
        }
        if self.corpus.fingerprint != other.corpus.fingerprint
            || self.corpus.part != other.corpus.part
        {
            return Some("made from other text (corpus fingerprint or part differs)".into());
        }
        let source =
            |a: &Option<ActivationsInfo>| a.as_ref().map(|a| (a.dtype.clone(), a.order.clone()));
        if source(&self.activations) != source(&other.activations) {
            let name = |a: &Option<ActivationsInfo>| match a {
                Some(a) => format!("the activation cache {} ({}, {})", a.path, a.dtype, a.order),
                None => "the model's forward".to_string(),
            };
            return Some(format!(
                "made from {}, this pass reads {}",
                name(&self.activations),
                name(&other.activations)
            ));
        }
        let pairs = [
            ("hook", self.hook.clone(), other.hook.clone()),
            ("ctx", self.ctx_len.to_string(), other.ctx_len.to_string()),
            (
                "tokens",
                self.tokens_requested.to_string(),
                other.tokens_requested.to_string(),
            ),
            ("seed", self.seed.to_string(), other.seed.to_string()),
            (
                "contexts per part",
                self.contexts_per_part.to_string(),
                other.contexts_per_part.to_string(),
            ),
            (
                "contexts per forward",
                self.batch_contexts.to_string(),
                other.batch_contexts.to_string(),
            ),
            (
                "latents per range",
                self.range_size.to_string(),
                other.range_size.to_string(),
            ),
            (
                "entries per range",
                self.range_entries.to_string(),
                other.range_entries.to_string(),
            ),
        ];
        for (what, a, b) in pairs {
            if a != b {
                return Some(format!("made with {what} {a}, this pass asks for {b}"));
            }
        }
        if self.stats != other.stats || self.tables != other.tables {
            return Some("made with other table sizes".into());
        }
        None
    }
}

/// Reads `path` as a manifest; errors name the file (invalid JSON, another format or
/// version).
pub fn read(path: &Path) -> Result<Manifest> {
    let m: Manifest = read_json(path, "a saelab features manifest")?;
    if m.format != FORMAT || m.version != VERSION {
        return Err(Error::bad_file(
            path,
            format!(
                "format {} version {}; this saelab reads {FORMAT} version {VERSION}",
                m.format, m.version
            ),
        ));
    }
    Ok(m)
}

/// Writes the manifest to `path` atomically.
pub fn write(path: &Path, m: &Manifest) -> Result<()> {
    write_json(path, m)
}
