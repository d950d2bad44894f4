//! The features job: the statistics pass of `saelab features` over a model, an SAE and
//! a corpus part (`saelab_features::pass`), writing a features folder that the
//! dashboard and the exporters read.
//!
//! The pass reads the first contexts of the part's shuffled order (seeded by
//! `seed`) whose non-BOS tokens reach `tokens`, running the model over them; or, from
//! an activation cache of `saelab extract` ([`FeaturesInput::Cache`]), the cache's first
//! contexts, rebuilt from its token ids, with the cached activations in place of the
//! forward (the model then gives only the vocabulary and the logit tables; a cache in
//! f32 gives the same folder as the forward over the same contexts and batches).
//! Running the same job again continues a
//! stopped or killed pass where its last shard part or latent range ends, or finds the
//! folder complete; a folder made from another SAE, model, text or settings is refused
//! with an error naming its `features.json`.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use saelab_features::manifest::{CorpusInfo, ModelInfo, SaeInfo, TablesConfig};
use saelab_features::pass::{self, PassInputs, Progress};
use saelab_features::stats::StatsConfig;
use saelab_features::{sae_fingerprint, Layout, Settings, Summary};
use saelab_lm::contexts::{
    documents_fingerprint, is_bos_position, model_fingerprint, ContextOrder, ContextPlan,
};
use saelab_lm::text::{HeldOut, Part};

mod cache_contexts;

use cache_contexts::CacheContexts;
use saelab_core::store::ActivationStore;
use saelab_features::manifest::ActivationsInfo;
use saelab_features::Activations;
use saelab_lm::contexts::ContextRef;

use crate::error::{Error, Result};
use crate::event::{Event, Loaded, OnEvent, Phase};
use crate::inputs;

/// What the pass reads its activations from.
#[derive(Clone, Debug, PartialEq)]
pub enum FeaturesInput {
    /// Run the model over a corpus part's contexts.
    Corpus {
        /// The corpus: a folder of `.txt` files, a text file or JSONL.
        corpus: PathBuf,
        /// JSONL field holding the text.
        jsonl_field: String,
        /// Which documents.
        part: Part,
        /// Tokens per context.
        ctx_len: usize,
    },
    /// Read the rows of an activation cache written by `saelab extract` from the same
    /// model at the SAE's hook (its contexts, order and context length are the cache's).
    Cache(PathBuf),
}

/// What to compute.
#[derive(Clone, Debug, PartialEq)]
pub struct FeaturesRequest {
    /// The SAE (any supported format) or a run directory holding one.
    pub sae: PathBuf,
    /// The model: a GGUF file or a Hugging Face directory.
    pub model: PathBuf,
    /// Where the activations come from.
    pub input: FeaturesInput,
    /// Non-BOS tokens to read (whole contexts; fewer if the part runs out).
    pub tokens: u64,
    /// The features folder.
    pub out: PathBuf,
    /// Hook point (default: the SAE's own `metadata.hook_name`).
    pub hook: Option<String>,
    /// Seed of the context order (of a corpus part) and of every sample.
    pub seed: u64,
    /// Contexts per forward (or per read of a cache).
    pub batch_contexts: usize,
    /// Contexts per shard part (the unit a stop can lose).
    pub contexts_per_part: usize,
    /// Most latents per range (the unit of Stage B's files).
    pub range_size: usize,
    /// Most active positions per range: Stage B's memory (about 60 bytes each while a
    /// range is written), whatever the token count.
    pub range_entries: u64,
}

impl FeaturesRequest {
    /// A request over a corpus with the defaults: the train part, 128-token contexts,
    /// seed 0, 8 contexts per forward, 64 per part, ranges of at most 1024 latents and
    /// 2²⁰ active positions.
    pub fn new(sae: PathBuf, model: PathBuf, corpus: PathBuf, tokens: u64, out: PathBuf) -> Self {
        let input = FeaturesInput::Corpus {
            corpus,
            jsonl_field: "text".into(),
            part: Part::Train,
            ctx_len: 128,
        };
        Self::with_input(sae, model, input, tokens, out)
    }

    /// A request over the activation cache `cache`, with the defaults of [`Self::new`].
    pub fn from_cache(
        sae: PathBuf,
        model: PathBuf,
        cache: PathBuf,
        tokens: u64,
        out: PathBuf,
    ) -> Self {
        Self::with_input(sae, model, FeaturesInput::Cache(cache), tokens, out)
    }

    /// A request reading `input`, with the defaults of [`Self::new`].
    pub fn with_input(
        sae: PathBuf,
        model: PathBuf,
        input: FeaturesInput,
        tokens: u64,
        out: PathBuf,
    ) -> Self {
        FeaturesRequest {
            sae,
            model,
            input,
            tokens,
            out,
            hook: None,
            seed: 0,
            batch_contexts: 8,
            contexts_per_part: 64,
            range_size: 1024,
            range_entries: 1 << 20,
        }
    }
}

/// What a features job did.
#[derive(Clone, Debug, PartialEq)]
pub struct FeaturesOutcome {
    /// The pass's summary.
    pub summary: Summary,
    /// The hook.
    pub hook: String,
    /// Latents of the SAE.
    pub n_latents: usize,
    /// Whether the activations were read from a cache (not the model's forward).
    pub from_cache: bool,
}

/// Runs (or continues) a features pass. Stops at the next batch or latent range when
/// `stop` is set, with an interrupted error; running it again continues.
pub fn features(
    req: &FeaturesRequest,
    stop: &AtomicBool,
    on: &mut OnEvent,
) -> Result<FeaturesOutcome> {
    let _span = tracing::info_span!("features", out = %req.out.display()).entered();
    if req.tokens == 0
        || req.batch_contexts == 0
        || req.contexts_per_part == 0
        || req.range_size == 0
        || req.range_entries == 0
    {
        return Err(Error::invalid(
            "--tokens, contexts per forward, per part and latents per range must be positive",
        ));
    }
    let (sae, dir, hook) = inputs::sae_with_hook(&req.sae, req.hook.as_deref())?;
    let model_fp = model_fingerprint(&req.model)?;
    // What needs no model: the corpus part's documents, or the cache's contexts (checked
    // against the SAE and the model before the model loads).
    let (corpus, cache) = match &req.input {
        FeaturesInput::Corpus {
            corpus,
            jsonl_field,
            ..
        } => (Some(inputs::load_corpus(corpus, jsonl_field)?), None),
        FeaturesInput::Cache(cache_dir) => {
            let c = CacheContexts::read(cache_dir, req.tokens)?;
            check_cache(&c.manifest, cache_dir, &hook, &model_fp, &req.model, &sae)?;
            (None, Some(c))
        }
    };
    let docs = match (&corpus, &req.input) {
        (
            Some(corpus),
            FeaturesInput::Corpus {
                corpus: path, part, ..
            },
        ) => inputs::part_documents(corpus, path, *part, HeldOut::default())?,
        _ => Vec::new(),
    };

    let t_load = Instant::now();
    let model = inputs::load_model(&req.model, on)?;
    model.hook(&hook)?;
    inputs::check_sae_width(&sae, &dir, &model, &req.model, &hook)?;
    let ctx_len = match (&req.input, &cache) {
        (FeaturesInput::Corpus { ctx_len, .. }, _) => *ctx_len,
        (_, Some(c)) => c.ctx_len(),
        _ => unreachable!("a cache input has its contexts"),
    };
    let (tok, pack) = inputs::packing(&model, &req.model, ctx_len)?;
    let plan = match &req.input {
        FeaturesInput::Corpus { corpus, .. } => Some(
            ContextPlan::new(&tok, &docs, pack, ContextOrder::Shuffled { seed: req.seed })
                .map_err(|e| Error::invalid(format!("{}: {e}", corpus.display())))?,
        ),
        FeaturesInput::Cache(_) => None,
    };
    let contexts: Vec<ContextRef<'_>> = match (&plan, &cache) {
        (Some(plan), _) => first_contexts(plan, req.tokens),
        (_, Some(c)) => c.contexts(),
        _ => unreachable!("either a plan or a cache"),
    };
    let positions: u64 = contexts
        .iter()
        .map(|c| c.positions.iter().filter(|&&p| !is_bos_position(p)).count() as u64)
        .sum();
    if positions < req.tokens {
        let source = match &req.input {
            FeaturesInput::Corpus { part, .. } => {
                format!("the {} part", saelab_lm::cache::part_name(*part))
            }
            FeaturesInput::Cache(d) => d.display().to_string(),
        };
        on(Event::Note(format!(
            "{source} holds only {positions} tokens; asked for {}",
            req.tokens
        )));
    }
    let vocab: Vec<String> = (0..model.vocab_size() as u32)
        .map(|t| tok.token_str(t).unwrap_or_default())
        .collect();
    on(Event::Loaded(Loaded {
        model: &req.model,
        n_layers: model.n_layers(),
        d_model: model.d_model(),
        contexts: contexts.len(),
        ctx_len,
        documents: match &cache {
            Some(c) => c.manifest.corpus.documents,
            None => docs.len(),
        },
        secs: t_load.elapsed().as_secs_f64(),
    }));

    let (corpus_info, activations_info) = match (&req.input, &cache) {
        (FeaturesInput::Corpus { corpus, part, .. }, _) => (
            CorpusInfo {
                path: corpus.display().to_string(),
                fingerprint: documents_fingerprint(&docs),
                part: saelab_lm::cache::part_name(*part).to_string(),
                documents: docs.len(),
            },
            None,
        ),
        (FeaturesInput::Cache(d), Some(c)) => {
            let m = &c.manifest;
            (
                CorpusInfo {
                    path: m.corpus.path.clone(),
                    fingerprint: m.corpus.fingerprint.clone(),
                    part: m.corpus.part.clone(),
                    documents: m.corpus.documents,
                },
                Some(ActivationsInfo {
                    path: d.display().to_string(),
                    dtype: m.dtype.name().to_string(),
                    order: match m.corpus.order {
                        ContextOrder::Shuffled { seed } => format!("shuffled (seed {seed})"),
                        ContextOrder::Corpus => "corpus".to_string(),
                    },
                }),
            )
        }
        _ => unreachable!("a cache input has its contexts"),
    };
    let store = match &req.input {
        FeaturesInput::Cache(d) => Some(ActivationStore::open(std::slice::from_ref(d), None)?),
        FeaturesInput::Corpus { .. } => None,
    };
    let activations = match (&store, &cache) {
        (Some(store), Some(c)) => Activations::Store {
            store,
            rows: &c.rows,
            offsets: &c.offsets,
        },
        _ => Activations::Model,
    };
    let settings = Settings {
        sae: SaeInfo {
            path: req.sae.display().to_string(),
            fingerprint: sae_fingerprint(&sae),
            architecture: sae.cfg.arch.name().to_string(),
            d_in: sae.cfg.d_in,
            n_latents: sae.cfg.d_sae,
        },
        model: ModelInfo {
            path: req.model.display().to_string(),
            fingerprint: model_fp,
            name: model.info().name.clone(),
            d_model: model.d_model(),
            d_vocab: model.vocab_size(),
            bos_token_id: tok.bos_id().or(model.bos_token_id()),
        },
        corpus: corpus_info,
        activations: activations_info,
        hook: hook.clone(),
        ctx_len,
        tokens_requested: req.tokens,
        contexts: contexts.len(),
        positions,
        seed: req.seed,
        contexts_per_part: req.contexts_per_part,
        batch_contexts: req.batch_contexts,
        range_size: req.range_size,
        range_entries: req.range_entries,
        stats: StatsConfig::default(),
        tables: TablesConfig::default(),
    };
    let inp = PassInputs {
        model: &model,
        activations,
        sae: &sae,
        contexts,
        vocab: &vocab,
        settings,
    };
    let layout = Layout::new(&req.out);
    let mut phase: Option<Phase> = None;
    let mut report = |p: Progress| {
        let (ph, done, total, resumed) = match p {
            Progress::Tokens {
                done,
                total,
                resumed,
            } => (Phase::FeatureCache, done, total, resumed),
            Progress::Latents {
                done,
                total,
                resumed,
            } => (Phase::FeatureStats, done, total, resumed),
            Progress::Part { .. } => return,
        };
        if phase != Some(ph) {
            if phase.is_some() {
                on(Event::End);
            }
            phase = Some(ph);
            on(Event::Begin {
                phase: ph,
                label: match ph {
                    Phase::FeatureCache => format!("latent cache at {hook}"),
                    _ => "feature statistics".to_string(),
                },
                total: Some(total),
                done: resumed,
            });
        }
        on(Event::Advance { done });
    };
    let result = pass::run(&layout, &inp, stop, &mut report);
    if phase.is_some() {
        on(Event::End);
    }
    let summary = result?;
    tracing::info!(
        positions = summary.positions,
        parts = summary.parts_written,
        ranges = summary.ranges_written,
        "features written"
    );
    Ok(FeaturesOutcome {
        summary,
        hook,
        n_latents: sae.cfg.d_sae,
        from_cache: matches!(req.input, FeaturesInput::Cache(_)),
    })
}

/// The first contexts of `plan`'s order whose non-BOS tokens reach `tokens` (or all).
fn first_contexts(plan: &ContextPlan, tokens: u64) -> Vec<ContextRef<'_>> {
    let mut contexts = Vec::new();
    let mut positions = 0u64;
    for g in 0..plan.len() {
        if positions >= tokens {
            break;
        }
        let c = plan.first_epoch(g);
        positions += c.positions.iter().filter(|&&p| !is_bos_position(p)).count() as u64;
        contexts.push(c);
    }
    contexts
}

/// Checks that the cache at `dir` (manifest `m`) holds the activations the SAE reads:
/// its hook, its width, extracted from the same model file. Errors name the manifest.
fn check_cache(
    m: &saelab_core::store::manifest::CacheManifest,
    dir: &std::path::Path,
    hook: &str,
    model_fp: &str,
    model: &std::path::Path,
    sae: &saelab_core::Sae,
) -> Result<()> {
    let path = dir.join(saelab_core::store::MANIFEST);
    let bad = |msg: String| Err(saelab_core::Error::bad_file(&path, msg).into());
    if inputs::canonical_hook(&m.hook) != hook {
        return bad(format!("holds {}, but the SAE reads {hook}", m.hook));
    }
    if m.d != sae.cfg.d_in {
        return bad(format!(
            "rows are {} wide, but the SAE reads d_in = {}",
            m.d, sae.cfg.d_in
        ));
    }
    if m.model.fingerprint != model_fp {
        return bad(format!(
            "extracted from another model (fingerprint {}; {} is {model_fp})",
            m.model.fingerprint,
            model.display()
        ));
    }
    if m.contexts == 0 {
        return bad("holds no contexts".to_string());
    }
    Ok(())
}
