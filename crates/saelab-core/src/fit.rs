//! The training driver: reads shuffled batches from an [`ActivationStore`] and feeds
//! one or more [`Trainer`]s, writing logs, checkpoints and the final SAE of each run
//! into its own directory.
//!
//! A run directory holds
//! - `run.json` — what the run was asked to do (data files, configs);
//! - `metrics.jsonl` — one JSON object per logged step or evaluation;
//! - `checkpoint/` — the latest resumable state (SAELens files + `trainer_state.*`),
//!   replaced atomically;
//! - `sae/` — the final SAE in SAELens v6 layout, written atomically at the end.
//!
//! Several runs with the same batch size and seed share one pass over the data (a
//! sweep): every batch is read once and given to every trainer.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::evaluate::evaluate_store;
use crate::format::save_sae;
use crate::io;
use crate::metrics::ReconMetrics;
use crate::sae::Sae;
use crate::store::{ActivationStore, BatchSampler, SamplerState, Split};
use crate::tensor::Matrix;
use crate::train::{StepReport, Trainer};

/// The data a run reads, as recorded in `run.json` so that `--resume` can reopen it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataSpec {
    /// Activation files or directories.
    pub paths: Vec<PathBuf>,
    /// Tensor name inside safetensors files.
    pub tensor: Option<String>,
}

impl DataSpec {
    /// Opens the store this spec describes.
    pub fn open(&self) -> Result<ActivationStore> {
        ActivationStore::open(&self.paths, self.tensor.as_deref())
    }
}

/// One SAE being trained and where its outputs go.
pub struct Run {
    /// The trainer.
    pub trainer: Trainer,
    /// The run directory.
    pub dir: PathBuf,
}

/// What the driver reports to its caller (progress bars, logs).
pub enum Event<'a> {
    /// A run finished a step.
    Step {
        /// Index of the run.
        run: usize,
        /// The step's report.
        report: &'a StepReport,
    },
    /// A run was evaluated on the validation split.
    Eval {
        /// Index of the run.
        run: usize,
        /// Step at which it was evaluated.
        step: u64,
        /// The metrics.
        metrics: &'a ReconMetrics,
    },
    /// A checkpoint was written for every run at this step.
    Checkpoint {
        /// Step of the checkpoint.
        step: u64,
    },
}

/// Largest validation set evaluated during training (rows).
pub const MAX_VAL_ROWS: usize = 65_536;

/// Creates a fresh run directory: fails if it already holds a run, checks it is
/// writable, and records `run.json`.
pub fn create_run_dir(dir: &Path, data: &DataSpec, trainer: &Trainer) -> Result<()> {
    if dir.join("run.json").exists() {
        return Err(Error::bad_file(
            dir,
            "already holds a run; use --resume to continue it or choose another --out",
        ));
    }
    io::check_writable(dir)?;
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let record = serde_json::json!({
        "data": data,
        "train": trainer.train_config(),
        "sae": trainer.sae_config(),
    });
    io::write_file_atomic(
        &dir.join("run.json"),
        &serde_json::to_vec_pretty(&record).expect("serialisable"),
    )
}

/// Reads the data spec recorded in a run directory.
pub fn read_data_spec(dir: &Path) -> Result<DataSpec> {
    let path = dir.join("run.json");
    let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::bad_file(&path, format!("not valid JSON: {e}")))?;
    serde_json::from_value(v["data"].clone())
        .map_err(|e| Error::bad_file(&path, format!("no valid `data` entry: {e}")))
}

/// Restores a run from `dir/checkpoint`. Returns the run and the sampler state to
/// continue from. Metric lines logged after the checkpoint are dropped, so the log
/// matches the restored state.
pub fn resume_run(dir: &Path) -> Result<(Run, SamplerState)> {
    let ck = dir.join("checkpoint");
    if !ck.join("trainer_state.json").exists() {
        return Err(Error::bad_file(dir, "no checkpoint to resume from (checkpoint/trainer_state.json missing)"));
    }
    let (trainer, extra) = Trainer::read_state(&ck)?;
    let sampler: SamplerState = serde_json::from_value(extra["sampler"].clone())
        .map_err(|e| Error::bad_file(ck.join("trainer_state.json"), format!("no sampler state: {e}")))?;
    truncate_log(&dir.join("metrics.jsonl"), trainer.step_count())?;
    Ok((
        Run {
            trainer,
            dir: dir.to_path_buf(),
        },
        sampler,
    ))
}

/// Trains every run to completion (or until `stop` is set, after which a checkpoint is
/// written and [`Error::Interrupted`] returned). All runs must share the batch size,
/// seed, validation fraction and step count: they consume the same batches.
pub fn fit(
    store: &ActivationStore,
    runs: &mut [Run],
    sampler_state: Option<SamplerState>,
    stop: &AtomicBool,
    mut on_event: impl FnMut(Event),
) -> Result<()> {
    let Some(first) = runs.first() else {
        return Ok(());
    };
    let cfg = first.trainer.train_config().clone();
    for r in runs.iter() {
        let c = r.trainer.train_config();
        if c.batch_size != cfg.batch_size
            || c.seed != cfg.seed
            || c.val_fraction != cfg.val_fraction
            || c.total_tokens != cfg.total_tokens
            || r.trainer.step_count() != first.trainer.step_count()
        {
            return Err(Error::config(
                "runs trained in one pass must share batch_size, seed, val_fraction, total_tokens and position",
            ));
        }
        if r.trainer.sae_config().d_in != store.d() {
            return Err(Error::Shape(format!(
                "the activations have d = {}, the SAE expects d_in = {}",
                store.d(),
                r.trainer.sae_config().d_in
            )));
        }
    }
    let split = Split::new(store.rows(), cfg.val_fraction)?;
    if split.train.len() < cfg.batch_size {
        return Err(Error::config(format!(
            "only {} training rows, fewer than one batch of {}",
            split.train.len(),
            cfg.batch_size
        )));
    }
    let mut sampler = match sampler_state {
        Some(s) => BatchSampler::from_state(split.train.clone(), cfg.batch_size, s)?,
        None => BatchSampler::new(split.train.clone(), cfg.batch_size, cfg.seed)?,
    };
    let mut logs = runs
        .iter()
        .map(|r| {
            let p = r.dir.join("metrics.jsonl");
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .map_err(|e| Error::io(&p, e))
        })
        .collect::<Result<Vec<_>>>()?;
    let val_rows = split.val.start..split.val.end.min(split.val.start + MAX_VAL_ROWS);
    let total = cfg.total_steps();
    let mut batch = Matrix::zeros(cfg.batch_size, store.d());
    let mut rows = Vec::with_capacity(cfg.batch_size);
    let mut step = first.trainer.step_count();
    while step < total {
        if stop.load(Ordering::SeqCst) {
            checkpoint_all(runs, &sampler)?;
            on_event(Event::Checkpoint { step });
            return Err(Error::Interrupted);
        }
        sampler.next_batch_into(&mut rows);
        store.read_rows(&rows, &mut batch)?;
        for (i, run) in runs.iter_mut().enumerate() {
            let report = run.trainer.step(&batch)?;
            if report.step % cfg.log_every.max(1) == 0 || report.step == total {
                append_json(&mut logs[i], &run.dir, &step_record(&report))?;
            }
            on_event(Event::Step { run: i, report: &report });
        }
        step += 1;
        let eval_now = cfg.eval_every > 0 && step % cfg.eval_every == 0 && step < total;
        if eval_now && !val_rows.is_empty() {
            for (i, run) in runs.iter().enumerate() {
                let metrics = evaluate_trainer(&run.trainer, store, val_rows.clone())?.0;
                append_json(&mut logs[i], &run.dir, &eval_record(step, &metrics))?;
                on_event(Event::Eval { run: i, step, metrics: &metrics });
            }
        }
        if cfg.checkpoint_every > 0 && step % cfg.checkpoint_every == 0 && step < total {
            checkpoint_all(runs, &sampler)?;
            on_event(Event::Checkpoint { step });
        }
    }
    // Final: evaluate on the validation split (whole split, for the density), then write
    // the checkpoint and the SAE.
    for (i, run) in runs.iter().enumerate() {
        let eval_rows = if split.val.is_empty() { split.train.start..split.train.start.saturating_add(MAX_VAL_ROWS).min(split.train.end) } else { split.val.clone() };
        let (metrics, density) = evaluate_trainer(&run.trainer, store, eval_rows)?;
        append_json(&mut logs[i], &run.dir, &eval_record(step, &metrics))?;
        on_event(Event::Eval { run: i, step, metrics: &metrics });
        let sae = export_sae(&run.trainer)?;
        write_checkpoint(run, &sampler)?;
        save_sae(&sae, &run.dir.join("sae"), Some(&density))?;
    }
    Ok(())
}

/// The trainer's current SAE in file form.
pub fn export_sae(trainer: &Trainer) -> Result<Sae> {
    let (cfg, params) = trainer.export();
    Sae::new(cfg, params)
}

fn evaluate_trainer(
    trainer: &Trainer,
    store: &ActivationStore,
    rows: std::ops::Range<usize>,
) -> Result<(ReconMetrics, Vec<f32>)> {
    evaluate_store(&export_sae(trainer)?, store, rows, |_| {})
}

fn checkpoint_all(runs: &[Run], sampler: &BatchSampler) -> Result<()> {
    runs.iter().try_for_each(|r| write_checkpoint(r, sampler))
}

/// Writes `dir/checkpoint` atomically: the SAE so far (SAELens files) and the state.
fn write_checkpoint(run: &Run, sampler: &BatchSampler) -> Result<()> {
    let sae = export_sae(&run.trainer)?;
    let extra = serde_json::json!({ "sampler": sampler.state() });
    let ck = run.dir.join("checkpoint");
    io::write_dir_atomic(&ck, |tmp| {
        save_sae(&sae, tmp, None)?;
        run.trainer.write_state(tmp, extra)
    })
}

fn step_record(r: &StepReport) -> serde_json::Value {
    let mut v = serde_json::json!({
        "kind": "train",
        "step": r.step,
        "tokens": r.tokens,
        "lr": r.lr,
        "sparsity_scale": r.sparsity_scale,
        "loss": r.loss,
        "l0": r.l0,
        "fvu": r.fvu,
        "dead_frac": r.dead_frac,
    });
    for (name, value) in &r.terms {
        v[format!("loss_{name}")] = serde_json::json!(value);
    }
    if let Some(g) = r.grad_norm {
        v["grad_norm"] = serde_json::json!(g);
    }
    v
}

fn eval_record(step: u64, m: &ReconMetrics) -> serde_json::Value {
    let mut v = serde_json::to_value(m).expect("serialisable");
    v["kind"] = serde_json::json!("val");
    v["step"] = serde_json::json!(step);
    v
}

fn append_json(f: &mut fs::File, dir: &Path, v: &serde_json::Value) -> Result<()> {
    let mut line = serde_json::to_vec(v).expect("serialisable");
    line.push(b'\n');
    f.write_all(&line)
        .map_err(|e| Error::io(dir.join("metrics.jsonl"), e))
}

/// Keeps only log lines whose `step` is at most `step`.
fn truncate_log(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    io::write_file_atomic(path, kept.as_bytes())
}
