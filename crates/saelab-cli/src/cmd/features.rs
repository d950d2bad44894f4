//! `saelab features`: the feature statistics pass (`saelab_jobs::features`): a model
//! forward to the SAE's hook (or the rows of a `saelab extract` cache, `--acts`), the
//! SAE's latents into a sparse latent cache (delphi's layout), then per-latent statistics, neighbours and logit tables in a features
//! folder (`docs/features.md`). Ctrl-C stops at the next batch; the same command
//! continues where the last complete shard part or latent range ends.

use std::path::{Path, PathBuf};

use anyhow::Result;
use saelab_jobs::extract::parse_part;
use saelab_jobs::features::{self, FeaturesInput, FeaturesOutcome, FeaturesRequest};

use crate::progress::Reporter;
use crate::STOP;

#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("input").required(true).args(["corpus", "acts"]))]
pub struct Args {
    /// SAE directory (any supported format), or a `saelab train` run directory.
    #[arg(long)]
    sae: PathBuf,
    /// Model: a GGUF file, or a Hugging Face LLaMA directory.
    #[arg(long)]
    model: PathBuf,
    /// Corpus to run the model over: a folder of .txt files, a text file, or a .jsonl file.
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Or an activation cache written by `saelab extract` from this model at the SAE's
    /// hook: its first contexts and their cached rows are read instead of running the
    /// model (its context order and length apply).
    #[arg(long, conflicts_with_all = ["jsonl_field", "part", "ctx_len"])]
    acts: Option<PathBuf>,
    /// JSONL field holding the text.
    #[arg(long)]
    jsonl_field: Option<String>,
    /// Which documents: train, heldout (every 20th document) or all.
    #[arg(long)]
    part: Option<String>,
    /// Tokens to read (BOS excluded; whole contexts).
    #[arg(long)]
    tokens: u64,
    /// The features folder (created; an incomplete one made with the same inputs is continued).
    #[arg(long)]
    out: PathBuf,
    /// Hook point (default: the SAE's hook from its cfg.json).
    #[arg(long)]
    hook: Option<String>,
    /// Tokens per context (default 128).
    #[arg(long)]
    ctx_len: Option<usize>,
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
    let input = match (a.corpus, a.acts) {
        (_, Some(cache)) => FeaturesInput::Cache(cache),
        (Some(corpus), None) => FeaturesInput::Corpus {
            corpus,
            jsonl_field: a.jsonl_field.unwrap_or_else(|| "text".into()),
            part: parse_part(a.part.as_deref().unwrap_or("train"))?,
            ctx_len: a.ctx_len.unwrap_or(128),
        },
        (None, None) => unreachable!("clap requires --corpus or --acts"),
    };
    let mut req = FeaturesRequest::with_input(a.sae, a.model, input, a.tokens, a.out.clone());
    req.hook = a.hook;
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
        // From the model, the SAE and the parts cost `secs_cache / secs_activations`
        // times the forward over the same tokens; from a cache there is no forward.
        let split = if o.from_cache {
            format!("cache reads {:.1} s", s.secs_activations)
        } else {
            format!(
                "forward {:.1} s, the SAE and the parts {:.1} s: {:.2}× the forward alone",
                s.secs_activations,
                s.secs_cache - s.secs_activations,
                s.secs_cache / s.secs_activations.max(1e-9)
            )
        };
        println!(
            "latent cache: {} shard parts in {:.1} s ({:.0} tokens/s; {split}); statistics: {} \
             latent ranges in {:.1} s",
            s.parts_written,
            s.secs_cache,
            s.tokens_encoded as f64 / s.secs_cache.max(1e-9),
            s.ranges_written,
            s.secs_stats
        );
    }
}
