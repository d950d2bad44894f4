//! `saelab train`: train an SAE on activation files, or resume an interrupted run.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use anyhow::{bail, Context, Result};
use saelab_core::fit::{self, DataSpec, Event, Run};
use saelab_core::store::ActivationStore;
use saelab_core::train::Trainer;
use saelab_core::{Matrix, SaeConfig};

use crate::progress;
use crate::runfile;
use crate::STOP;

/// Rows sampled for the input scale and the `b_dec` initialisation.
const INIT_SAMPLE_ROWS: usize = 16_384;

#[derive(clap::Args)]
pub struct Args {
    /// TOML run file ([data], [sae], [train]); flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Activation files (.npy, .safetensors) or directories of them.
    #[arg(long, num_args = 1..)]
    acts: Vec<PathBuf>,
    /// Tensor name inside safetensors files.
    #[arg(long)]
    tensor: Option<String>,
    /// Architecture: relu, topk, batchtopk, jumprelu, gated.
    #[arg(long)]
    arch: Option<String>,
    /// Latents kept per token (topk, batchtopk).
    #[arg(long)]
    k: Option<usize>,
    /// Number of latents.
    #[arg(long, conflicts_with = "expansion")]
    d_sae: Option<usize>,
    /// Latents per input dimension (default 16).
    #[arg(long)]
    expansion: Option<usize>,
    /// Training tokens.
    #[arg(long)]
    tokens: Option<u64>,
    /// Tokens per step.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Learning rate.
    #[arg(long)]
    lr: Option<f32>,
    /// Random seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Evaluate on the validation split every N steps.
    #[arg(long)]
    eval_every: Option<u64>,
    /// Override any run-file value: --set train.lr=3e-4 --set sae.aux_k=512
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Run directory to create.
    #[arg(long, required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Continue the run in this directory from its last checkpoint.
    #[arg(long, conflicts_with_all = ["config", "acts", "arch", "k", "d_sae", "expansion", "tokens", "out"])]
    resume: Option<PathBuf>,
    /// Use the dense reference kernels (slow; for checking).
    #[arg(long)]
    reference_kernels: bool,
    /// Stop as if interrupted after this many steps (for testing resume).
    #[arg(long, hide = true)]
    stop_after: Option<u64>,
}

pub fn run(a: Args) -> Result<()> {
    let stop_after = a.stop_after;
    let (mut runs, store, sampler) = match &a.resume {
        Some(dir) => {
            let (run, data_state) = fit::resume_run(dir)?;
            let store = fit::read_data_spec(dir)?.open()?;
            eprintln!(
                "resuming {} at step {} of {}",
                dir.display(),
                run.trainer.step_count(),
                run.trainer.train_config().total_steps()
            );
            (vec![run], store, Some(data_state))
        }
        None => {
            let (trainer, data, store) = new_trainer(&a)?;
            let dir = a.out.clone().expect("clap requires --out");
            fit::create_run_dir(&dir, &data, &trainer)?;
            (vec![Run { trainer, dir }], store, None)
        }
    };
    let total = runs[0].trainer.train_config().total_steps();
    let start = runs[0].trainer.step_count();
    let pb = progress::bar(total, "steps");
    pb.set_position(start);
    let mut last_val = None;
    let result = fit::fit_store(&store, &mut runs, sampler.as_ref(), &STOP, |ev| match ev {
        Event::Step { report, .. } => {
            pb.set_position(report.step);
            if report.step % 10 == 0 || report.step == total {
                pb.set_message(format!(
                    "loss {:.4} L0 {:.1} FVU {:.4} dead {:.3}",
                    report.loss, report.l0, report.fvu, report.dead_frac
                ));
            }
            if stop_after.is_some_and(|s| report.step >= s) {
                STOP.store(true, Ordering::SeqCst);
            }
        }
        Event::Eval { metrics, step, .. } => {
            pb.println(format!(
                "step {step}: val FVU {:.4}, L0 {:.1}, dead {:.3}",
                metrics.fvu, metrics.l0, metrics.dead_frac
            ));
            last_val = Some(metrics.clone());
        }
        Event::Checkpoint { step } => pb.println(format!("checkpoint at step {step}")),
    });
    pb.finish_and_clear();
    let dir = &runs[0].dir;
    if let Err(saelab_core::Error::Interrupted) = result {
        return Err(
            anyhow::Error::new(saelab_core::Error::Interrupted).context(format!(
            "interrupted at step {}; checkpoint saved — continue with: saelab train --resume {}",
            runs[0].trainer.step_count(),
            dir.display()
        )),
        );
    }
    result?;
    if let Some(m) = last_val {
        println!("{}", crate::cmd::eval::table(&m, None));
    }
    println!("SAE written to {}", dir.join("sae").display());
    Ok(())
}

/// Builds a fresh trainer from the run file and flags, opening the data first so
/// that bad input fails before anything is written.
fn new_trainer(a: &Args) -> Result<(Trainer, DataSpec, ActivationStore)> {
    let mut t = runfile::load_table(a.config.as_deref())?;
    if !a.acts.is_empty() {
        let paths = a
            .acts
            .iter()
            .map(|p| toml::Value::String(p.display().to_string()));
        runfile::set(&mut t, "data.paths", toml::Value::Array(paths.collect()))?;
    }
    let mut put = |key: &str, v: Option<toml::Value>| match v {
        Some(v) => runfile::set(&mut t, key, v),
        None => Ok(()),
    };
    put("data.tensor", a.tensor.clone().map(toml::Value::String))?;
    put("sae.architecture", a.arch.clone().map(toml::Value::String))?;
    put("sae.k", a.k.map(|k| toml::Value::Integer(k as i64)))?;
    put("sae.d_sae", a.d_sae.map(|k| toml::Value::Integer(k as i64)))?;
    put(
        "sae.expansion_factor",
        a.expansion.map(|k| toml::Value::Integer(k as i64)),
    )?;
    put(
        "train.total_tokens",
        a.tokens.map(|k| toml::Value::Integer(k as i64)),
    )?;
    put(
        "train.batch_size",
        a.batch_size.map(|k| toml::Value::Integer(k as i64)),
    )?;
    put("train.lr", a.lr.map(|v| toml::Value::Float(v as f64)))?;
    put("train.seed", a.seed.map(|k| toml::Value::Integer(k as i64)))?;
    put(
        "train.eval_every",
        a.eval_every.map(|k| toml::Value::Integer(k as i64)),
    )?;
    if a.reference_kernels {
        put("train.reference_kernels", Some(toml::Value::Boolean(true)))?;
    }
    for kv in &a.set {
        runfile::apply_override(&mut t, kv)?;
    }
    let rf = runfile::parse(t)?;
    let store = rf.data.open()?;
    let d = store.d();
    let d_sae = match (rf.d_sae, rf.expansion_factor) {
        (Some(n), _) => n,
        (None, Some(e)) => e * d,
        (None, None) => 16 * d,
    };
    let sae_cfg = SaeConfig::new(rf.arch, d, d_sae);
    let sample = init_sample(&store, rf.train.val_fraction)?;
    let trainer = Trainer::new(rf.train, sae_cfg, &sample).context("cannot start training")?;
    Ok((trainer, rf.data, store))
}

/// Evenly spaced rows of the training range (never the validation rows).
fn init_sample(store: &ActivationStore, val_fraction: f64) -> Result<Matrix> {
    let split = saelab_core::store::Split::new(store.rows(), val_fraction)?;
    let n = split.train.len().min(INIT_SAMPLE_ROWS);
    if n == 0 {
        bail!("no training rows after holding out the validation split");
    }
    let step = split.train.len() as f64 / n as f64;
    let rows: Vec<usize> = (0..n)
        .map(|i| split.train.start + (i as f64 * step) as usize)
        .collect();
    let mut m = Matrix::zeros(n, store.d());
    store.read_rows(&rows, &mut m)?;
    Ok(m)
}
