//! `saelab features`: the feature statistics pass (`saelab_jobs::features`): a model
//! forward to the SAE's hook, the SAE's latents into a sparse latent cache (delphi's
//! layout), then per-latent statistics, neighbours and logit tables in a features
//! folder (`docs/features.md`). Ctrl-C stops at the next batch; the same command
//! continues where the last complete shard part or latent range ends.

use std::path::{Path, PathBuf};

use anyhow::Result;
use saelab_jobs::extract::parse_part;
use saelab_jobs::features::{self, FeaturesOutcome, FeaturesRequest};

use crate::progress::Reporter;
use crate::STOP;

#[derive(clap::Args)]
pub struct Args {
    /// SAE directory (any supported format), or a `saelab train` run directory.
    #[arg(long)]
    sae: PathBuf,
    /// Model: a GGUF file, or a Hugging Face LLaMA directory.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    text: super::CorpusArgs,
    /// Tokens to read (BOS excluded; whole contexts).
    #[arg(long)]
    tokens: u64,
    /// The features folder (created; an incomplete one made with the same inputs is continued).
    #[arg(long)]
    out: PathBuf,
    /// Hook point (default: the SAE's hook from its cfg.json).
    #[arg(long)]
    hook: Option<String>,
    /// Tokens per context.
    #[arg(long, default_value_t = 128)]
    ctx_len: usize,
    /// Seed of the context order and of every sample drawn.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Contexts per forward.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Contexts per shard part (what a Ctrl-C or a kill can lose).
    #[arg(long, default_value_t = 64)]
    shard_contexts: usize,
    /// Most latents per range (per delphi file and stats file; Stage B's co-occurrence
    /// counts are this × the SAE's width).
    #[arg(long, default_value_t = 1024)]
    range: usize,
    /// Most active positions per range: Stage B's memory (about 60 bytes each),
    /// whatever the token count.
    #[arg(long, default_value_t = 1 << 20)]
    range_entries: u64,
}

pub fn run(a: Args) -> Result<()> {
    let mut req = FeaturesRequest::new(a.sae, a.model, a.text.corpus, a.tokens, a.out.clone());
    req.jsonl_field = a.text.jsonl_field;
    req.part = parse_part(&a.text.part)?;
    req.hook = a.hook;
    req.ctx_len = a.ctx_len;
    req.seed = a.seed;
    req.batch_contexts = a.batch;
    req.contexts_per_part = a.shard_contexts;
    req.range_size = a.range;
    req.range_entries = a.range_entries;
    let mut rep = Reporter::new();
    let result = features::features(&req, &STOP, &mut |e| rep.handle(e));
    drop(rep);
    let o = match result {
        Err(e) if e.is_interrupted() => {
            return Err(
                anyhow::Error::new(saelab_core::Error::Interrupted).context(format!(
                    "interrupted: {} keeps its complete shard parts and latent ranges; run \
                     the same command again to continue",
                    a.out.display()
                )),
            );
        }
        r => r?,
    };
    print_outcome(&o, &a.out);
    Ok(())
}

/// Prints what a features pass did (also a step of `saelab run`).
pub(crate) fn print_outcome(o: &FeaturesOutcome, out: &Path) {
    let s = &o.summary;
    let done = if s.already_complete {
        "already complete: "
    } else {
        ""
    };
    println!(
        "{}: {done}{} latents of {} over {} tokens in {} contexts",
        out.display(),
        o.n_latents,
        o.hook,
        s.positions,
        s.contexts
    );
    if !s.already_complete {
        println!(
            "latent cache: {} shard parts in {:.1} s ({:.0} tokens/s); statistics: {} latent \
             ranges in {:.1} s",
            s.parts_written,
            s.secs_cache,
            s.tokens_encoded as f64 / s.secs_cache.max(1e-9),
            s.ranges_written,
            s.secs_stats
        );
    }
}
