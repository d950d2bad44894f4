//! `saelab bench --model M --corpus C --generate [--sae S]`: generation throughput
//! (KV-cached, greedy) for one stream and for a batch of 8, without and with an
//! intervention on the SAE's latents, and the matrix–vector kernel the steps use
//! against the GEMM it replaces.
//!
//! Workloads, interleaved round by round so that machine noise hits them alike; the
//! prompts are the first 16 tokens of held-out corpus contexts:
//! - `G1` one stream, `G8` eight streams, no intervention;
//! - `G1c` / `G8c` (with `--sae`): the same with latent `--latent` clamped to twice its
//!   value at the prompt's last position, error kept, at every position (each step
//!   encodes the new rows with the SAE); the *intervention cost* is the median
//!   per-round ratio `G·c / G·`;
//! - `K1` / `K8` / `K16`: the unembedding product (`[n, 576] × [576, V]`) of one step,
//!   by the few-rows kernel and by the GEMM, for `n` = 1, 8 and 16 (median of 20 each;
//!   the one-token steps of a generation take the few-rows kernel).

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};
use saelab_core::bench::{cpu_seconds, median};
use saelab_core::format::load_sae;
use saelab_core::kernels::{gemm, Transpose};
use saelab_eval::contexts::corpus_contexts;
use saelab_eval::report::sae_dir;
use saelab_lm::generate::GenerateOptions;
use saelab_lm::model::{kernels, ForwardOptions, HookedModel};
use saelab_lm::text::Part;
use saelab_lm::tokenizer::Tokenizer;
use saelab_steer::{with_interventions, Edit, Intervention, Op, Positions, Prompts};
use serde::Serialize;

use crate::cmd::bench_model::ModelBenchArgs;
use crate::progress;
use crate::STOP;

/// Tokens of each prompt (BOS included).
const PROMPT_TOKENS: usize = 16;

#[derive(Serialize)]
struct GenWorkload {
    id: String,
    streams: usize,
    intervention: bool,
    /// Median seconds per round (all streams, all new tokens).
    round_s: f64,
    /// New tokens per second over all streams, at the median.
    tokens_per_s: f64,
}

#[derive(Serialize)]
struct KernelTiming {
    rows: usize,
    few_rows_s: f64,
    gemm_s: f64,
    /// `gemm_s / few_rows_s`.
    speedup: f64,
}

#[derive(Serialize)]
struct GenReport {
    model: String,
    threads: usize,
    new_tokens: usize,
    timed_rounds: usize,
    workloads: Vec<GenWorkload>,
    /// Median per-round ratio with / without the intervention, for 1 and 8 streams.
    intervention_cost: Vec<(usize, f64)>,
    kernels: Vec<KernelTiming>,
    cpu_per_wall: Option<f64>,
}

/// Runs the generation workloads; prints a table, or JSON with `json`.
pub fn run(a: &ModelBenchArgs, model: &Path, corpus: &Path, json: bool) -> Result<()> {
    if a.batches == 0 || a.new_tokens == 0 {
        bail!("--batches and --new-tokens must be positive");
    }
    let lm = HookedModel::load(model)?;
    let tok = Tokenizer::from_path(model)?;
    let contexts = corpus_contexts(&tok, corpus, Part::HeldOut, PROMPT_TOKENS, 8)?;
    if contexts.len() < 8 {
        bail!("{}: fewer than 8 held-out contexts", corpus.display());
    }
    if PROMPT_TOKENS + a.new_tokens > lm.context_length() {
        bail!("--new-tokens {} exceeds the model's context", a.new_tokens);
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
    let gen = GenerateOptions {
        max_new_tokens: a.new_tokens,
        stop_tokens: Some(Vec::new()),
        ..GenerateOptions::default()
    };
    // The clamp: latent `a.latent` to twice its value at the first prompt's last
    // position (or to 10 when it is inactive there).
    let set: Vec<Intervention<'_>> = match &sae {
        Some(s) => {
            let out = lm.forward(
                &[&contexts[0][..]],
                &ForwardOptions::new().capture(hook.clone()),
            )?;
            let x = out.capture(&hook)?;
            let last =
                saelab_core::Matrix::from_vec(1, x.width(), x.at(0, PROMPT_TOKENS - 1).to_vec())?;
            let a_now = s
                .encode_dense(&last)?
                .row(0)
                .get(a.latent)
                .copied()
                .unwrap_or(0.0);
            let v = if a_now > 0.0 { 2.0 * a_now } else { 10.0 };
            vec![Intervention::latents(
                s,
                hook.clone(),
                &[Edit {
                    latent: a.latent,
                    op: Op::Clamp(v),
                }],
                Positions::All,
            )?]
        }
        None => Vec::new(),
    };
    let one: Vec<&[u32]> = vec![&contexts[0][..]];
    let eight: Vec<&[u32]> = contexts.iter().take(8).map(|c| &c[..]).collect();
    let mut ids: Vec<(String, usize, bool)> =
        vec![("G1".into(), 1, false), ("G8".into(), 8, false)];
    if !set.is_empty() {
        ids.push(("G1c".into(), 1, true));
        ids.push(("G8c".into(), 8, true));
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); ids.len()];
    let pb = progress::bar(a.batches as u64 + 1, "rounds");
    let (mut cpu0, mut wall0) = (None, Instant::now());
    for round in 0..=a.batches {
        if round == 1 {
            (cpu0, wall0) = (cpu_seconds(), Instant::now());
        }
        for (k, (_, streams, with)) in ids.iter().enumerate() {
            let prompts = if *streams == 1 { &one } else { &eight };
            let pr = Prompts::new(prompts, lm.bos_token_id());
            let empty: [Intervention<'_>; 0] = [];
            let opts = with_interventions(
                ForwardOptions::new(),
                if *with { &set } else { &empty },
                &pr,
            );
            let t = Instant::now();
            std::hint::black_box(lm.generate(prompts, &gen, &opts)?);
            if round > 0 {
                times[k].push(t.elapsed().as_secs_f64());
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
    let mut cost = Vec::new();
    for (streams, plain, with) in [(1, 0, 2), (8, 1, 3)] {
        if with < times.len() {
            let mut r: Vec<f64> = times[with]
                .iter()
                .zip(&times[plain])
                .map(|(w, p)| w / p)
                .collect();
            cost.push((streams, median(&mut r)));
        }
    }
    let workloads = ids
        .iter()
        .zip(times.iter_mut())
        .map(|((id, streams, with), t)| {
            let m = median(t);
            GenWorkload {
                id: id.clone(),
                streams: *streams,
                intervention: *with,
                round_s: m,
                tokens_per_s: (streams * a.new_tokens) as f64 / m,
            }
        })
        .collect();
    let report = GenReport {
        model: model.display().to_string(),
        threads: rayon::current_num_threads(),
        new_tokens: a.new_tokens,
        timed_rounds: a.batches,
        workloads,
        intervention_cost: cost,
        kernels: [1, 8, 16]
            .into_iter()
            .map(|r| kernel_timing(&lm, r))
            .collect(),
        cpu_per_wall,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{} — {} timed rounds of {} new tokens (prompts of {PROMPT_TOKENS}), {} threads",
        report.model, report.timed_rounds, report.new_tokens, report.threads
    );
    println!("| id | streams | intervention | round (s) | new tokens/s |");
    println!("|---|---:|---|---:|---:|");
    for w in &report.workloads {
        println!(
            "| {} | {} | {} | {:.3} | {:.1} |",
            w.id,
            w.streams,
            if w.intervention {
                "clamp, error kept"
            } else {
                "none"
            },
            w.round_s,
            w.tokens_per_s
        );
    }
    for (s, c) in &report.intervention_cost {
        println!("intervention cost, {s} stream(s) (median per-round ratio): {c:.3}");
    }
    for k in &report.kernels {
        println!(
            "unembedding product, {} row(s): few-rows kernel {:.2} ms, GEMM {:.2} ms ({:.2}×)",
            k.rows,
            k.few_rows_s * 1e3,
            k.gemm_s * 1e3,
            k.speedup
        );
    }
    if let Some(c) = report.cpu_per_wall {
        println!("CPU seconds per wall second: {c:.2}");
    }
    Ok(())
}

/// The unembedding product of one step for `rows` rows, by both kernels (interleaved,
/// median of 20 each).
fn kernel_timing(lm: &HookedModel, rows: usize) -> KernelTiming {
    let (d, v) = (lm.d_model(), lm.vocab_size());
    let w = lm.unembedding();
    let x: Vec<f32> = (0..rows * d)
        .map(|i| ((i % 97) as f32 - 48.0) / 50.0)
        .collect();
    let mut y = vec![0f32; rows * v];
    let (mut few, mut full) = (Vec::new(), Vec::new());
    for _ in 0..21 {
        let t = Instant::now();
        kernels::linear_few_rows(&x, rows, w, d, v, &mut y);
        few.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        gemm(
            rows,
            d,
            v,
            1.0,
            &x,
            Transpose::No,
            w,
            Transpose::Yes,
            0.0,
            &mut y,
        );
        full.push(t.elapsed().as_secs_f64());
        std::hint::black_box(&y);
    }
    few.remove(0);
    full.remove(0);
    let (f, g) = (median(&mut few), median(&mut full));
    KernelTiming {
        rows,
        few_rows_s: f,
        gemm_s: g,
        speedup: g / f,
    }
}
