//! The report's data model: what a run directory says about its SAE
//! ([`RunSummary`]: final metrics, training curve, in-model metrics, latent density),
//! read through [`saelab_core::rundir`]. This is what a web UI would serve.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use saelab_core::format::{load_sae, read_log_sparsity};
use saelab_core::metrics::ReconMetrics;
use saelab_core::rundir::{read_json, MetricsRecord, RunDir};
use saelab_core::{Error, Result};
use serde::Serialize;

use crate::inmodel::InModelMetrics;

/// Final metrics of a run, as plotted and tabulated.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FinalMetrics {
    /// Step of the record (0 when from `eval.json`).
    pub step: u64,
    /// Mean active latents per token.
    pub l0: f64,
    /// Fraction of variance unexplained.
    pub fvu: f64,
    /// Normalised MSE.
    pub nmse: f64,
    /// Mean cosine similarity.
    pub cos_sim: f64,
    /// Fraction of latents never firing.
    pub dead_frac: f64,
    /// Fraction of latents firing on more than 10 % of tokens.
    pub dense_frac: f64,
}

impl FinalMetrics {
    /// The final metrics of a [`ReconMetrics`] record at `step`.
    pub fn from_recon(step: u64, m: &ReconMetrics) -> Self {
        FinalMetrics {
            step,
            l0: m.l0,
            fvu: m.fvu,
            nmse: m.nmse,
            cos_sim: m.cos_sim,
            dead_frac: m.dead_frac,
            dense_frac: m.dense_frac,
        }
    }
}

/// One point of a training curve.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CurvePoint {
    /// Optimizer step.
    pub step: u64,
    /// Training tokens seen.
    pub tokens: u64,
    /// FVU of the batch.
    pub fvu: f64,
    /// L0 of the batch.
    pub l0: f64,
}

/// Everything the report shows about one SAE.
#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    /// Short name: the directory's name.
    pub name: String,
    /// The directory given.
    pub dir: PathBuf,
    /// Architecture as trained (`batchtopk` even though it is saved as JumpReLU).
    pub arch: String,
    /// The sparsity hyperparameters, printed: `k=32`, `λ=5`, `λ0=0.001 θ0=0.001`.
    pub sparsity: String,
    /// Number of latents.
    pub d_sae: usize,
    /// Hook point from the SAE's metadata.
    pub hook: Option<String>,
    /// Final reconstruction metrics (validation record, else `eval.json`).
    pub last: Option<FinalMetrics>,
    /// Training records.
    pub curve: Vec<CurvePoint>,
    /// In-model metrics from `eval.json`.
    pub in_model: Option<InModelMetrics>,
    /// log10 firing density of each latent (`sparsity.safetensors`).
    #[serde(skip)]
    pub log10_density: Option<Vec<f32>>,
}

/// The SAE directory of a run directory (`dir/sae`) or `dir` itself.
pub fn sae_dir(dir: &Path) -> PathBuf {
    if dir.join("sae").join("cfg.json").exists() {
        dir.join("sae")
    } else {
        dir.to_path_buf()
    }
}

/// Reads a run directory (or a bare SAE directory). Errors name the file at fault.
pub fn read_run(dir: &Path) -> Result<RunSummary> {
    let sdir = sae_dir(dir);
    if !sdir.is_dir() {
        return Err(Error::bad_file(dir, "no such run or SAE directory"));
    }
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|s| s.to_string_lossy().to_string()))
        .unwrap_or_else(|| dir.display().to_string());
    let run = RunDir::new(dir);
    // Architecture: run.json's training config when present (BatchTopK keeps its k),
    // else the SAE's own file.
    let (arch, sparsity, d_sae, hook) = match run.read_trained_config()? {
        Some(c) => (
            c.arch.name().to_string(),
            c.arch.sparsity_label(),
            c.d_sae,
            c.metadata.hook_name.clone(),
        ),
        None => {
            let sae = load_sae(&sdir)?;
            let c = &sae.cfg;
            (
                c.metadata
                    .trained_as
                    .clone()
                    .unwrap_or_else(|| c.arch.name().to_string()),
                c.arch.sparsity_label(),
                c.d_sae,
                c.metadata.hook_name.clone(),
            )
        }
    };
    let (curve, val) = curves(&run.read_log()?);
    let eval_path = run.eval_file();
    let in_model: Option<InModelMetrics> = if eval_path.is_file() {
        Some(read_json(&eval_path, "an in-model evaluation")?)
    } else {
        None
    };
    let last = val.or_else(|| {
        in_model
            .as_ref()
            .map(|m| FinalMetrics::from_recon(0, &m.recon))
    });
    let log10_density = read_log_sparsity(&sdir)?;
    Ok(RunSummary {
        name,
        dir: dir.to_path_buf(),
        arch,
        sparsity,
        d_sae,
        hook,
        last,
        curve,
        in_model,
        log10_density,
    })
}

/// The training curve and the last validation record of a run's metrics log.
pub fn curves(log: &[MetricsRecord]) -> (Vec<CurvePoint>, Option<FinalMetrics>) {
    let mut curve = Vec::new();
    let mut last: Option<FinalMetrics> = None;
    for rec in log {
        match rec {
            MetricsRecord::Train(r) => curve.push(CurvePoint {
                step: r.step,
                tokens: r.tokens,
                fvu: r.fvu,
                l0: r.l0,
            }),
            MetricsRecord::Val(v) if last.as_ref().is_none_or(|l| v.step >= l.step) => {
                last = Some(FinalMetrics::from_recon(v.step, &v.metrics))
            }
            MetricsRecord::Val(_) => {}
        }
    }
    (curve, last)
}

/// Points `(L0, y, sparsity label)` grouped by series (the architecture, plus the
/// width when the runs differ in width), each sorted by L0.
pub type ArchSeries = BTreeMap<String, Vec<(f64, f64, String)>>;

/// The runs' points `(L0, y(run))` by series (see [`ArchSeries`]); runs without a
/// finite, positive L0 or a finite `y` are left out.
pub fn by_arch(runs: &[RunSummary], y: impl Fn(&RunSummary) -> Option<f64>) -> ArchSeries {
    let mut m: ArchSeries = BTreeMap::new();
    let widths: std::collections::BTreeSet<usize> = runs.iter().map(|r| r.d_sae).collect();
    for r in runs {
        if let (Some(l), Some(v)) = (&r.last, y(r)) {
            if l.l0.is_finite() && l.l0 > 0.0 && v.is_finite() {
                let key = if widths.len() > 1 {
                    format!("{} n={}", r.arch, r.d_sae)
                } else {
                    r.arch.clone()
                };
                m.entry(key)
                    .or_default()
                    .push((l.l0, v, r.sparsity.clone()));
            }
        }
    }
    for v in m.values_mut() {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    m
}
