//! The evaluation jobs: an SAE on activation files ([`evaluate_files`]: reconstruction
//! and sparsity metrics, optionally the least-squares refit and dictionary recovery),
//! spliced into a model on held-out text ([`evaluate_in_model`]: CE loss score, ΔCE,
//! KL), and the runs of a report that lack an in-model evaluation
//! ([`evaluate_runs_in_model`], one shared set of contexts).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use saelab_core::evaluate::evaluate_store;
use saelab_core::format::load_sae;
use saelab_core::metrics::{dictionary_recovery, ReconMetrics, RecoveryMetrics};
use saelab_core::rundir::{write_json, RunDir};
use saelab_core::store::ActivationStore;
use saelab_core::{Matrix, Sae};
use saelab_eval::contexts::corpus_contexts;
use saelab_eval::report::{read_run, sae_dir, RunSummary};
use saelab_eval::{evaluate_in_model_with, InModelEvalSet, InModelMetrics, InModelOptions};
use saelab_lm::model::HookedModel;
use saelab_lm::text::Part;
use saelab_lm::tokenizer::Tokenizer;

use crate::error::{Context, Error, Result};
use crate::event::{Event, OnEvent, Phase};
use crate::inputs;

/// Default context length of in-model evaluations.
pub const DEFAULT_CTX_LEN: usize = 128;
/// Default held-out tokens of `saelab eval --model`.
pub const DEFAULT_INMODEL_TOKENS: usize = 16_384;
/// Default held-out tokens of `saelab report --model`.
pub const DEFAULT_REPORT_TOKENS: usize = 8192;

/// An evaluation on activation files.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FileEvalRequest {
    /// The SAE (any supported format) or a run directory holding one.
    pub sae: PathBuf,
    /// Activation files or directories of them.
    pub acts: Vec<PathBuf>,
    /// Tensor name inside safetensors files.
    pub tensor: Option<String>,
    /// Evaluate only the first rows.
    pub rows: Option<usize>,
    /// Also compute `fvu_refit`.
    pub refit: bool,
    /// A true dictionary `[F, d]` (synthetic data): also dictionary recovery.
    pub dictionary: Option<PathBuf>,
}

/// What [`evaluate_files`] measured.
#[derive(Clone, Debug, PartialEq)]
pub struct FileEval {
    /// The SAE directory evaluated.
    pub sae_dir: PathBuf,
    /// The metrics.
    pub metrics: ReconMetrics,
    /// Dictionary recovery, when a dictionary was given.
    pub recovery: Option<RecoveryMetrics>,
}

/// Evaluates an SAE on activation files.
pub fn evaluate_files(req: &FileEvalRequest, on: &mut OnEvent) -> Result<FileEval> {
    let dir = sae_dir(&req.sae);
    let _span = tracing::info_span!("eval", sae = %dir.display()).entered();
    let sae = load_sae(&dir)?;
    let store = ActivationStore::open(&req.acts, req.tensor.as_deref())?;
    if store.d() != sae.cfg.d_in {
        return Err(Error::invalid(format!(
            "{}: activations have d = {}, the SAE at {} expects d_in = {}",
            req.acts[0].display(),
            store.d(),
            dir.display(),
            sae.cfg.d_in
        )));
    }
    if req.refit {
        sae.check_refit()
            .context_with(|| format!("{}: --refit", dir.display()))?;
    }
    let rows = req.rows.unwrap_or(store.rows()).min(store.rows());
    on(Event::Begin {
        phase: Phase::Eval,
        label: format!("evaluating {}", dir.display()),
        total: Some(rows as u64),
        done: 0,
    });
    let result = evaluate_store(&sae, &store, 0..rows, req.refit, |done| {
        on(Event::Advance { done: done as u64 })
    });
    on(Event::End);
    let (metrics, _) = result?;
    let recovery = match &req.dictionary {
        Some(p) => Some(recovery(&sae, p)?),
        None => None,
    };
    tracing::info!(
        fvu = metrics.fvu,
        l0 = metrics.l0,
        tokens = metrics.tokens,
        "evaluated"
    );
    Ok(FileEval {
        sae_dir: dir,
        metrics,
        recovery,
    })
}

/// Dictionary recovery of `sae`'s decoder against the dictionary in `path`.
fn recovery(sae: &Sae, path: &Path) -> Result<RecoveryMetrics> {
    let store = ActivationStore::open(&[path.to_path_buf()], None)?;
    let dict = store.read_range(0, store.rows())?;
    let w_dec = sae.param("W_dec")?;
    let w = Matrix::from_vec(w_dec.shape[0], w_dec.shape[1], w_dec.data.clone())?;
    if dict.cols != w.cols {
        return Err(Error::invalid(format!(
            "{}: dictionary has width {}, the SAE decoder {}",
            path.display(),
            dict.cols,
            w.cols
        )));
    }
    Ok(dictionary_recovery(&dict, &w))
}

/// An evaluation with the SAE spliced into a model.
#[derive(Clone, Debug, PartialEq)]
pub struct InModelRequest {
    /// The SAE (any supported format) or a run directory holding one.
    pub sae: PathBuf,
    /// The model (GGUF file or Hugging Face directory).
    pub model: PathBuf,
    /// The corpus; its held-out documents (every 20th) are evaluated on.
    pub corpus: PathBuf,
    /// Hook point to splice at (default: the SAE's `metadata.hook_name`).
    pub hook: Option<String>,
    /// Tokens to evaluate on (rounded up to whole contexts).
    pub tokens: usize,
    /// Tokens per context (default: the SAE's `metadata.context_size` if at most 1024,
    /// else [`DEFAULT_CTX_LEN`]).
    pub ctx_len: Option<usize>,
    /// Contexts per forward (default: about 1024 tokens per batch).
    pub batch_size: Option<usize>,
    /// Splice at BOS positions too (they stay excluded from every metric).
    pub splice_bos: bool,
    /// Also write the metrics to this file (e.g. a run's `eval.json`).
    pub out: Option<PathBuf>,
}

/// The hook an SAE is spliced at: `flag` if given, else the SAE's own
/// `metadata.hook_name`; an error naming `sae_dir` when neither says.
pub fn splice_hook(flag: Option<&str>, sae_hook: Option<&str>, sae_dir: &Path) -> Result<String> {
    flag.or(sae_hook).map(str::to_string).ok_or_else(|| {
        Error::invalid(format!(
            "{}: the SAE's metadata names no hook point; give one with --hook",
            sae_dir.display()
        ))
    })
}

/// Evaluates an SAE spliced into a model on held-out text; writes `req.out` if given.
/// Ctrl-C (`stop`) stops it with an interrupted error.
pub fn evaluate_in_model(
    req: &InModelRequest,
    stop: &AtomicBool,
    on: &mut OnEvent,
) -> Result<InModelMetrics> {
    let dir = sae_dir(&req.sae);
    let sae = load_sae(&dir)?;
    let hook = splice_hook(
        req.hook.as_deref(),
        sae.cfg.metadata.hook_name.as_deref(),
        &dir,
    )?;
    let ctx_len = match (req.ctx_len, sae.cfg.metadata.context_size) {
        (Some(l), _) => l,
        (None, Some(l)) if (2..=1024).contains(&l) => l,
        _ => DEFAULT_CTX_LEN,
    };
    let n_contexts = req.tokens.div_ceil(ctx_len.max(1)).max(1);
    let lm = inputs::load_model(&req.model, on)?;
    let m = in_model_metrics(
        &lm,
        &sae,
        &hook,
        &req.corpus,
        ctx_len,
        n_contexts,
        req.batch_size,
        req.splice_bos,
        stop,
        on,
    )?;
    if let Some(p) = &req.out {
        write_json(p, &m)?;
    }
    Ok(m)
}

/// The model's tokenizer (that of its file).
fn tokenizer(lm: &HookedModel) -> Result<Tokenizer> {
    Tokenizer::from_path(lm.source())
        .context_with(|| format!("tokenizer of {}", lm.source().display()))
}

/// A stop check for the evaluation callbacks.
fn check_stop(stop: &AtomicBool) -> saelab_core::Result<()> {
    if stop.load(Ordering::SeqCst) {
        Err(saelab_core::Error::Interrupted)
    } else {
        Ok(())
    }
}

/// Evaluates `sae` in `lm` at `hook` on the first `n_contexts` held-out contexts of
/// `corpus` (contexts of `ctx_len` tokens, `batch_size` per forward, by default about
/// 1024 tokens).
#[allow(clippy::too_many_arguments)]
pub fn in_model_metrics(
    lm: &HookedModel,
    sae: &Sae,
    hook: &str,
    corpus: &Path,
    ctx_len: usize,
    n_contexts: usize,
    batch_size: Option<usize>,
    splice_bos: bool,
    stop: &AtomicBool,
    on: &mut OnEvent,
) -> Result<InModelMetrics> {
    let _span = tracing::info_span!("inmodel_eval", hook, contexts = n_contexts).entered();
    let tok = tokenizer(lm)?;
    let contexts = corpus_contexts(&tok, corpus, Part::HeldOut, ctx_len, n_contexts)?;
    let opts = InModelOptions {
        batch_size: batch_size.unwrap_or((1024 / ctx_len).max(1)),
        bos_id: tok.bos_id(),
        splice_bos,
        ..Default::default()
    };
    on(Event::Begin {
        phase: Phase::InModel,
        label: format!("in-model evaluation at {hook}"),
        total: Some(2 * contexts.len() as u64),
        done: 0,
    });
    let m = evaluate_in_model_with(lm, sae, hook, &contexts, &opts, |p| {
        on(Event::InModel(p));
        check_stop(stop)
    });
    on(Event::End);
    let m = m?;
    tracing::info!(
        ce_loss_score = m.ce_loss_score,
        delta_ce = m.delta_ce,
        kl_sae = m.kl_sae,
        "evaluated in the model"
    );
    Ok(m)
}

/// How [`evaluate_runs_in_model`] evaluates.
#[derive(Clone, Debug, PartialEq)]
pub struct RunsInModel {
    /// The model.
    pub model: PathBuf,
    /// The corpus whose held-out documents are used.
    pub corpus: PathBuf,
    /// Held-out tokens (whole contexts).
    pub tokens: usize,
    /// Tokens per context.
    pub ctx_len: usize,
    /// Hook to splice at (default: each SAE's `metadata.hook_name`).
    pub hook: Option<String>,
    /// Evaluate runs that already have an `eval.json` too.
    pub recompute: bool,
}

/// Computes the in-model metrics of the runs that lack an `eval.json` (all with
/// `recompute`) on one shared set of held-out contexts — the clean and ablated forwards
/// run once per hook, then one spliced forward per SAE — writes each run's `eval.json`
/// and re-reads its summary.
pub fn evaluate_runs_in_model(
    runs: &mut [RunSummary],
    req: &RunsInModel,
    stop: &AtomicBool,
    on: &mut OnEvent,
) -> Result<()> {
    // Runs needing an evaluation, grouped by hook.
    let mut by_hook: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, s) in runs.iter().enumerate() {
        if s.in_model.is_some() && !req.recompute {
            continue;
        }
        let hook = splice_hook(req.hook.as_deref(), s.hook.as_deref(), &s.dir)?;
        by_hook.entry(hook).or_default().push(i);
    }
    if by_hook.is_empty() {
        return Ok(());
    }
    let _span = tracing::info_span!("inmodel_eval", runs = by_hook.len()).entered();
    let lm = inputs::load_model(&req.model, on)?;
    let tok = tokenizer(&lm)?;
    let n_ctx = req.tokens.div_ceil(req.ctx_len.max(1)).max(1);
    let contexts = corpus_contexts(&tok, &req.corpus, Part::HeldOut, req.ctx_len, n_ctx)?;
    let opts = InModelOptions {
        batch_size: (1024 / req.ctx_len).max(1),
        bos_id: tok.bos_id(),
        ..Default::default()
    };
    for (hook, idx) in by_hook {
        on(Event::Begin {
            phase: Phase::Baseline,
            label: format!("baseline at {hook}"),
            total: None,
            done: 0,
        });
        let set =
            InModelEvalSet::new_with(&lm, &hook, contexts.clone(), &opts, |_| check_stop(stop));
        on(Event::End);
        let set = set?;
        for i in idx {
            let s = &runs[i];
            on(Event::Begin {
                phase: Phase::InModel,
                label: format!("in-model evaluation of {}", s.name),
                total: None,
                done: 0,
            });
            let m = load_sae(&sae_dir(&s.dir))
                .map_err(Error::from)
                .and_then(|sae| {
                    set.evaluate_with(&lm, &sae, |_| check_stop(stop))
                        .context_with(|| s.dir.display().to_string())
                });
            on(Event::End);
            let m = m?;
            let dir = RunDir::new(&s.dir);
            write_json(&dir.eval_file(), &m)?;
            on(Event::Evaluated {
                name: &s.name,
                metrics: &m,
            });
            runs[i] = read_run(dir.path())?;
        }
    }
    Ok(())
}
