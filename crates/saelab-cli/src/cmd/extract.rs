//! `saelab extract`: run a model over a corpus part and write an activation cache
//! (`saelab_jobs::extract`).
//!
//! One hook writes its cache into `--out`; several hooks, captured in the same
//! forwards, write `--out/<hook>/` each (see `saelab_lm::cache`). Running the same
//! command again continues an interrupted extraction where its complete shards end,
//! or says the cache is already complete (without loading the model); with a larger
//! `--tokens` it extends a complete cache.

use std::path::Path;
use std::path::PathBuf;

use anyhow::Result;
use saelab_jobs::extract::{self, parse_order, parse_part, ExtractOutcome, ExtractRequest};
use saelab_lm::cache::{self, CacheDType, DEFAULT_SHARD_ROWS};

use crate::progress::Reporter;
use crate::STOP;

#[derive(clap::Args)]
pub struct Args {
    /// Model: a GGUF file, or a Hugging Face LLaMA directory (config.json, *.safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// Hook point, e.g. blocks.15.hook_resid_post; several (captured in one pass) write one cache each under --out.
    #[arg(long = "hook", required = true, num_args = 1..)]
    hooks: Vec<String>,
    #[command(flatten)]
    text: super::CorpusArgs,
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

pub fn run(a: Args) -> Result<()> {
    let req = ExtractRequest {
        model: a.model.clone(),
        hooks: a.hooks.clone(),
        corpus: a.text.corpus.clone(),
        jsonl_field: a.text.jsonl_field.clone(),
        part: parse_part(&a.text.part)?,
        tokens: a.tokens,
        ctx_len: a.ctx_len,
        batch_contexts: a.batch,
        dtype: CacheDType::parse(&a.dtype)?,
        out: a.out.clone(),
        resume: a.resume,
        keep_bos: a.keep_bos,
        shard_rows: a.shard_rows,
        order: parse_order(&a.order, a.seed)?,
    };
    let mut rep = Reporter::new();
    rep.stop_after_contexts = a.stop_after_contexts;
    let result = extract::extract(&req, &STOP, &mut |e| rep.handle(e));
    let outcome = match result {
        Err(e) if e.is_interrupted() => {
            return Err(
                anyhow::Error::new(saelab_core::Error::Interrupted).context(format!(
                    "interrupted: {} has {} rows in {} complete shards; run the same command \
                     again to continue",
                    a.out.display(),
                    rep.extract.rows,
                    rep.extract.shards
                )),
            );
        }
        r => r?,
    };
    print_outcome(&outcome, &a.out, req.tokens);
    Ok(())
}

/// Prints what an extraction found or did (`out` as given, `tokens` asked for).
pub(crate) fn print_outcome(o: &ExtractOutcome, out: &Path, tokens: u64) {
    let x = match o {
        ExtractOutcome::Complete(caches) => {
            for (dir, m) in caches {
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
            return;
        }
        ExtractOutcome::Extracted(x) => x,
    };
    let p = x.summary.progress;
    if x.summary.already_complete {
        println!(
            "{}: already complete: {} rows in {} shards",
            out.display(),
            p.rows,
            p.shards
        );
        return;
    }
    for (h, dir) in x.hooks.iter().zip(&x.dirs) {
        println!(
            "{}: {} rows of {h} ({}, d = {}) in {} shards",
            dir.display(),
            p.rows,
            x.dtype.name(),
            x.d_model,
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
        x.secs,
        p.model_tokens as f64 / x.secs.max(1e-9),
        x.last_layer
    );
    if x.summary.exhausted {
        println!(
            "note: the {} part holds only {} rows; asked for {}",
            cache::part_name(x.part),
            p.rows,
            tokens
        );
    }
}
