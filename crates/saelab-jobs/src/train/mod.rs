//! The training job: one pass over stored activations (`store.rs`) or over activations
//! streamed from a model ([`stream`]) trains one SAE per member, each into its own run
//! directory of one [`RunSet`]; [`resume`] continues a set from its checkpoints.
//!
//! A [`TrainJob`] says what to train: where the rows come from ([`Source`]) and the
//! members ([`Member`]: architecture, width, training hyperparameters, and for a stream
//! the hook). [`TrainJob::from_run`] builds one from a run file and the multi-valued
//! choices of `saelab train` ([`Axes`]); [`crate::sweep`] builds one from a sweep file.
//! The trainer sees what the job holds: `Member` → [`SaeConfig`] + [`TrainConfig`] →
//! `Trainer::new`.

mod store;
pub mod stream;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use saelab_core::config::SaeMetadata;
use saelab_core::fit::{self, BatchSource, DataSpec, Event as FitEvent, Run, Validation};
use saelab_core::metrics::ReconMetrics;
use saelab_core::rundir::{RunDir, RunSet};
use saelab_core::train::{TrainConfig, Trainer};
use saelab_core::{ArchConfig, Matrix, SaeConfig};
use saelab_lm::stream::StreamSpec;
use serde::Serialize;

use crate::config::{Axes, RunConfig, SaeChoice};
use crate::error::{Context, Error, Result};
use crate::event::{Event, OnEvent};

pub use stream::StreamInput;

/// Rows sampled for the input scale and the `b_dec` initialisation.
pub const INIT_SAMPLE_ROWS: usize = 16_384;

/// Where a job's training rows come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// Shuffled rows of activation files (or a cache).
    Store(DataSpec),
    /// Activations computed by a model as training goes.
    Stream(StreamInput),
}

/// One SAE of a job.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    /// Its directory's name in a set of several runs; `None`: [`run_name`].
    pub name: Option<String>,
    /// The hook it reads (streaming only).
    pub hook: Option<String>,
    /// Architecture and width.
    pub sae: SaeChoice,
    /// Training hyperparameters.
    pub train: TrainConfig,
    /// Overrides of the SAE's `metadata.hook_name` (a sweep file's `hook`).
    pub hook_name: Option<String>,
    /// Overrides of the SAE's `metadata.model_name` (a sweep file's `model`).
    pub model_name: Option<String>,
}

/// What to train: the source and the members, into the run set at `out`.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainJob {
    /// Where the rows come from.
    pub source: Source,
    /// The SAEs, trained in one pass.
    pub members: Vec<Member>,
    /// The run set's directory: the run itself for one member, `out/<name>/` each for
    /// several.
    pub out: PathBuf,
}

/// What a finished training job did.
#[derive(Clone, Debug)]
pub struct TrainOutcome {
    /// The run set trained.
    pub set: RunSet,
    /// Each run's last validation metrics (`None`: no validation rows).
    pub last_val: Vec<Option<ReconMetrics>>,
    /// Tokens the model ran on (streaming only).
    pub model_tokens: Option<u64>,
}

/// `run.json["data"]`: what a run reads.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum RunData {
    /// Activation files.
    Store(DataSpec),
    /// A model stream, as `{"stream": …}` (one hook per run).
    Stream {
        /// The stream.
        stream: StreamSpec,
    },
}

impl RunData {
    /// Reads the `data` entry of the `run.json` at `path`.
    pub fn from_value(v: serde_json::Value, path: &Path) -> Result<RunData> {
        let bad = |msg: String| Error::from(saelab_core::Error::bad_file(path, msg));
        match v.get("stream") {
            Some(s) => Ok(RunData::Stream {
                stream: serde_json::from_value(s.clone())
                    .map_err(|e| bad(format!("invalid stream in run.json: {e}")))?,
            }),
            None => Ok(RunData::Store(
                serde_json::from_value(v)
                    .map_err(|e| bad(format!("no valid `data` entry: {e}")))?,
            )),
        }
    }

    /// The `run.json` data of the run directory `dir`.
    pub fn read(dir: &RunDir) -> Result<RunData> {
        let rec = dir.read_record::<serde_json::Value>()?;
        RunData::from_value(rec.data, &dir.run_file())
    }
}

impl TrainJob {
    /// A job from a run file and the multi-valued choices: one member per combination
    /// of `axes`, all with the file's `[train]`. With `stream`, rows are streamed from
    /// its model (the run file may not name `[data]`) and `axes.hooks` says where.
    pub fn from_run(
        cfg: RunConfig,
        axes: &Axes,
        stream: Option<StreamInput>,
        out: PathBuf,
    ) -> Result<TrainJob> {
        let source = match stream {
            Some(s) => {
                cfg.refuse_data()?;
                if axes.hooks.is_empty() {
                    return Err(Error::invalid(
                        "--model needs at least one --hook (e.g. --hook blocks.15.hook_resid_post)",
                    ));
                }
                Source::Stream(s)
            }
            None => Source::Store(cfg.require_data()?.clone()),
        };
        let mut axes = axes.clone();
        axes.hooks = crate::inputs::canonical_hooks(&axes.hooks);
        let members = axes
            .combos(&cfg.sae)
            .into_iter()
            .map(|c| {
                Ok(Member {
                    name: None,
                    hook: c.hook,
                    sae: c.sae.resolve()?,
                    train: cfg.train.clone(),
                    hook_name: None,
                    model_name: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(TrainJob {
            source,
            members,
            out,
        })
    }
}

/// A sweep member's directory name, e.g. `blocks.15.hook_resid_post-topk-k32-n9216`.
pub fn run_name(hook: Option<&str>, cfg: &SaeConfig) -> String {
    let mut parts: Vec<String> = hook.map(str::to_string).into_iter().collect();
    parts.push(cfg.arch.name().to_string());
    if let Some(k) = sparsity_part(&cfg.arch) {
        parts.push(k);
    }
    parts.push(format!("n{}", cfg.d_sae));
    parts.join("-")
}

/// The sparsity part of a run's directory name: `k32` for architectures with a `k`
/// (the value `--k` sets), none for those whose sparsity is a coefficient.
pub fn sparsity_part(arch: &ArchConfig) -> Option<String> {
    arch.knob("k").map(|k| format!("k{k}"))
}

/// Trains `job` to completion. Ctrl-C (`stop`) writes a checkpoint of every run and
/// returns an interrupted error; [`resume`] on `job.out` continues.
pub fn train(job: &TrainJob, stop: &AtomicBool, on: &mut OnEvent) -> Result<TrainOutcome> {
    if job.members.is_empty() {
        return Err(Error::invalid("nothing to train"));
    }
    let _span =
        tracing::info_span!("train", runs = job.members.len(), out = %job.out.display()).entered();
    match &job.source {
        Source::Store(data) => store::train(job, data, stop, on),
        Source::Stream(input) => stream::train(job, input, stop, on),
    }
}

/// Continues the run set in `dir` (one run, or a sweep's runs) from its checkpoints.
pub fn resume(dir: &Path, stop: &AtomicBool, on: &mut OnEvent) -> Result<TrainOutcome> {
    let _span = tracing::info_span!("resume", dir = %dir.display()).entered();
    let set = RunSet::open(dir)?;
    let mut runs = Vec::new();
    let mut states = Vec::new();
    let mut datas = Vec::new();
    for d in set.dirs() {
        let (run, state) = fit::resume_run(d.path())?;
        datas.push(RunData::read(d)?);
        states.push(state);
        runs.push(run);
    }
    if states.iter().any(|s| *s != states[0]) {
        return Err(Error::invalid(format!(
            "{}: the runs' checkpoints are at different data positions (interrupted while \
             checkpointing?); resume them one by one",
            dir.display()
        )));
    }
    on(Event::Resuming {
        dir,
        step: runs[0].trainer.step_count(),
        total: runs[0].trainer.train_config().total_steps(),
    });
    match &datas[0] {
        RunData::Stream { .. } => {
            let specs = datas
                .iter()
                .map(|d| match d {
                    RunData::Stream { stream } => Ok(stream.clone()),
                    RunData::Store(_) => Err(Error::invalid(format!(
                        "{}: the runs were not streamed from one pass over the model",
                        dir.display()
                    ))),
                })
                .collect::<Result<Vec<_>>>()?;
            stream::resume(&set, &specs, runs, &states[0], stop, on)
        }
        RunData::Store(data) => {
            if datas.iter().any(|d| d != &datas[0]) {
                return Err(Error::invalid(format!(
                    "{}: the runs read different data",
                    dir.display()
                )));
            }
            let store = data.open()?;
            store::train_runs(&store, &set, runs, Some(&states[0]), stop, on)
        }
    }
}

/// The metadata an SAE records, with a member's overrides.
fn member_metadata(m: &Member, mut base: SaeMetadata) -> SaeMetadata {
    if m.hook_name.is_some() {
        base.hook_name = m.hook_name.clone();
    }
    if m.model_name.is_some() {
        base.model_name = m.model_name.clone();
    }
    base
}

/// The SAE configuration of a member for inputs of width `d`.
fn sae_config(m: &Member, d: usize, metadata: SaeMetadata) -> SaeConfig {
    let mut cfg = SaeConfig::new(m.sae.arch.clone(), d, m.sae.width.latents(d));
    cfg.metadata = member_metadata(m, metadata);
    cfg
}

/// The member's trainer on its initialisation sample.
fn start_trainer(m: &Member, cfg: SaeConfig, sample: &Matrix) -> Result<Trainer> {
    Trainer::new(m.train.clone(), cfg, sample).context_with(|| match &m.name {
        Some(n) => format!("run {n}: cannot start training"),
        None => "cannot start training".to_string(),
    })
}

/// Names a member's run: its given name, else [`run_name`].
fn member_name(m: &Member, cfg: &SaeConfig) -> String {
    m.name
        .clone()
        .unwrap_or_else(|| run_name(m.hook.as_deref(), cfg))
}

/// The fit loop over `source` for `runs` of `set`, reporting events and collecting each
/// run's last validation.
fn fit_loop(
    source: &mut dyn BatchSource,
    vals: &[Option<&Validation>],
    runs: &mut [Run],
    stream_of: &[usize],
    set: &RunSet,
    stop: &AtomicBool,
    on: &mut OnEvent,
) -> Result<Vec<Option<ReconMetrics>>> {
    let total = runs[0].trainer.train_config().total_steps();
    let start = runs[0].trainer.step_count();
    tracing::info!(start, total, runs = runs.len(), "training");
    on(Event::TrainStart {
        names: set.names(),
        start,
        total,
    });
    let mut last_val: Vec<Option<ReconMetrics>> = vec![None; runs.len()];
    let result = fit::fit_streams(source, vals, runs, stream_of, stop, |ev| {
        if let FitEvent::Eval { run, metrics, .. } = &ev {
            last_val[*run] = Some((*metrics).clone());
        }
        on(Event::Fit(ev));
    });
    on(Event::End);
    result?;
    tracing::info!(step = runs[0].trainer.step_count(), "trained");
    Ok(last_val)
}
