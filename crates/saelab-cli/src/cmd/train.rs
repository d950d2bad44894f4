//! `saelab train`: train SAEs on activation files, or on activations streamed from a
//! model with no cache; resume an interrupted run (`saelab_jobs::train`).
//!
//! Several values of `--arch`, `--k`, `--d-sae` / `--expansion` and (when streaming)
//! `--hook` train one SAE per combination in a single pass over the data: every batch
//! is read (or computed by the model) once. One combination writes its run into
//! `--out`; several write `--out/<name>/` each plus `--out/sweep.json`, and
//! `--resume --out`-directory continues them all.
//!
//! A flag is a run-file key (`--lr` is `train.lr`): the run file, then the flags, then
//! `--set` overrides make one run table, read once into a `RunConfig`; the job builds
//! each SAE's configuration from it and the multi-valued flags.

use std::fmt::Display;
use std::path::{Path, PathBuf};

use anyhow::Result;
use saelab_core::train::TrainConfig;
use saelab_jobs::config::{toml_int, Axes, RunConfig, RunTable, DEFAULT_EXPANSION};
use saelab_jobs::train::stream::{StreamSettings, DEFAULT_VAL_TOKENS};
use saelab_jobs::train::{self, StreamInput, TrainJob, TrainOutcome};

use crate::progress::Reporter;
use crate::STOP;

/// `text [default: the run file's key, else value]`.
pub(crate) fn file_default(text: &str, key: &str, value: impl Display) -> String {
    format!("{text} [default: the run file's {key}, else {value}]")
}

/// `text [default: value]`.
pub(crate) fn default(text: &str, value: impl Display) -> String {
    format!("{text} [default: {value}]")
}

fn train_default() -> TrainConfig {
    TrainConfig::default()
}

fn stream_default() -> StreamSettings {
    StreamSettings::default()
}

#[derive(clap::Args)]
pub struct Args {
    /// TOML run file ([data], [sae], [train]); flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long, num_args = 1.., conflicts_with = "model", help = "Activation files (.npy, .safetensors) or directories of them (e.g. a `saelab extract` cache) [default: the run file's data.paths]")]
    acts: Vec<PathBuf>,
    #[arg(
        long,
        help = "Tensor name inside safetensors files [default: the run file's data.tensor, else `activations` or a file's only 2-D tensor]"
    )]
    tensor: Option<String>,
    /// Stream activations from this model (GGUF or Hugging Face directory) instead of files.
    #[arg(long, requires = "corpus")]
    model: Option<PathBuf>,
    /// Hook point(s) to stream, e.g. blocks.15.hook_resid_post (with --model).
    #[arg(long = "hook", num_args = 1.., requires = "model")]
    hooks: Vec<String>,
    /// Corpus to stream from: a folder of .txt files, a text file or .jsonl (with --model; the train part is used, the held-out part validates).
    #[arg(long, requires = "model")]
    corpus: Option<PathBuf>,
    #[arg(long, requires = "model", help = default("JSONL field holding the text (with --model)", stream_default().jsonl_field))]
    jsonl_field: Option<String>,
    #[arg(long, requires = "model", help = default("Tokens per context (with --model)", stream_default().ctx_len))]
    ctx_len: Option<usize>,
    #[arg(long, requires = "model", help = default("Contexts per model forward (with --model)", stream_default().batch_contexts))]
    batch_contexts: Option<usize>,
    #[arg(long, requires = "model", help = default("Contexts per shuffle window (with --model)", stream_default().window_contexts))]
    window_contexts: Option<usize>,
    #[arg(long, requires = "model", help = default("Held-out validation rows computed at the start (with --model)", DEFAULT_VAL_TOKENS))]
    val_tokens: Option<usize>,
    /// Train on BOS positions too (with --model).
    #[arg(long, requires = "model")]
    keep_bos: bool,
    #[arg(long, num_args = 1.., help = arch_help())]
    arch: Vec<String>,
    #[arg(long, num_args = 1.., help = k_help())]
    k: Vec<usize>,
    #[arg(long, num_args = 1.., conflicts_with = "expansion", help = "Number(s) of latents [default: the run file's sae.d_sae, else --expansion × d]")]
    d_sae: Vec<usize>,
    #[arg(long, num_args = 1.., help = file_default("Latents per input dimension; several values train several SAEs", "sae.expansion_factor", DEFAULT_EXPANSION))]
    expansion: Vec<usize>,
    #[arg(long, help = file_default("Training tokens", "train.total_tokens", train_default().total_tokens))]
    tokens: Option<u64>,
    #[arg(long, help = file_default("Tokens per step", "train.batch_size", train_default().batch_size))]
    batch_size: Option<usize>,
    #[arg(long, help = file_default("Learning rate", "train.lr", train_default().lr))]
    lr: Option<f32>,
    #[arg(long, help = file_default("Random seed", "train.seed", train_default().seed))]
    seed: Option<u64>,
    #[arg(long, help = file_default("Evaluate on the validation split every N steps (0: at the end only)", "train.eval_every", train_default().eval_every))]
    eval_every: Option<u64>,
    /// Override any run-file value: --set train.lr=3e-4 --set sae.aux_k=512
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Run directory to create (a sweep directory when several SAEs are trained).
    #[arg(long, required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Continue the run (or sweep) in this directory from its last checkpoint.
    #[arg(long, conflicts_with_all = ["config", "acts", "model", "arch", "k", "d_sae", "expansion", "tokens", "out"])]
    resume: Option<PathBuf>,
    /// Use the dense reference kernels (slow; for checking).
    #[arg(long)]
    reference_kernels: bool,
    /// Stop as if interrupted after this many steps (for testing resume).
    #[arg(long, hide = true)]
    stop_after: Option<u64>,
}

pub fn run(a: Args) -> Result<()> {
    let mut rep = Reporter::new();
    rep.stop_after_steps = a.stop_after;
    let (out, result) = match &a.resume {
        Some(dir) => (
            dir.clone(),
            train::resume(dir, &STOP, &mut |e| rep.handle(e)),
        ),
        None => {
            let job = job(&a)?;
            (
                job.out.clone(),
                train::train(&job, &STOP, &mut |e| rep.handle(e)),
            )
        }
    };
    let outcome = interrupted_context(result, &rep, &out)?;
    print_outcome(&outcome);
    Ok(())
}

/// The run table: the run file, the single-valued flags as their keys, then `--set`.
fn run_table(a: &Args) -> Result<RunTable> {
    let mut t = RunTable::load(a.config.as_deref())?;
    if !a.acts.is_empty() {
        let paths = a
            .acts
            .iter()
            .map(|p| toml::Value::String(p.display().to_string()));
        t.set("data.paths", toml::Value::Array(paths.collect()))?;
    }
    let flags = [
        ("data.tensor", a.tensor.clone().map(toml::Value::String)),
        ("train.total_tokens", a.tokens.map(toml_int)),
        ("train.batch_size", a.batch_size.map(toml_int)),
        ("train.lr", a.lr.map(|v| toml::Value::Float(v as f64))),
        ("train.seed", a.seed.map(toml_int)),
        ("train.eval_every", a.eval_every.map(toml_int)),
        (
            "train.reference_kernels",
            a.reference_kernels.then_some(toml::Value::Boolean(true)),
        ),
    ];
    for (key, value) in flags {
        if let Some(v) = value {
            t.set(key, v)?;
        }
    }
    t.apply_overrides(&a.set)?;
    Ok(t)
}

/// The training job the flags describe.
fn job(a: &Args) -> Result<TrainJob> {
    let cfg = RunConfig::parse(run_table(a)?)?;
    let axes = Axes {
        hooks: a.hooks.clone(),
        arch: a.arch.clone(),
        k: a.k.clone(),
        d_sae: a.d_sae.clone(),
        expansion: a.expansion.clone(),
    };
    let stream = a.model.clone().map(|model| {
        let d = StreamSettings::default();
        StreamInput {
            model,
            corpus: a
                .corpus
                .clone()
                .expect("clap requires --corpus with --model"),
            settings: StreamSettings {
                jsonl_field: a.jsonl_field.clone().unwrap_or(d.jsonl_field),
                ctx_len: a.ctx_len.unwrap_or(d.ctx_len),
                batch_contexts: a.batch_contexts.unwrap_or(d.batch_contexts),
                window_contexts: a.window_contexts.unwrap_or(d.window_contexts),
                val_rows: a.val_tokens.unwrap_or(d.val_rows),
                keep_bos: a.keep_bos,
            },
        }
    });
    let out = a.out.clone().expect("clap requires --out");
    Ok(TrainJob::from_run(cfg, &axes, stream, out)?)
}

/// A training job's result, with an interruption turned into the message that says how
/// to continue (`dir` is the run set's directory).
pub(crate) fn interrupted_context<T>(
    result: saelab_jobs::Result<T>,
    rep: &Reporter,
    dir: &Path,
) -> Result<T> {
    match result {
        Err(e) if e.is_interrupted() => Err(anyhow::Error::new(saelab_core::Error::Interrupted)
            .context(format!(
            "interrupted at step {}; checkpoint saved — continue with: saelab train --resume {}",
            rep.checkpoint.unwrap_or(0),
            dir.display()
        ))),
        r => Ok(r?),
    }
}

/// Prints what a finished training job did: the last validation (one run) or a table
/// of them (several), and where the SAEs are.
pub(crate) fn print_outcome(o: &TrainOutcome) {
    let names = o.set.names();
    if names.len() == 1 {
        if let Some(m) = &o.last_val[0] {
            println!("{}", crate::cmd::eval::table(m, None));
        }
        println!("SAE written to {}", o.set.dirs()[0].sae_dir().display());
    } else {
        let w = names.iter().map(String::len).max().unwrap_or(3).max(3);
        println!("{:<w$} {:>8} {:>8} {:>8}", "run", "L0", "FVU", "dead");
        for (name, m) in names.iter().zip(&o.last_val) {
            match m {
                Some(m) => println!(
                    "{name:<w$} {:>8.1} {:>8.4} {:>8.4}",
                    m.l0, m.fvu, m.dead_frac
                ),
                None => println!("{name:<w$} (no validation rows)"),
            }
        }
        println!("SAEs written to {}/<run>/sae", o.set.root().display());
    }
    if let Some(t) = o.model_tokens {
        println!("streamed {t} model tokens");
    }
}

/// `--arch`'s help: the trainable architectures of the registry.
fn arch_help() -> String {
    let (names, _) = saelab_core::ArchConfig::trainable_names();
    format!(
        "Architecture(s): {}; several values train several SAEs [default: the run file's \
         sae.architecture]",
        names.join(", ")
    )
}

/// `--k`'s help: the architectures that have a `k`.
fn k_help() -> String {
    let (_, with_k) = saelab_core::ArchConfig::trainable_names();
    format!(
        "Latents kept per token ({}); several values train several SAEs [default: the run \
         file's sae.k]",
        with_k.join(", ")
    )
}
