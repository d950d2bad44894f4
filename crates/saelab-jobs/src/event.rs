//! What a running job reports to its caller. The CLI turns these into progress bars
//! and printed lines; a server could forward them to a browser. A job never prints.

use std::path::Path;

use saelab_core::fit;
use saelab_eval::InModelMetrics;
use saelab_lm::cache;

use crate::pipeline::StageOutcome;

/// A phase of a job, with a size counted in [`Phase::unit`]s (or a spinner when the
/// size is unknown). Phases are also the names of the jobs' `tracing` spans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Loading a model (size unknown).
    LoadModel,
    /// Extracting activations into a cache (rows).
    Extract,
    /// Computing held-out rows for validation while streaming (rows).
    Validation,
    /// Evaluating an SAE on activation rows (rows).
    Eval,
    /// Evaluating an SAE spliced into the model (contexts, two passes).
    InModel,
    /// The clean and ablated forwards an in-model evaluation set caches (size unknown).
    Baseline,
    /// The features pass's Stage A: model, SAE, latent cache (tokens).
    FeatureCache,
    /// The features pass's Stage B: per-latent statistics (latents).
    FeatureStats,
    /// A part of the steering study (runs: strengths, latents or forwards).
    SteerEval,
    /// Sampling and explaining latents (latents).
    Explain,
    /// Scoring explanations (latents).
    Score,
}

impl Phase {
    /// The unit its sizes count.
    pub fn unit(self) -> &'static str {
        match self {
            Phase::LoadModel | Phase::Baseline => "",
            Phase::Extract | Phase::Eval | Phase::FeatureCache => "tokens",
            Phase::FeatureStats | Phase::Explain | Phase::Score => "latents",
            Phase::Validation => "held-out tokens",
            Phase::InModel => "contexts",
            Phase::SteerEval => "runs",
        }
    }
}

/// What the model and corpus of an extraction came to, once loaded.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded<'a> {
    /// The model file or directory.
    pub model: &'a Path,
    /// Its blocks.
    pub n_layers: usize,
    /// Its residual width.
    pub d_model: usize,
    /// Contexts the corpus part packs into.
    pub contexts: usize,
    /// Tokens per context.
    pub ctx_len: usize,
    /// Documents of the part.
    pub documents: usize,
    /// Seconds spent loading and packing.
    pub secs: f64,
}

/// One report from a running job.
pub enum Event<'a> {
    /// A phase starts: `total` units (`None`: unknown, e.g. loading a model), of which
    /// `done` were done by an earlier, interrupted run; `label` says what it does.
    Begin {
        /// Which phase.
        phase: Phase,
        /// What it does, e.g. `loading data/model.gguf`.
        label: String,
        /// Its size in [`Phase::unit`]s, if known.
        total: Option<u64>,
        /// Units already done when it starts.
        done: u64,
    },
    /// `done` units of the current phase are done.
    Advance {
        /// Units done so far.
        done: u64,
    },
    /// The current phase ended.
    End,
    /// Something worth knowing that is not an error (an incomplete cache, no held-out
    /// text).
    Note(String),
    /// An extraction's model and contexts are ready.
    Loaded(Loaded<'a>),
    /// An extraction wrote a batch of rows.
    Extract(&'a cache::Progress),
    /// An in-model evaluation finished a batch of contexts.
    InModel(saelab_eval::Progress),
    /// An SAE's in-model evaluation was written to its run directory.
    Evaluated {
        /// The run's name.
        name: &'a str,
        /// Its metrics.
        metrics: &'a InModelMetrics,
    },
    /// A run set resumes from its checkpoints.
    Resuming {
        /// The set's directory.
        dir: &'a Path,
        /// The step it continues at.
        step: u64,
        /// Steps in the run.
        total: u64,
    },
    /// Training starts (or continues) at step `start` of `total`, one SAE per name.
    TrainStart {
        /// The runs' names, in the order of [`fit::Event`]'s run indices.
        names: &'a [String],
        /// First step of this session.
        start: u64,
        /// Steps in the run.
        total: u64,
    },
    /// A training step, validation or checkpoint.
    Fit(fit::Event<'a>),
    /// A step of the main pipeline starts: number `n` of `of`.
    Stage {
        /// 1-based.
        n: usize,
        /// Steps in the pipeline.
        of: usize,
        /// What the step does.
        title: String,
    },
    /// A step of the main pipeline finished.
    StageDone(StageOutcome<'a>),
    /// A step of the main pipeline found its output complete and did nothing.
    Skipped(String),
}

/// The callback a job reports through.
pub type OnEvent<'f> = dyn FnMut(Event<'_>) + 'f;
