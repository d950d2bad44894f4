//! The training driver: reads shuffled batches from a [`BatchSource`] and feeds one
//! or more [`Trainer`]s, writing logs, checkpoints and the final SAE of each run into
//! its own run directory ([`crate::rundir`]: `run.json`, `metrics.jsonl`,
//! `checkpoint/`, `sae/`).
//!
//! Several runs with the same batch size and seed share one pass over the data (a
//! sweep): every batch is read once and given to every trainer. A source may yield
//! several *streams* from the same tokens (e.g. several hook points of one model
//! forward, [`BatchSource::next_batches`]); [`fit_streams`] then feeds each run the
//! stream it was assigned, and validates it on that stream's validation set.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::evaluate::evaluate_store;
use crate::format::{save_sae, save_sae_with};
use crate::metrics::ReconMetrics;
use crate::rundir::{
    record_value, CheckpointExtra, MetricsRecord, RunDir, RunRecord, StepRecord, ValRecord,
};
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
/// writable, and records `run.json` ([`RunRecord`]) with `data` describing what the run
/// reads (a [`DataSpec`], or a model stream).
pub fn create_run_dir<D: Serialize>(dir: &Path, data: &D, trainer: &Trainer) -> Result<()> {
    RunDir::new(dir).create(&RunRecord {
        data,
        sae: trainer.sae_config().clone(),
        train: trainer.train_config().clone(),
    })
}

/// Where training batches come from: shuffled rows of stored activations
/// ([`StoreSource`]), or activations streamed from a model (in `saelab-lm`).
pub trait BatchSource {
    /// Width of the rows.
    fn d(&self) -> usize;
    /// Fills `out` with the next training batch `[batch_size, d]` (raw activations).
    fn next_batch(&mut self, out: &mut Matrix) -> Result<()>;
    /// The position in the data, for checkpoints; restoring it must make the source
    /// yield exactly the batches it would have yielded next.
    fn state(&self) -> serde_json::Value;
    /// Number of streams: batches of different activations of the same tokens (e.g.
    /// several hook points of one forward). Default 1.
    fn streams(&self) -> usize {
        1
    }
    /// Fills `out[s]` with the next batch of stream `s` (`out.len() == streams()`),
    /// `[batch_size, d]` each, all for the same tokens in the same order. The default,
    /// for single-stream sources, is [`BatchSource::next_batch`] into `out[0]`.
    fn next_batches(&mut self, out: &mut [Matrix]) -> Result<()> {
        match out {
            [one] => self.next_batch(one),
            _ => Err(Error::config(format!(
                "{} output batches for a single-stream source",
                out.len()
            ))),
        }
    }
}

/// Shuffled batches from the training rows of an [`ActivationStore`].
pub struct StoreSource<'a> {
    store: &'a ActivationStore,
    sampler: BatchSampler,
    rows: Vec<usize>,
}

impl<'a> StoreSource<'a> {
    /// Batches of `batch_size` rows from `split.train`, shuffled with `seed`, or
    /// continuing from a saved `state` (see [`BatchSource::state`]).
    pub fn new(
        store: &'a ActivationStore,
        split: &Split,
        batch_size: usize,
        seed: u64,
        state: Option<&serde_json::Value>,
    ) -> Result<Self> {
        if split.train.len() < batch_size {
            return Err(Error::config(format!(
                "only {} training rows, fewer than one batch of {batch_size}",
                split.train.len()
            )));
        }
        let sampler = match state {
            Some(v) => {
                let s: SamplerState = serde_json::from_value(v.clone()).map_err(|e| {
                    Error::config(format!("invalid data position in checkpoint: {e}"))
                })?;
                BatchSampler::from_state(split.train.clone(), batch_size, s)?
            }
            None => BatchSampler::new(split.train.clone(), batch_size, seed)?,
        };
        Ok(StoreSource {
            store,
            sampler,
            rows: Vec::with_capacity(batch_size),
        })
    }
}

impl BatchSource for StoreSource<'_> {
    fn d(&self) -> usize {
        self.store.d()
    }

    fn next_batch(&mut self, out: &mut Matrix) -> Result<()> {
        self.sampler.next_batch_into(&mut self.rows);
        self.store.read_rows(&self.rows, out)
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(self.sampler.state()).expect("serialisable")
    }
}

/// Held-out activations evaluated during and after training.
pub struct Validation<'a> {
    /// The store holding them.
    pub store: &'a ActivationStore,
    /// The rows to evaluate.
    pub rows: std::ops::Range<usize>,
}

/// Restores a run from `dir/checkpoint`. Returns the run and the saved data position
/// (see [`BatchSource::state`]). Metric lines logged after the checkpoint are dropped,
/// so the log matches the restored state. A checkpoint left half-replaced by a crash is
/// first put back ([`crate::io::recover_dir`]).
pub fn resume_run(dir: &Path) -> Result<(Run, serde_json::Value)> {
    let rd = RunDir::new(dir);
    crate::io::recover_dir(&rd.checkpoint_dir())?;
    if !rd.has_checkpoint() {
        return Err(Error::bad_file(
            dir,
            "no checkpoint to resume from (checkpoint/trainer_state.json missing)",
        ));
    }
    let ck = rd.checkpoint_dir();
    let (trainer, extra) = Trainer::read_state(&ck)?;
    let extra: CheckpointExtra = serde_json::from_value(extra).map_err(|e| {
        Error::bad_file(
            ck.join("trainer_state.json"),
            format!("no data position: {e}"),
        )
    })?;
    rd.truncate_log(trainer.step_count())?;
    Ok((
        Run {
            trainer,
            dir: dir.to_path_buf(),
        },
        extra.data,
    ))
}

/// Trains every run to completion (or until `stop` is set, after which a checkpoint is
/// written and [`Error::Interrupted`] returned). All runs must share the batch size,
/// step count and position: they consume the same batches from `source`. Runs are
/// evaluated on `val` every `eval_every` steps (at most [`MAX_VAL_ROWS`] rows) and at
/// the end (all its rows, which also give the latent densities saved with the SAE).
pub fn fit(
    source: &mut dyn BatchSource,
    val: Option<&Validation>,
    runs: &mut [Run],
    stop: &AtomicBool,
    on_event: impl FnMut(Event),
) -> Result<()> {
    let stream_of = vec![0; runs.len()];
    fit_streams(source, &[val], runs, &stream_of, stop, on_event)
}

/// [`fit`] for a multi-stream source: run `i` is fed stream `stream_of[i]` and
/// validated on `vals[stream_of[i]]` (`vals.len() == source.streams()`). One batch per
/// stream is read per step, whether or not a run uses it.
pub fn fit_streams(
    source: &mut dyn BatchSource,
    vals: &[Option<&Validation>],
    runs: &mut [Run],
    stream_of: &[usize],
    stop: &AtomicBool,
    mut on_event: impl FnMut(Event),
) -> Result<()> {
    let Some(first) = runs.first() else {
        return Ok(());
    };
    let n_streams = source.streams();
    if vals.len() != n_streams
        || stream_of.len() != runs.len()
        || stream_of.iter().any(|&s| s >= n_streams)
    {
        return Err(Error::config(format!(
            "fit_streams: {} validation sets and stream assignments {:?} for a source of {} \
             streams and {} runs",
            vals.len(),
            stream_of,
            n_streams,
            runs.len()
        )));
    }
    let cfg = first.trainer.train_config().clone();
    for r in runs.iter() {
        let c = r.trainer.train_config();
        if c.batch_size != cfg.batch_size
            || c.total_tokens != cfg.total_tokens
            || r.trainer.step_count() != first.trainer.step_count()
        {
            return Err(Error::config(
                "runs trained in one pass must share batch_size, total_tokens and position",
            ));
        }
        if r.trainer.sae_config().d_in != source.d() {
            return Err(Error::Shape(format!(
                "the activations have d = {}, the SAE expects d_in = {}",
                source.d(),
                r.trainer.sae_config().d_in
            )));
        }
    }
    let mut logs = runs
        .iter()
        .map(|r| RunDir::new(&r.dir).open_log())
        .collect::<Result<Vec<_>>>()?;
    let total = cfg.total_steps();
    let mut batches = vec![Matrix::zeros(cfg.batch_size, source.d()); n_streams];
    let mut step = first.trainer.step_count();
    while step < total {
        if stop.load(Ordering::SeqCst) {
            checkpoint_all(runs, source)?;
            on_event(Event::Checkpoint { step });
            return Err(Error::Interrupted);
        }
        source.next_batches(&mut batches)?;
        for (i, run) in runs.iter_mut().enumerate() {
            let report = run.trainer.step(&batches[stream_of[i]])?;
            if report.step % cfg.log_every.max(1) == 0 || report.step == total {
                logs[i].append(&MetricsRecord::Train(StepRecord::from(&report)))?;
            }
            on_event(Event::Step {
                run: i,
                report: &report,
            });
        }
        step += 1;
        let eval_now = cfg.eval_every > 0 && step % cfg.eval_every == 0 && step < total;
        for (i, run) in runs.iter().enumerate() {
            if let Some(v) = vals[stream_of[i]].filter(|_| eval_now) {
                let rows = v.rows.start..v.rows.end.min(v.rows.start + MAX_VAL_ROWS);
                let metrics = evaluate_store(
                    &export_sae(&run.trainer)?,
                    v.store,
                    rows.clone(),
                    false,
                    |_| {},
                )?
                .0;
                logs[i].append(&val_record(step, &metrics))?;
                tracing::debug!(
                    run = i,
                    step,
                    fvu = metrics.fvu,
                    l0 = metrics.l0,
                    "validated"
                );
                on_event(Event::Eval {
                    run: i,
                    step,
                    metrics: &metrics,
                });
            }
        }
        if cfg.checkpoint_every > 0 && step % cfg.checkpoint_every == 0 && step < total {
            tracing::debug!(step, "checkpoint");
            checkpoint_all(runs, source)?;
            on_event(Event::Checkpoint { step });
        }
    }
    // The end: evaluate on the whole validation set (its firing fractions are saved
    // with the SAE), then write the final checkpoint and the SAE.
    for (i, run) in runs.iter().enumerate() {
        let sae = export_sae(&run.trainer)?;
        let firing = match vals[stream_of[i]] {
            Some(v) => {
                let (metrics, firing) =
                    evaluate_store(&sae, v.store, v.rows.clone(), false, |_| {})?;
                logs[i].append(&val_record(step, &metrics))?;
                on_event(Event::Eval {
                    run: i,
                    step,
                    metrics: &metrics,
                });
                Some(firing)
            }
            None => None,
        };
        write_checkpoint(run, source)?;
        save_sae(&sae, &RunDir::new(&run.dir).sae_dir(), firing.as_deref())?;
    }
    Ok(())
}

/// The trainer's current SAE in file form.
pub fn export_sae(trainer: &Trainer) -> Result<Sae> {
    let (cfg, params) = trainer.export();
    Sae::new(cfg, params)
}

fn checkpoint_all(runs: &[Run], source: &dyn BatchSource) -> Result<()> {
    runs.iter().try_for_each(|r| write_checkpoint(r, source))
}

/// Writes `dir/checkpoint` atomically: the SAE so far (SAELens files) and the state.
fn write_checkpoint(run: &Run, source: &dyn BatchSource) -> Result<()> {
    let sae = export_sae(&run.trainer)?;
    let extra = record_value(&CheckpointExtra {
        data: source.state(),
    });
    let ck = RunDir::new(&run.dir).checkpoint_dir();
    save_sae_with(&sae, &ck, None, |tmp| run.trainer.write_state(tmp, extra))
}

fn val_record(step: u64, m: &ReconMetrics) -> MetricsRecord {
    MetricsRecord::Val(ValRecord {
        step,
        metrics: m.clone(),
    })
}
