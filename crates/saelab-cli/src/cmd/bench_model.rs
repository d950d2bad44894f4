//! `saelab bench --model`: forward throughput of the hooked language model (`docs/bench.md`,
//! "Activation extraction") and, with `--sae`, what splicing an SAE into it costs.
//!
//! Workloads, on the same batches of real held-out corpus text, interleaved batch by
//! batch so that machine noise hits them alike:
//! - `E1` capture the SAE hook's layer (default `blocks.15.hook_resid_post`; the forward
//!   stops after that block) — the extraction rate;
//! - `E2` capture the residual after the last block;
//! - `E3` all-position logits (the clean forward of an evaluation);
//! - `S1` (with `--sae`) all-position logits with the SAE reconstruction spliced in at
//!   the hook; its *splice cost* is the median per-batch ratio S1 / E3.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use saelab_core::bench::{cpu_seconds, median};
use saelab_core::format::load_sae;
use saelab_eval::contexts::corpus_contexts;
use saelab_eval::report::sae_dir;
use saelab_eval::splice::{reconstruction_patch, splice_mask};
use saelab_lm::model::{ForwardOptions, HookedModel, Logits};
use saelab_lm::text::Part;
use saelab_lm::tokenizer::Tokenizer;
use serde::Serialize;

use crate::progress;
use crate::STOP;

/// The flags of `saelab bench --model` (part of `saelab bench`'s arguments).
#[derive(clap::Args)]
pub struct ModelBenchArgs {
    /// Benchmark this language model's forward (extraction rate) instead of W1–W4.
    #[arg(long, requires = "corpus")]
    pub model: Option<PathBuf>,
    /// Corpus whose held-out documents feed the model benchmark.
    #[arg(long, requires = "model")]
    pub corpus: Option<PathBuf>,
    /// With --model: also time the forward with this SAE spliced in (splice cost).
    #[arg(long, requires = "model")]
    pub sae: Option<PathBuf>,
    /// With --model: hook to capture / splice at (default: the SAE's hook, else
    /// blocks.15.hook_resid_post).
    #[arg(long, requires = "model")]
    pub hook: Option<String>,
    /// With --model: timed batches (one more runs untimed first).
    #[arg(long, default_value_t = 8)]
    pub batches: usize,
    /// With --model: contexts per batch.
    #[arg(long, default_value_t = 8)]
    pub contexts: usize,
    /// With --model: tokens per context.
    #[arg(long, default_value_t = 128)]
    pub ctx_len: usize,
    /// With --model: benchmark generation (1 and 8 streams, with --sae also under an
    /// intervention) instead of the forward; --batches counts the rounds.
    #[arg(long, requires = "model")]
    pub generate: bool,
    /// With --generate: new tokens per stream.
    #[arg(long, default_value_t = 64)]
    pub new_tokens: usize,
    /// With --generate and --sae: the latent the intervention clamps.
    #[arg(long, default_value_t = 0)]
    pub latent: usize,
}

/// One workload's timing.
#[derive(Serialize)]
struct ModelWorkload {
    id: &'static str,
    what: String,
    /// Median seconds per batch.
    batch_s: f64,
    /// Tokens per second at the median.
    tokens_per_s: f64,
}

/// The report of `saelab bench --model`.
#[derive(Serialize)]
struct ModelReport {
    model: String,
    threads: usize,
    batch: usize,
    ctx_len: usize,
    timed_batches: usize,
    workloads: Vec<ModelWorkload>,
    /// Median per-batch ratio spliced / clean all-position forward (with `--sae`).
    splice_cost: Option<f64>,
    /// Process CPU seconds per wall second over the timed rounds (2.0: both cores ours).
    cpu_per_wall: Option<f64>,
}

/// Runs the model workloads on `model` with text from `corpus`; prints a table, or
/// JSON with `json`.
pub fn run(a: &ModelBenchArgs, model: &Path, corpus: &Path, json: bool) -> Result<()> {
    if a.batches == 0 || a.contexts == 0 || a.ctx_len < 2 {
        bail!("--batches and --contexts must be positive and --ctx-len at least 2");
    }
    let sae = match &a.sae {
        Some(p) => Some(load_sae(&sae_dir(p))?),
        None => None,
    };
    let hook = a
        .hook
        .clone()
        .or_else(|| sae.as_ref().and_then(|s| s.cfg.metadata.hook_name.clone()))
        .unwrap_or_else(|| "blocks.15.hook_resid_post".to_string());
    let lm = HookedModel::load(model)?;
    let tok = Tokenizer::from_path(model)?;
    // One untimed warm-up batch, then the timed ones.
    let n_ctx = a.contexts * (a.batches + 1);
    let contexts = corpus_contexts(&tok, corpus, Part::HeldOut, a.ctx_len, n_ctx)?;
    if contexts.len() < 2 * a.contexts {
        bail!(
            "{}: only {} held-out contexts of {} tokens; need at least {}",
            corpus.display(),
            contexts.len(),
            a.ctx_len,
            2 * a.contexts
        );
    }
    let last = format!("blocks.{}.hook_resid_post", lm.n_layers() - 1);
    let mut workloads: Vec<(&'static str, String, Vec<f64>)> = vec![
        ("E1", format!("capture {hook}"), Vec::new()),
        ("E2", format!("capture {last}"), Vec::new()),
        ("E3", "all-position logits".to_string(), Vec::new()),
    ];
    if sae.is_some() {
        workloads.push((
            "S1",
            format!("E3 with the SAE spliced at {hook}"),
            Vec::new(),
        ));
    }
    let mut ratios = Vec::new();
    let batches: Vec<&[Vec<u32>]> = contexts.chunks_exact(a.contexts).collect();
    let pb = progress::bar(batches.len() as u64, "batches");
    let (mut cpu0, mut wall0) = (None, Instant::now());
    for (i, b) in batches.iter().enumerate() {
        if i == 1 {
            (cpu0, wall0) = (cpu_seconds(), Instant::now());
        }
        let mut times = Vec::with_capacity(workloads.len());
        for opts in [
            ForwardOptions::new().capture(hook.clone()),
            ForwardOptions::new().capture(last.clone()),
            ForwardOptions::new().logits(Logits::All),
        ] {
            let t = Instant::now();
            std::hint::black_box(lm.forward(b, &opts)?);
            times.push(t.elapsed().as_secs_f64());
        }
        if let Some(sae) = &sae {
            let mask = splice_mask(b, tok.bos_id(), false);
            let record = RefCell::new(None);
            let opts = ForwardOptions::new()
                .patch(
                    hook.clone(),
                    reconstruction_patch(sae, Some(&mask), &record),
                )
                .logits(Logits::All);
            let t = Instant::now();
            std::hint::black_box(lm.forward(b, &opts)?);
            times.push(t.elapsed().as_secs_f64());
            if i > 0 {
                ratios.push(times[3] / times[2]);
            }
        }
        if i > 0 {
            for (w, t) in workloads.iter_mut().zip(times) {
                w.2.push(t);
            }
        }
        pb.inc(1);
        if STOP.load(std::sync::atomic::Ordering::SeqCst) {
            bail!("interrupted");
        }
    }
    pb.finish_and_clear();
    let cpu_per_wall = match (cpu0, cpu_seconds()) {
        (Some(c0), Some(c1)) => Some((c1 - c0) / wall0.elapsed().as_secs_f64()),
        _ => None,
    };
    let tokens = (a.contexts * a.ctx_len) as f64;
    let timed = batches.len() - 1;
    let report = ModelReport {
        model: model.display().to_string(),
        threads: rayon::current_num_threads(),
        batch: a.contexts,
        ctx_len: a.ctx_len,
        timed_batches: timed,
        workloads: workloads
            .into_iter()
            .map(|(id, what, mut t)| {
                let m = median(&mut t);
                ModelWorkload {
                    id,
                    what,
                    batch_s: m,
                    tokens_per_s: tokens / m,
                }
            })
            .collect(),
        splice_cost: (!ratios.is_empty()).then(|| median(&mut ratios)),
        cpu_per_wall,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{} — {timed} timed batches of {} × {} tokens, {} threads",
        report.model, a.contexts, a.ctx_len, report.threads
    );
    println!("| id | workload | batch (s) | tokens/s |");
    println!("|---|---|---:|---:|");
    for w in &report.workloads {
        println!(
            "| {} | {} | {:.3} | {:.0} |",
            w.id, w.what, w.batch_s, w.tokens_per_s
        );
    }
    if let Some(r) = report.splice_cost {
        println!("splice cost (S1 / E3, median per batch): {r:.3}");
    }
    if let Some(c) = report.cpu_per_wall {
        println!("CPU seconds per wall second: {c:.2}");
    }
    Ok(())
}
