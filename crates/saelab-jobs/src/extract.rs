//! The extraction job: run a model over a corpus part and write an activation cache
//! (`saelab_lm::cache`).
//!
//! One hook writes its cache into `out`; several hooks, captured in the same forwards,
//! write `out/<hook>/` each. Running the same job again continues an interrupted
//! extraction where its complete shards end, or finds the cache already complete
//! (without loading the model); with a larger `tokens` it extends a complete cache.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use saelab_lm::cache::{
    self, cache_status, hook_dirs, CacheDType, CacheManifest, CacheSpec, CacheStatus, ExtractJob,
    ExtractOptions, ExtractSummary, DEFAULT_SHARD_ROWS,
};
use saelab_lm::contexts::{documents_fingerprint, model_fingerprint, ContextOrder, ContextPlan};
use saelab_lm::text::{HeldOut, Part};

use crate::error::{Error, Result};
use crate::event::{Event, Loaded, OnEvent, Phase};
use crate::inputs;

/// What to extract.
#[derive(Clone, Debug, PartialEq)]
pub struct ExtractRequest {
    /// The model: a GGUF file or a Hugging Face directory.
    pub model: PathBuf,
    /// Hook points (captured in one pass).
    pub hooks: Vec<String>,
    /// The corpus: a folder of `.txt` files, a text file or JSONL.
    pub corpus: PathBuf,
    /// JSONL field holding the text.
    pub jsonl_field: String,
    /// Which documents.
    pub part: Part,
    /// Rows to store (tokens, BOS excluded unless `keep_bos`).
    pub tokens: u64,
    /// Tokens per context.
    pub ctx_len: usize,
    /// Contexts per forward.
    pub batch_contexts: usize,
    /// Stored dtype.
    pub dtype: CacheDType,
    /// The cache directory (a folder of caches for several hooks).
    pub out: PathBuf,
    /// Only continue an existing cache.
    pub resume: bool,
    /// Store BOS positions too.
    pub keep_bos: bool,
    /// Rows per shard.
    pub shard_rows: usize,
    /// Context order.
    pub order: ContextOrder,
}

impl ExtractRequest {
    /// A request with saelab's defaults for everything but what and where: the train
    /// part, 128-token contexts, 8 per forward, f32, shuffled with seed 0.
    pub fn new(
        model: PathBuf,
        hooks: Vec<String>,
        corpus: PathBuf,
        tokens: u64,
        out: PathBuf,
    ) -> Self {
        ExtractRequest {
            model,
            hooks,
            corpus,
            jsonl_field: "text".into(),
            part: Part::Train,
            tokens,
            ctx_len: 128,
            batch_contexts: 8,
            dtype: CacheDType::F32,
            out,
            resume: false,
            keep_bos: false,
            shard_rows: DEFAULT_SHARD_ROWS,
            order: ContextOrder::Shuffled { seed: 0 },
        }
    }
}

/// What an extraction found or did.
#[derive(Clone, Debug, PartialEq)]
pub enum ExtractOutcome {
    /// Every hook's cache already held the rows asked for; nothing was loaded.
    Complete(Vec<(PathBuf, CacheManifest)>),
    /// The model ran (or found the caches complete once loaded).
    Extracted(Extracted),
}

/// What an extraction that ran did.
#[derive(Clone, Debug, PartialEq)]
pub struct Extracted {
    /// The canonical hooks, one cache each.
    pub hooks: Vec<String>,
    /// Their cache directories.
    pub dirs: Vec<PathBuf>,
    /// The extraction's summary.
    pub summary: ExtractSummary,
    /// The corpus part.
    pub part: Part,
    /// The stored dtype.
    pub dtype: CacheDType,
    /// Width of the rows.
    pub d_model: usize,
    /// The deepest block the hooks need.
    pub last_layer: usize,
    /// Seconds spent extracting (after loading).
    pub secs: f64,
}

/// Parses a corpus part's name: `train`, `heldout` (or `held-out`, `held_out`), `all`.
pub fn parse_part(s: &str) -> Result<Part> {
    Ok(match s {
        "train" => Part::Train,
        "heldout" | "held-out" | "held_out" => Part::HeldOut,
        "all" => Part::All,
        _ => {
            return Err(Error::invalid(format!(
                "--part {s}: expected train, heldout or all"
            )))
        }
    })
}

/// Parses a context order: `shuffled` (with `seed`) or `corpus`.
pub fn parse_order(s: &str, seed: u64) -> Result<ContextOrder> {
    Ok(match s {
        "shuffled" => ContextOrder::Shuffled { seed },
        "corpus" => ContextOrder::Corpus,
        _ => {
            return Err(Error::invalid(format!(
                "--order {s}: expected shuffled or corpus"
            )))
        }
    })
}

/// Runs (or continues) an extraction. Stops at a safe point when `stop` is set (the
/// rows so far written as a shard) with an interrupted error.
pub fn extract(
    req: &ExtractRequest,
    stop: &AtomicBool,
    on: &mut OnEvent,
) -> Result<ExtractOutcome> {
    let part_name = cache::part_name(req.part);
    let _span =
        tracing::info_span!("extract", part = part_name, out = %req.out.display()).entered();
    if req.tokens == 0 {
        return Err(Error::invalid("--tokens must be positive"));
    }
    if req.batch_contexts == 0 || req.shard_rows == 0 {
        return Err(Error::invalid("--batch and --shard-rows must be positive"));
    }
    let hooks = inputs::canonical_hooks(&req.hooks);

    // Cheap checks first: the corpus, the model file, what `out` holds.
    let corpus = inputs::load_corpus(&req.corpus, &req.jsonl_field)?;
    let held_out = HeldOut::default();
    let docs = inputs::part_documents(&corpus, &req.corpus, req.part, held_out)?;
    let model_fp = model_fingerprint(&req.model)?;
    let corpus_fp = documents_fingerprint(&docs);
    let spec = |hook: &str| CacheSpec {
        hook: hook.to_string(),
        dtype: req.dtype,
        keep_bos: req.keep_bos,
        ctx_len: req.ctx_len,
        model_path: req.model.clone(),
        model_fingerprint: model_fp.clone(),
        corpus_path: req.corpus.clone(),
        corpus_fingerprint: corpus_fp.clone(),
        documents: docs.len(),
        part: req.part,
        held_out,
        order: req.order,
    };
    let dirs = hook_dirs(&req.out, &hooks);
    let mut statuses = Vec::new();
    for (h, dir) in hooks.iter().zip(&dirs) {
        statuses.push(cache_status(dir, &spec(h))?);
    }
    let complete: Vec<(PathBuf, CacheManifest)> = statuses
        .iter()
        .zip(&dirs)
        .filter_map(|(s, dir)| match s {
            CacheStatus::Complete(m) if m.rows >= req.tokens || m.exhausted => {
                Some((dir.clone(), (**m).clone()))
            }
            _ => None,
        })
        .collect();
    if complete.len() == hooks.len() {
        tracing::info!("already complete");
        return Ok(ExtractOutcome::Complete(complete));
    }
    if req.resume && statuses.iter().all(|s| *s == CacheStatus::Absent) {
        return Err(Error::invalid(format!(
            "{}: no activation cache to resume (run without --resume to start one)",
            req.out.display()
        )));
    }

    // The model, the hooks, the contexts.
    let t_load = Instant::now();
    let model = inputs::load_model(&req.model, on)?;
    for h in &hooks {
        model.hook(h)?;
    }
    let (tok, pack) = inputs::packing(&model, &req.model, req.ctx_len)?;
    let plan = ContextPlan::new(&tok, &docs, pack, req.order)
        .map_err(|e| Error::invalid(format!("{}: {e}", req.corpus.display())))?;
    let last_layer = hooks
        .iter()
        .filter_map(|h| model.hook(h).ok())
        .map(|hp| hp.layer)
        .max()
        .unwrap_or(0);
    on(Event::Loaded(Loaded {
        model: &req.model,
        n_layers: model.n_layers(),
        d_model: model.d_model(),
        contexts: plan.len(),
        ctx_len: req.ctx_len,
        documents: docs.len(),
        secs: t_load.elapsed().as_secs_f64(),
    }));

    let job = ExtractJob {
        model: &model,
        plan: &plan,
        specs: hooks.iter().map(|h| spec(h)).collect(),
        dirs: dirs.clone(),
        opts: ExtractOptions {
            target_rows: req.tokens,
            batch_contexts: req.batch_contexts,
            shard_rows: req.shard_rows,
        },
    };
    let available = if req.keep_bos {
        plan.total_tokens()
    } else {
        plan.non_bos_tokens()
    };
    on(Event::Begin {
        phase: Phase::Extract,
        label: format!("extracting {}", hooks.join(", ")),
        total: Some(req.tokens.min(available)),
        done: 0,
    });
    let t0 = Instant::now();
    let result = cache::extract(&job, stop, |p| on(Event::Extract(p)));
    on(Event::End);
    let summary = result?;
    let secs = t0.elapsed().as_secs_f64();
    tracing::info!(
        rows = summary.progress.rows,
        shards = summary.progress.shards,
        model_tokens = summary.progress.model_tokens,
        secs,
        "extracted"
    );
    Ok(ExtractOutcome::Extracted(Extracted {
        hooks,
        dirs,
        summary,
        part: req.part,
        dtype: req.dtype,
        d_model: model.d_model(),
        last_layer,
        secs,
    }))
}
