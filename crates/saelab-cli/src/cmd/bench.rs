//! `saelab bench`: the training-step benchmark of BENCH.md (W1–W4) on synthetic data
//! held in memory; with `--model`, the language-model forward and splice benchmark
//! instead (`bench_model`). Prints a table, or the full report as JSON with `--json`.

use std::path::PathBuf;

use anyhow::Result;
use saelab_core::bench::{self, BenchConfig, WorkloadId};

#[derive(clap::Args)]
pub struct Args {
    /// Workloads to run (w1, w2, w3, w4), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "w1,w2,w3,w4")]
    workloads: Vec<String>,
    /// Threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Untimed warm-up steps of the dense reference.
    #[arg(long, default_value_t = 2)]
    reference_warmup: usize,
    /// Timed steps of the dense reference (0: skip it).
    #[arg(long, default_value_t = 5)]
    reference_steps: usize,
    /// Activation width d.
    #[arg(long, default_value_t = 576)]
    d: usize,
    /// Latents n.
    #[arg(long, default_value_t = 9216)]
    n: usize,
    /// Tokens per step.
    #[arg(long, default_value_t = 4096)]
    batch: usize,
    /// W1/W4: every this-many-th latent counts as dead, so that AuxK runs (0: off; 20,
    /// i.e. 5 %, is the stress setting of BENCHMARKS.md).
    #[arg(long, default_value_t = 100)]
    dead_every: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Benchmark this language model's forward (extraction rate) instead of W1–W4.
    #[arg(long, requires = "corpus")]
    model: Option<PathBuf>,
    /// Corpus whose held-out documents feed the model benchmark.
    #[arg(long, requires = "model")]
    corpus: Option<PathBuf>,
    /// With --model: also time the forward with this SAE spliced in (splice cost).
    #[arg(long, requires = "model")]
    sae: Option<PathBuf>,
    /// With --model: hook to capture / splice at (default: the SAE's hook, else
    /// blocks.15.hook_resid_post).
    #[arg(long, requires = "model")]
    hook: Option<String>,
    /// With --model: timed batches (one more runs untimed first).
    #[arg(long, default_value_t = 8)]
    batches: usize,
    /// With --model: contexts per batch.
    #[arg(long, default_value_t = 8)]
    contexts: usize,
    /// With --model: tokens per context.
    #[arg(long, default_value_t = 128)]
    ctx_len: usize,
}

pub fn run(a: Args) -> Result<()> {
    if let (Some(model), Some(corpus)) = (a.model, a.corpus) {
        let args = crate::cmd::bench_model::ModelBenchArgs {
            model,
            corpus,
            sae: a.sae,
            hook: a.hook,
            batches: a.batches,
            batch: a.contexts,
            ctx_len: a.ctx_len,
        };
        return crate::cmd::bench_model::run(args, a.json);
    }
    let workloads = a
        .workloads
        .iter()
        .map(|w| WorkloadId::parse(w))
        .collect::<saelab_core::Result<Vec<_>>>()?;
    let cfg = BenchConfig {
        workloads,
        d: a.d,
        n: a.n,
        batch: a.batch,
        threads: a.threads,
        warmup: a.warmup,
        steps: a.steps,
        reference_warmup: a.reference_warmup,
        reference_steps: a.reference_steps,
        dead_every: a.dead_every,
        ..BenchConfig::default()
    };
    let report = bench::run(&cfg, &mut |msg| eprintln!("bench: {msg}"))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", bench::format_table(&report));
    }
    Ok(())
}
