//! `saelab bench`: the training-step benchmark of `docs/bench.md` (W1–W4) on synthetic data
//! held in memory; with `--model`, the language-model forward and splice benchmark
//! instead (`bench_model`). Prints a table, or the full report as JSON with `--json`.

use anyhow::Result;
use saelab_core::bench::{self, BenchConfig, WorkloadId};

use crate::cmd::bench_model::ModelBenchArgs;

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
    #[command(flatten)]
    lm: ModelBenchArgs,
}

pub fn run(a: Args) -> Result<()> {
    if let (Some(model), Some(corpus)) = (&a.lm.model, &a.lm.corpus) {
        if a.lm.generate {
            return crate::cmd::bench_generate::run(&a.lm, model, corpus, a.json);
        }
        return crate::cmd::bench_model::run(&a.lm, model, corpus, a.json);
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
