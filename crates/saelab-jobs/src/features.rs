//! The features job: the statistics pass of `saelab features` over a model, an SAE and
//! a corpus part (`saelab_features::pass`), writing a features folder that the
//! dashboard and the exporters read.
//!
//! The pass reads the first contexts of the part's shuffled order (seeded by
//! `seed`) whose non-BOS tokens reach `tokens`. Running the same job again continues a
//! stopped or killed pass where its last shard part or latent range ends, or finds the
//! folder complete; a folder made from another SAE, model, text or settings is refused
//! with an error naming its `features.json`.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use saelab_core::format::load_sae;
use saelab_eval::report::sae_dir;
use saelab_features::manifest::{CorpusInfo, ModelInfo, SaeInfo, TablesConfig};
use saelab_features::pass::{self, PassInputs, Progress};
use saelab_features::stats::StatsConfig;
use saelab_features::{sae_fingerprint, Layout, Settings, Summary};
use saelab_lm::contexts::{
    documents_fingerprint, is_bos_position, model_fingerprint, ContextOrder, ContextPlan,
};
use saelab_lm::text::{HeldOut, Part};

use crate::error::{Error, Result};
use crate::eval::splice_hook;
use crate::event::{Event, Loaded, OnEvent, Phase};
use crate::inputs;

/// What to compute.
#[derive(Clone, Debug, PartialEq)]
pub struct FeaturesRequest {
    /// The SAE (any supported format) or a run directory holding one.
    pub sae: PathBuf,
    /// The model: a GGUF file or a Hugging Face directory.
    pub model: PathBuf,
    /// The corpus: a folder of `.txt` files, a text file or JSONL.
    pub corpus: PathBuf,
    /// JSONL field holding the text.
    pub jsonl_field: String,
    /// Which documents.
    pub part: Part,
    /// Non-BOS tokens to read (whole contexts; fewer if the part runs out).
    pub tokens: u64,
    /// The features folder.
    pub out: PathBuf,
    /// Hook point (default: the SAE's own `metadata.hook_name`).
    pub hook: Option<String>,
    /// Tokens per context.
    pub ctx_len: usize,
    /// Seed of the context order and of every sample.
    pub seed: u64,
    /// Contexts per forward.
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
    /// A request with the defaults: the train part, 128-token contexts, seed 0, 8
    /// contexts per forward, 64 per part, ranges of at most 1024 latents and 2²⁰
    /// active positions.
    pub fn new(sae: PathBuf, model: PathBuf, corpus: PathBuf, tokens: u64, out: PathBuf) -> Self {
        FeaturesRequest {
            sae,
            model,
            corpus,
            jsonl_field: "text".into(),
            part: Part::Train,
            tokens,
            out,
            hook: None,
            ctx_len: 128,
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
    let dir = sae_dir(&req.sae);
    let sae = load_sae(&dir)?;
    let hook = inputs::canonical_hook(&splice_hook(
        req.hook.as_deref(),
        sae.cfg.metadata.hook_name.as_deref(),
        &dir,
    )?);
    let corpus = inputs::load_corpus(&req.corpus, &req.jsonl_field)?;
    let held_out = HeldOut::default();
    let docs = inputs::part_documents(&corpus, &req.corpus, req.part, held_out)?;
    let model_fp = model_fingerprint(&req.model)?;

    let t_load = Instant::now();
    let model = inputs::load_model(&req.model, on)?;
    model.hook(&hook)?;
    if sae.cfg.d_in != model.d_model() || sae.cfg.d_out != model.d_model() {
        return Err(Error::invalid(format!(
            "{}: the SAE reads d_in = {} and writes d_out = {}, but {hook} of {} is {} wide",
            dir.join("cfg.json").display(),
            sae.cfg.d_in,
            sae.cfg.d_out,
            req.model.display(),
            model.d_model()
        )));
    }
    let (tok, pack) = inputs::packing(&model, &req.model, req.ctx_len)?;
    let plan = ContextPlan::new(&tok, &docs, pack, ContextOrder::Shuffled { seed: req.seed })
        .map_err(|e| Error::invalid(format!("{}: {e}", req.corpus.display())))?;
    let mut contexts = Vec::new();
    let mut positions = 0u64;
    for g in 0..plan.len() {
        if positions >= req.tokens {
            break;
        }
        let c = plan.first_epoch(g);
        positions += c.positions.iter().filter(|&&p| !is_bos_position(p)).count() as u64;
        contexts.push(c);
    }
    if positions < req.tokens {
        on(Event::Note(format!(
            "the {} part holds only {positions} tokens; asked for {}",
            saelab_lm::cache::part_name(req.part),
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
        ctx_len: req.ctx_len,
        documents: docs.len(),
        secs: t_load.elapsed().as_secs_f64(),
    }));

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
        corpus: CorpusInfo {
            path: req.corpus.display().to_string(),
            fingerprint: documents_fingerprint(&docs),
            part: saelab_lm::cache::part_name(req.part).to_string(),
            documents: docs.len(),
        },
        hook: hook.clone(),
        ctx_len: req.ctx_len,
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
    })
}
