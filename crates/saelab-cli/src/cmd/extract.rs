//! `saelab extract`: run a model over a corpus part and write an activation cache.
//!
//! One hook writes its cache into `--out`; several hooks, captured in the same
//! forwards, write `--out/<hook>/` each (see `saelab_lm::cache`). Running the same
//! command again continues an interrupted extraction where its complete shards end,
//! or says the cache is already complete (without loading the model); with a larger
//! `--tokens` it extends a complete cache.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{bail, Result};
use saelab_lm::cache::{
    self, cache_status, hook_dirs, CacheDType, CacheSpec, CacheStatus, ExtractJob, ExtractOptions,
    DEFAULT_SHARD_ROWS,
};
use saelab_lm::contexts::{
    documents_fingerprint, model_fingerprint, tokenizer_for_model, ContextOrder, ContextPlan,
};
use saelab_lm::model::{HookPoint, HookedModel};
use saelab_lm::text::{Corpus, Document, HeldOut, LoadOptions, PackConfig, Part};

use crate::progress;
use crate::STOP;

#[derive(clap::Args)]
pub struct Args {
    /// Model: a GGUF file, or a Hugging Face LLaMA directory (config.json, *.safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// Hook point, e.g. blocks.15.hook_resid_post; several (captured in one pass) write one cache each under --out.
    #[arg(long = "hook", required = true, num_args = 1..)]
    hooks: Vec<String>,
    /// Corpus: a folder of .txt files, a text file, or a .jsonl file.
    #[arg(long)]
    corpus: PathBuf,
    /// JSONL field holding the text.
    #[arg(long, default_value = "text")]
    jsonl_field: String,
    /// Which documents: train, heldout (every 20th document) or all.
    #[arg(long, default_value = "train")]
    part: String,
    /// Activation rows to store (tokens, BOS excluded).
    #[arg(long)]
    tokens: u64,
    /// Tokens per context.
    #[arg(long, default_value_t = 128)]
    ctx_len: usize,
    /// Contexts per forward.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Stored dtype: f32 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Cache directory (created; an incomplete cache there is continued).
    #[arg(long)]
    out: PathBuf,
    /// Only continue an existing cache (fail if --out holds none).
    #[arg(long)]
    resume: bool,
    /// Also store BOS positions (excluded by default: their norms are huge).
    #[arg(long)]
    keep_bos: bool,
    /// Rows per shard (a shard closes at the first batch boundary past this).
    #[arg(long, default_value_t = DEFAULT_SHARD_ROWS)]
    shard_rows: usize,
    /// Context order: shuffled (a uniform sample of the part) or corpus.
    #[arg(long, default_value = "shuffled")]
    order: String,
    /// Seed of the shuffled order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop as if interrupted after this many contexts (for testing resume).
    #[arg(long, hide = true)]
    stop_after_contexts: Option<u64>,
}

fn parse_part(s: &str) -> Result<Part> {
    Ok(match s {
        "train" => Part::Train,
        "heldout" | "held-out" | "held_out" => Part::HeldOut,
        "all" => Part::All,
        _ => bail!("--part {s}: expected train, heldout or all"),
    })
}

fn parse_order(s: &str, seed: u64) -> Result<ContextOrder> {
    Ok(match s {
        "shuffled" => ContextOrder::Shuffled { seed },
        "corpus" => ContextOrder::Corpus,
        _ => bail!("--order {s}: expected shuffled or corpus"),
    })
}

/// The documents of `part`, or an error saying the part is empty.
pub fn part_documents<'c>(
    corpus: &'c Corpus,
    path: &std::path::Path,
    part: Part,
) -> Result<Vec<&'c Document>> {
    let held_out = HeldOut::default();
    let docs = corpus.part(part, held_out);
    if docs.is_empty() {
        bail!(
            "{}: the {} part is empty: the corpus has {} documents and document ids with \
             id % {} == {} are held out",
            path.display(),
            cache::part_name(part),
            corpus.len(),
            held_out.every(),
            held_out.offset()
        );
    }
    Ok(docs)
}

/// The canonical name of a syntactically valid hook name (the layer is checked once
/// the model is loaded).
fn canonical(h: &str) -> String {
    HookPoint::parse(h)
        .map(|hp| hp.name())
        .unwrap_or_else(|_| h.to_string())
}

pub fn run(a: Args) -> Result<()> {
    let part = parse_part(&a.part)?;
    let dtype = CacheDType::parse(&a.dtype)?;
    let order = parse_order(&a.order, a.seed)?;
    if a.tokens == 0 {
        bail!("--tokens must be positive");
    }
    if a.batch == 0 || a.shard_rows == 0 {
        bail!("--batch and --shard-rows must be positive");
    }
    let mut hooks: Vec<String> = Vec::new();
    for h in a.hooks.iter().map(|h| canonical(h)) {
        if !hooks.contains(&h) {
            hooks.push(h);
        }
    }

    // Cheap checks first: the corpus, the model file, what --out holds.
    let opts = LoadOptions {
        jsonl_field: a.jsonl_field.clone(),
        ..LoadOptions::default()
    };
    let corpus = Corpus::load(&a.corpus, &opts)?;
    let docs = part_documents(&corpus, &a.corpus, part)?;
    let model_fp = model_fingerprint(&a.model)?;
    let spec = |hook: &str| CacheSpec {
        hook: hook.to_string(),
        dtype,
        keep_bos: a.keep_bos,
        ctx_len: a.ctx_len,
        model_path: a.model.clone(),
        model_fingerprint: model_fp.clone(),
        corpus_path: a.corpus.clone(),
        corpus_fingerprint: documents_fingerprint(&docs),
        documents: docs.len(),
        part,
        held_out: HeldOut::default(),
        order,
    };
    let dirs = hook_dirs(&a.out, &hooks);
    let mut statuses = Vec::new();
    for (h, dir) in hooks.iter().zip(&dirs) {
        statuses.push(cache_status(dir, &spec(h))?);
    }
    let complete: Vec<_> = statuses
        .iter()
        .filter_map(|s| match s {
            CacheStatus::Complete(m) if m.rows >= a.tokens || m.exhausted => Some(m),
            _ => None,
        })
        .collect();
    if complete.len() == hooks.len() {
        for (m, dir) in complete.iter().zip(&dirs) {
            println!(
                "{}: already complete: {} rows of {} ({}, d = {}) in {} shards{}",
                dir.display(),
                m.rows,
                m.hook,
                m.dtype.name(),
                m.d,
                m.shards.len(),
                if m.exhausted {
                    " (the whole corpus part)"
                } else {
                    ""
                }
            );
        }
        return Ok(());
    }
    if a.resume && statuses.iter().all(|s| *s == CacheStatus::Absent) {
        bail!(
            "{}: no activation cache to resume (run without --resume to start one)",
            a.out.display()
        );
    }

    // The model, the hooks, the contexts.
    let t_load = Instant::now();
    let model = HookedModel::load(&a.model)?;
    for h in &hooks {
        model.hook(h)?;
    }
    if a.ctx_len < 2 || a.ctx_len > model.context_length() {
        bail!(
            "--ctx-len {} must be between 2 and the model's context length {}",
            a.ctx_len,
            model.context_length()
        );
    }
    let tok = tokenizer_for_model(&a.model)?;
    let bos = tok.bos_id().or(model.bos_token_id()).ok_or_else(|| {
        anyhow::anyhow!(
            "{}: names no BOS token; saelab starts every context with BOS",
            a.model.display()
        )
    })?;
    let plan = ContextPlan::new(&tok, &docs, PackConfig::new(a.ctx_len, bos), order)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.corpus.display()))?;
    let last_layer = hooks
        .iter()
        .filter_map(|h| model.hook(h).ok())
        .map(|hp| hp.layer)
        .max()
        .unwrap_or(0);
    println!(
        "loaded {} ({} blocks, d = {}) and packed {} contexts of {} tokens from {} documents \
         in {:.1} s",
        a.model.display(),
        model.n_layers(),
        model.d_model(),
        plan.len(),
        a.ctx_len,
        docs.len(),
        t_load.elapsed().as_secs_f64()
    );

    let job = ExtractJob {
        model: &model,
        plan: &plan,
        specs: hooks.iter().map(|h| spec(h)).collect(),
        dirs: dirs.clone(),
        opts: ExtractOptions {
            target_rows: a.tokens,
            batch_contexts: a.batch,
            shard_rows: a.shard_rows,
        },
    };
    let available = if a.keep_bos {
        plan.total_tokens()
    } else {
        plan.non_bos_tokens()
    };
    let pb = progress::bar(a.tokens.min(available), "tokens");
    let t0 = Instant::now();
    let mut start_contexts = None;
    let mut last = cache::Progress::default();
    let result = cache::extract(&job, &STOP, |p| {
        let start = *start_contexts.get_or_insert_with(|| {
            pb.set_position(p.resumed_rows.min(pb.length().unwrap_or(u64::MAX)));
            pb.reset_eta();
            p.contexts
        });
        last = *p;
        pb.set_position(p.rows.min(pb.length().unwrap_or(u64::MAX)));
        let secs = t0.elapsed().as_secs_f64().max(1e-9);
        pb.set_message(format!(
            "{:.0} model tok/s, {} shards",
            p.model_tokens as f64 / secs,
            p.shards
        ));
        if a.stop_after_contexts
            .is_some_and(|n| p.contexts.saturating_sub(start) >= n)
        {
            STOP.store(true, Ordering::SeqCst);
        }
    });
    pb.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    let summary = match result {
        Ok(s) => s,
        Err(saelab_lm::Error::Core(saelab_core::Error::Interrupted)) => {
            return Err(
                anyhow::Error::new(saelab_core::Error::Interrupted).context(format!(
                    "interrupted: {} has {} rows in {} complete shards; run the same command \
                     again to continue",
                    a.out.display(),
                    last.rows,
                    last.shards
                )),
            );
        }
        Err(e) => return Err(e.into()),
    };
    let p = summary.progress;
    if summary.already_complete {
        println!(
            "{}: already complete: {} rows in {} shards",
            a.out.display(),
            p.rows,
            p.shards
        );
        return Ok(());
    }
    for (h, dir) in hooks.iter().zip(&dirs) {
        println!(
            "{}: {} rows of {h} ({}, d = {}) in {} shards",
            dir.display(),
            p.rows,
            dtype.name(),
            model.d_model(),
            p.shards
        );
    }
    println!(
        "{} model tokens ({} rows this run{}) in {:.1} s: {:.0} tokens/s through block {}",
        p.model_tokens,
        p.rows - p.resumed_rows,
        if p.resumed_rows > 0 {
            format!(", resumed at {}", p.resumed_rows)
        } else {
            String::new()
        },
        secs,
        p.model_tokens as f64 / secs.max(1e-9),
        last_layer
    );
    if summary.exhausted {
        println!(
            "note: the {} part holds only {} rows; asked for {}",
            cache::part_name(part),
            p.rows,
            a.tokens
        );
    }
    Ok(())
}
