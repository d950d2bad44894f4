//! The main job (`saelab run configs/main.toml`): the README's pipeline as one
//! resumable job.
//!
//! 1. extract `extract.train_tokens` activations of `hook` from the corpus's training
//!    documents into `out/acts/train-<hook>`, and `extract.heldout_tokens` from its
//!    held-out documents (every 20th) into `out/acts/heldout-<hook>`;
//! 2. train the `[sae]` on the training cache with `[train]` into
//!    `out/sae-<hook>-<arch>[-k<k>]-x<expansion>-t<tokens>` ([`sae_run_name`]);
//! 3. evaluate it on the held-out cache (`eval-heldout.json` in its run directory);
//! 4. evaluate it spliced into the model on `inmodel.tokens` held-out tokens
//!    (`eval.json`);
//! 5. run the features pass ([`crate::features`]) of the SAE over the train cache's
//!    first `features.tokens` tokens (its activations, not a second forward) into
//!    `features/` in its run directory, which `saelab serve` shows;
//! 6. summarise ([`MainSummary`]: `out/summary.txt` and `out/summary.json`).
//!
//! Every step is idempotent: a complete cache is reused, a finished SAE is not trained
//! again, an evaluation whose file matches the settings is read back; an interrupted
//! step (Ctrl-C) continues where it stopped when the job runs again.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use saelab_core::fit::DataSpec;
use saelab_core::metrics::ReconMetrics;
use saelab_core::rundir::{read_json, write_json, RunDir};
use saelab_core::train::TrainConfig;
use saelab_eval::InModelMetrics;
use saelab_lm::cache::{read_manifest, CacheManifest};
use saelab_lm::text::Part;
use serde::{Deserialize, Serialize};

use crate::config::{from_toml, RunTable, SaeChoice, SaeTable, Width};
use crate::error::{Error, Result};
use crate::eval::{self, FileEval, FileEvalRequest, InModelRequest};
use crate::event::{Event, OnEvent};
use crate::extract::{self, ExtractOutcome, ExtractRequest};
use crate::features::{self, FeaturesOutcome, FeaturesRequest};
use crate::inputs;
use crate::train::{self, sparsity_part, Member, Source, TrainJob, TrainOutcome};

/// The main job's configuration (`configs/main.toml`).
#[derive(Clone, Debug, PartialEq)]
pub struct MainConfig {
    /// Where the caches, the SAE run and the summary go.
    pub out: PathBuf,
    /// The model (GGUF file or Hugging Face directory).
    pub model: PathBuf,
    /// The corpus (a folder of `.txt` files, a text file or JSONL).
    pub corpus: PathBuf,
    /// The hook point whose activations the SAE learns.
    pub hook: String,
    /// Tokens per context (extraction and in-model evaluation).
    pub ctx_len: usize,
    /// Contexts per model forward during extraction.
    pub batch: usize,
    /// Activations to extract.
    pub extract: ExtractSizes,
    /// The SAE.
    pub sae: SaeChoice,
    /// Its training.
    pub train: TrainConfig,
    /// The in-model evaluation.
    pub inmodel: InModelSizes,
    /// The features pass.
    pub features: FeaturesSizes,
}

/// `[extract]`: how many activations to extract.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtractSizes {
    /// Rows from the training documents.
    pub train_tokens: u64,
    /// Rows from the held-out documents.
    pub heldout_tokens: u64,
}

/// `[inmodel]`: the in-model evaluation's size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InModelSizes {
    /// Held-out tokens (rounded up to whole contexts).
    pub tokens: usize,
}

/// `[features]`: the features pass's size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeaturesSizes {
    /// Training tokens to read (whole contexts).
    pub tokens: u64,
}

impl Default for FeaturesSizes {
    fn default() -> Self {
        FeaturesSizes { tokens: 262_144 }
    }
}

/// The file form of [`MainConfig`], before `[sae]` is resolved.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MainFile {
    out: PathBuf,
    model: PathBuf,
    corpus: PathBuf,
    hook: String,
    #[serde(default = "default_ctx_len")]
    ctx_len: usize,
    #[serde(default = "default_batch")]
    batch: usize,
    extract: ExtractSizes,
    sae: toml::Table,
    #[serde(default)]
    train: TrainConfig,
    inmodel: InModelSizes,
    #[serde(default)]
    features: FeaturesSizes,
}

fn default_ctx_len() -> usize {
    128
}

fn default_batch() -> usize {
    8
}

impl MainConfig {
    /// Reads the configuration from its table (the file with overrides applied);
    /// `file` names it in errors.
    pub fn parse(table: RunTable, file: &Path) -> Result<MainConfig> {
        let f: MainFile = from_toml(toml::Value::Table(table.0), &file.display().to_string())?;
        let sae = SaeTable(f.sae)
            .resolve()
            .map_err(|e| Error::invalid(format!("{}: {e}", file.display())))?;
        f.train
            .validate()
            .map_err(|e| Error::invalid(format!("{}: [train]: {e}", file.display())))?;
        Ok(MainConfig {
            out: f.out,
            model: f.model,
            corpus: f.corpus,
            hook: f.hook,
            ctx_len: f.ctx_len,
            batch: f.batch,
            extract: f.extract,
            sae,
            train: f.train,
            inmodel: f.inmodel,
            features: f.features,
        })
    }

    /// The training activations' cache.
    pub fn train_cache(&self) -> PathBuf {
        self.out.join("acts").join(format!("train-{}", self.hook))
    }

    /// The held-out activations' cache.
    pub fn heldout_cache(&self) -> PathBuf {
        self.out.join("acts").join(format!("heldout-{}", self.hook))
    }

    /// The features folder of the SAE.
    pub fn features_dir(&self) -> PathBuf {
        self.sae_run().path().join("features")
    }

    /// The SAE's run directory.
    pub fn sae_run(&self) -> RunDir {
        RunDir::new(
            self.out
                .join(sae_run_name(&self.hook, &self.sae, self.train.total_tokens)),
        )
    }
}

/// The SAE run's directory name: `sae-<hook>-<arch>[-k<k>]-x<expansion>-t<tokens>`
/// (`n<d_sae>` for an explicit width).
pub fn sae_run_name(hook: &str, sae: &SaeChoice, tokens: u64) -> String {
    let mut parts = vec![
        "sae".to_string(),
        hook.to_string(),
        sae.arch.name().to_string(),
    ];
    parts.extend(sparsity_part(&sae.arch));
    parts.push(match sae.width {
        Width::Expansion(e) => format!("x{e}"),
        Width::Latents(n) => format!("n{n}"),
    });
    parts.push(format!("t{tokens}"));
    parts.join("-")
}

/// What a step of the main job produced, reported as it finishes.
pub enum StageOutcome<'a> {
    /// An extraction.
    Extract(&'a ExtractOutcome),
    /// The training.
    Train(&'a TrainOutcome),
    /// The held-out evaluation.
    Eval(&'a FileEval),
    /// The in-model evaluation.
    InModel(&'a InModelMetrics),
    /// The features pass, and its folder.
    Features(&'a FeaturesOutcome, &'a Path),
}

/// The model line of a summary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SummaryModel {
    /// The model path given at extraction.
    pub path: String,
    /// Its blocks.
    pub n_layers: usize,
    /// Width of the activations.
    pub d: usize,
}

/// An activation cache in a summary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SummaryCache {
    /// The cache directory.
    pub dir: PathBuf,
    /// Activation rows.
    pub rows: u64,
    /// Documents of the corpus part.
    pub documents: usize,
    /// Shards.
    pub shards: usize,
    /// Stored dtype.
    pub dtype: String,
    /// Seconds this job spent on it.
    pub extract_s: f64,
}

/// The SAE in a summary, as its SAELens `cfg.json` says.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SummarySae {
    /// The SAE directory.
    pub dir: PathBuf,
    /// SAELens architecture name.
    pub architecture: String,
    /// Latents.
    pub d_sae: usize,
    /// `k` (TopK).
    pub k: Option<u64>,
    /// Training tokens.
    pub training_tokens: Option<u64>,
    /// Seconds this job spent training.
    pub train_s: f64,
}

/// The features pass in a summary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SummaryFeatures {
    /// The features folder.
    pub dir: PathBuf,
    /// Non-BOS tokens of the pass.
    pub tokens: u64,
    /// Contexts of the pass.
    pub contexts: usize,
    /// Latents.
    pub latents: usize,
    /// Seconds this job spent on it.
    pub features_s: f64,
}

/// An evaluation in a summary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SummaryEval<M> {
    /// The metrics.
    pub metrics: M,
    /// Seconds this job spent on it.
    pub eval_s: f64,
}

/// What the main job produced (`summary.json`); [`MainSummary::text`] is
/// `summary.txt`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MainSummary {
    /// The model.
    pub model: SummaryModel,
    /// The hook point.
    pub hook: String,
    /// Tokens per context.
    pub ctx_len: usize,
    /// The training activations.
    pub train_cache: SummaryCache,
    /// The held-out activations.
    pub heldout_cache: SummaryCache,
    /// The SAE.
    pub sae: SummarySae,
    /// Reconstruction and sparsity on the held-out activations.
    pub heldout: SummaryEval<ReconMetrics>,
    /// The SAE spliced into the model.
    pub in_model: SummaryEval<InModelMetrics>,
    /// The features pass (absent in summaries written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<SummaryFeatures>,
}

/// A metric with 4 decimals, `-` when it is not a number (JSON has none for NaN).
fn g(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.4}")
    } else {
        "-".into()
    }
}

impl MainSummary {
    /// The summary as printed and written to `summary.txt` (one line per item, each
    /// ending with a newline).
    pub fn text(&self) -> String {
        let (mt, mh, sae) = (&self.train_cache, &self.heldout_cache, &self.sae);
        let (ev, m) = (&self.heldout.metrics, &self.in_model.metrics);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "model      {}  ({} blocks, d = {})",
            self.model.path, self.model.n_layers, self.model.d
        );
        let _ = writeln!(
            s,
            "hook       {}  (contexts of {} tokens, BOS excluded)",
            self.hook, self.ctx_len
        );
        let _ = writeln!(
            s,
            "train      {} activations from {} documents ({} shards, {})  extract {:.1} s",
            mt.rows, mt.documents, mt.shards, mt.dtype, mt.extract_s
        );
        let _ = writeln!(
            s,
            "held-out   {} activations from {} documents  extract {:.1} s",
            mh.rows, mh.documents, mh.extract_s
        );
        let _ = writeln!(
            s,
            "SAE        {} d_sae = {}, k = {}, {} training tokens  train {:.1} s",
            sae.architecture,
            sae.d_sae,
            sae.k.map_or("-".into(), |k| k.to_string()),
            sae.training_tokens.map_or("None".into(), |t| t.to_string()),
            sae.train_s
        );
        let _ = writeln!(
            s,
            "held-out   FVU {:.4}  (explained variance {:.4})  L0 {:.2}  dead {:.4}  cos {:.4}  \
             ({} tokens, eval {:.1} s)",
            ev.fvu,
            ev.explained_variance,
            ev.l0,
            ev.dead_frac,
            ev.cos_sim,
            ev.tokens,
            self.heldout.eval_s
        );
        let _ = writeln!(
            s,
            "in-model   CE clean {}  SAE {}  zero {}  mean {}  nats",
            g(m.ce_clean),
            g(m.ce_sae),
            g(m.ce_zero),
            g(m.ce_mean)
        );
        let _ = writeln!(
            s,
            "           ce_loss_score {}  delta_ce {}  kl_sae {}  ({} tokens, {:.1} s)",
            g(m.ce_loss_score),
            g(m.delta_ce),
            g(m.kl_sae),
            m.scored_tokens,
            self.in_model.eval_s
        );
        let _ = writeln!(s, "SAE files  {}", sae.dir.display());
        if let Some(f) = &self.features {
            let _ = writeln!(
                s,
                "features   {}  ({} latents over {} tokens, {:.1} s)",
                f.dir.display(),
                f.latents,
                f.tokens,
                f.features_s
            );
            let _ = writeln!(
                s,
                "browse     saelab serve --features {} --sae {} --model {}",
                f.dir.display(),
                sae.dir.display(),
                self.model.path
            );
        }
        s
    }

    /// Checks the figures against what any working pipeline gives, so that a broken one
    /// cannot pass: finite metrics, held-out FVU below 1, L0 above 0, a CE loss score in
    /// (0, 1] and a finite KL. The error names the failed bound.
    pub fn check(&self) -> Result<()> {
        let (h, m) = (&self.heldout.metrics, &self.in_model.metrics);
        let mut bad = Vec::new();
        if !(h.fvu.is_finite() && h.fvu < 1.0) {
            bad.push(format!("held-out FVU {} is not below 1", h.fvu));
        }
        if !(h.l0.is_finite() && h.l0 > 0.0) {
            bad.push(format!("held-out L0 {} is not positive", h.l0));
        }
        if !(m.ce_loss_score > 0.0 && m.ce_loss_score <= 1.0) {
            bad.push(format!(
                "CE loss score {} is not in (0, 1]",
                m.ce_loss_score
            ));
        }
        if !m.kl_sae.is_finite() {
            bad.push(format!("KL {} is not finite", m.kl_sae));
        }
        for (name, v) in [
            ("ce_clean", m.ce_clean),
            ("ce_sae", m.ce_sae),
            ("ce_zero", m.ce_zero),
            ("in-model FVU", m.recon.fvu),
        ] {
            if !v.is_finite() {
                bad.push(format!("{name} {v} is not finite"));
            }
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(Error::invalid(bad.join("; ")))
        }
    }
}

/// The part of a SAELens `cfg.json` a summary shows.
#[derive(Deserialize)]
struct SaelensHead {
    architecture: String,
    d_sae: usize,
    #[serde(default)]
    k: Option<u64>,
    #[serde(default)]
    metadata: SaelensMeta,
}

#[derive(Default, Deserialize)]
struct SaelensMeta {
    #[serde(default)]
    training_tokens: Option<u64>,
}

fn summary_cache(dir: &Path, m: &CacheManifest, secs: f64) -> SummaryCache {
    SummaryCache {
        dir: dir.to_path_buf(),
        rows: m.rows,
        documents: m.corpus.documents,
        shards: m.shards.len(),
        dtype: m.dtype.name().to_string(),
        extract_s: secs,
    }
}

/// Runs the main job (see the module docs), reporting each step's outcome, and writes
/// `out/summary.txt` and `out/summary.json`. Ctrl-C (`stop`) stops at the running
/// step's next safe point with an interrupted error; running again continues.
pub fn run_main(cfg: &MainConfig, stop: &AtomicBool, on: &mut OnEvent) -> Result<MainSummary> {
    let _span = tracing::info_span!("main", out = %cfg.out.display()).entered();
    inputs::require_present("model", &cfg.model)?;
    inputs::require_present("corpus", &cfg.corpus)?;
    let of = 6;
    let stage = |on: &mut OnEvent, n: usize, title: String| {
        on(Event::Stage { n, of, title });
    };
    let timed = |t0: Instant| t0.elapsed().as_secs_f64();

    // 1, 2: the caches.
    let mut caches = Vec::new();
    for (n, part, tokens, dir) in [
        (1, Part::Train, cfg.extract.train_tokens, cfg.train_cache()),
        (
            2,
            Part::HeldOut,
            cfg.extract.heldout_tokens,
            cfg.heldout_cache(),
        ),
    ] {
        let what = if part == Part::Train {
            "train"
        } else {
            "held-out"
        };
        stage(
            on,
            n,
            format!("extract {tokens} {what} activations of {}", cfg.hook),
        );
        let t0 = Instant::now();
        let mut req = ExtractRequest::new(
            cfg.model.clone(),
            vec![cfg.hook.clone()],
            cfg.corpus.clone(),
            tokens,
            dir.clone(),
        );
        req.part = part;
        req.ctx_len = cfg.ctx_len;
        req.batch_contexts = cfg.batch;
        let outcome = extract::extract(&req, stop, on)?;
        on(Event::StageDone(StageOutcome::Extract(&outcome)));
        let manifest = read_manifest(&dir)?;
        caches.push(summary_cache(&dir, &manifest, timed(t0)));
    }
    let train_manifest = read_manifest(&cfg.train_cache())?;

    // 3: the SAE.
    let run = cfg.sae_run();
    stage(
        on,
        3,
        format!(
            "train {} {} (d_sae = {}) on {} tokens",
            cfg.sae.arch.name(),
            cfg.sae.arch.sparsity_label(),
            cfg.sae.width.latents(train_manifest.d),
            cfg.train.total_tokens
        ),
    );
    let t0 = Instant::now();
    let trained_now = !run.is_finished();
    if !trained_now {
        on(Event::Skipped(format!(
            "{}: already trained",
            run.path().display()
        )));
    } else {
        let outcome = if run.holds_run() {
            train::resume(run.path(), stop, on)?
        } else {
            let job = TrainJob {
                source: Source::Store(DataSpec {
                    paths: vec![cfg.train_cache()],
                    tensor: None,
                }),
                members: vec![Member {
                    name: None,
                    hook: None,
                    sae: cfg.sae.clone(),
                    train: cfg.train.clone(),
                    hook_name: None,
                    model_name: None,
                }],
                out: run.path().to_path_buf(),
            };
            train::train(&job, stop, on)?
        };
        on(Event::StageDone(StageOutcome::Train(&outcome)));
    }
    let train_s = timed(t0);

    // 4: held-out reconstruction.
    stage(on, 4, "evaluate on the held-out cache".into());
    let t0 = Instant::now();
    let heldout_rows = caches[1].rows;
    let cached: Option<ReconMetrics> = reuse(&run.heldout_eval_file(), trained_now)
        .filter(|m: &ReconMetrics| m.tokens == heldout_rows);
    let heldout = match cached {
        Some(m) => {
            on(Event::Skipped(format!(
                "{}: already evaluated",
                run.heldout_eval_file().display()
            )));
            m
        }
        None => {
            let e = eval::evaluate_files(
                &FileEvalRequest {
                    sae: run.path().to_path_buf(),
                    acts: vec![cfg.heldout_cache()],
                    ..Default::default()
                },
                on,
            )?;
            on(Event::StageDone(StageOutcome::Eval(&e)));
            write_json(&run.heldout_eval_file(), &e.metrics)?;
            e.metrics
        }
    };
    let heldout_s = timed(t0);

    // 5: in the model.
    stage(
        on,
        5,
        "in-model evaluation (CE / KL with the SAE spliced in)".into(),
    );
    let t0 = Instant::now();
    let n_contexts = cfg.inmodel.tokens.div_ceil(cfg.ctx_len.max(1)).max(1);
    let cached: Option<InModelMetrics> =
        reuse(&run.eval_file(), trained_now).filter(|m: &InModelMetrics| {
            m.contexts == n_contexts && m.ctx_len == cfg.ctx_len && m.hook == cfg.hook
        });
    let in_model = match cached {
        Some(m) => {
            on(Event::Skipped(format!(
                "{}: already evaluated",
                run.eval_file().display()
            )));
            m
        }
        None => {
            let m = eval::evaluate_in_model(
                &InModelRequest {
                    sae: run.path().to_path_buf(),
                    model: cfg.model.clone(),
                    corpus: cfg.corpus.clone(),
                    hook: None,
                    tokens: cfg.inmodel.tokens,
                    ctx_len: Some(cfg.ctx_len),
                    batch_size: None,
                    splice_bos: false,
                    out: Some(run.eval_file()),
                },
                stop,
                on,
            )?;
            on(Event::StageDone(StageOutcome::InModel(&m)));
            m
        }
    };
    let in_model_s = timed(t0);

    // 6: the features pass.
    stage(
        on,
        6,
        format!("features pass over {} tokens", cfg.features.tokens),
    );
    let t0 = Instant::now();
    let features_dir = cfg.features_dir();
    let from_cache = || {
        saelab_features::manifest::read(&features_dir.join("features.json"))
            .is_ok_and(|m| m.settings.activations.is_some())
    };
    if features_dir.exists() && (trained_now || !from_cache()) {
        // Left by an earlier SAE in this run directory, or by an earlier saelab (another
        // layout, or the model run again for it): the pass would refuse it. The job made
        // it and can make it again.
        on(Event::Note(format!(
            "{}: made from an earlier SAE or by an earlier saelab; computing it again",
            features_dir.display()
        )));
        std::fs::remove_dir_all(&features_dir)
            .map_err(|e| saelab_core::Error::io(&features_dir, e))?;
    }
    // The train cache's first contexts: the activations the SAE was trained on, read
    // instead of running the model again.
    let mut req = FeaturesRequest::from_cache(
        run.sae_dir(),
        cfg.model.clone(),
        cfg.train_cache(),
        cfg.features.tokens,
        features_dir.clone(),
    );
    req.batch_contexts = cfg.batch;
    let f = features::features(&req, stop, on)?;
    on(Event::StageDone(StageOutcome::Features(&f, &features_dir)));
    let features = SummaryFeatures {
        dir: features_dir,
        tokens: f.summary.positions,
        contexts: f.summary.contexts,
        latents: f.n_latents,
        features_s: timed(t0),
    };

    // The summary.
    let head: SaelensHead = read_json(&run.sae_dir().join("cfg.json"), "a SAELens config")?;
    let [train_cache, heldout_cache]: [SummaryCache; 2] = caches.try_into().expect("two caches");
    let summary = MainSummary {
        model: SummaryModel {
            path: train_manifest.model.path.clone(),
            n_layers: train_manifest.model.n_layers,
            d: train_manifest.d,
        },
        hook: train_manifest.hook.clone(),
        ctx_len: train_manifest.tokens.ctx_len,
        train_cache,
        heldout_cache,
        sae: SummarySae {
            dir: run.sae_dir(),
            architecture: head.architecture,
            d_sae: head.d_sae,
            k: head.k,
            training_tokens: head.metadata.training_tokens,
            train_s,
        },
        heldout: SummaryEval {
            metrics: heldout,
            eval_s: heldout_s,
        },
        in_model: SummaryEval {
            metrics: in_model,
            eval_s: in_model_s,
        },
        features: Some(features),
    };
    saelab_core::io::write_file_atomic(&cfg.out.join("summary.txt"), summary.text().as_bytes())?;
    write_json(&cfg.out.join("summary.json"), &summary)?;
    Ok(summary)
}

/// An earlier evaluation written to `path`, unless the SAE was trained just now (then
/// the file, if any, is of an earlier SAE) or the file does not read.
fn reuse<T: serde::de::DeserializeOwned>(path: &Path, trained_now: bool) -> Option<T> {
    if trained_now || !path.is_file() {
        return None;
    }
    read_json(path, "an evaluation").ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> MainSummary {
        let recon: ReconMetrics = serde_json::from_value(serde_json::json!({
            "tokens": 4189, "fvu": 0.5963, "explained_variance": 0.4037, "nmse": 0.3,
            "mse": 14.5, "cos_sim": 0.8469, "l2_ratio": 0.9, "rel_recon_bias": 1.0,
            "l0": 32.0, "dead_frac": 0.0007, "dense_frac": 0.0
        }))
        .unwrap();
        let mut im = serde_json::to_value(&recon).unwrap();
        for (k, v) in [
            ("hook", serde_json::json!("blocks.15.hook_resid_post")),
            ("contexts", 16.into()),
            ("ctx_len", 128.into()),
            ("scored_tokens", 2015.into()),
            ("ce_clean", 4.0829.into()),
            ("ce_sae", 5.7304.into()),
            ("ce_zero", 15.3437.into()),
            ("ce_mean", 9.4953.into()),
            ("ce_loss_score", 0.8537.into()),
            ("delta_ce", 1.6475.into()),
            ("kl_sae", 1.8326.into()),
            (
                "timing",
                serde_json::json!({
                    "clean_s": 1.0, "sae_s": 1.0, "zero_s": 1.0, "mean_s": 1.0,
                    "scoring_s": 1.0, "splice_cost_ratio": 1.0
                }),
            ),
        ] {
            im[k] = v;
        }
        let cache = |rows, documents| SummaryCache {
            dir: "runs/main/acts/train".into(),
            rows,
            documents,
            shards: 1,
            dtype: "f32".into(),
            extract_s: 15.83,
        };
        MainSummary {
            model: SummaryModel {
                path: "data/models/m.gguf".into(),
                n_layers: 30,
                d: 576,
            },
            hook: "blocks.15.hook_resid_post".into(),
            ctx_len: 128,
            train_cache: cache(20062, 830),
            heldout_cache: cache(4189, 43),
            sae: SummarySae {
                dir: "runs/main/sae-x/sae".into(),
                architecture: "topk".into(),
                d_sae: 9216,
                k: Some(32),
                training_tokens: Some(40960),
                train_s: 4.21,
            },
            heldout: SummaryEval {
                metrics: recon,
                eval_s: 0.44,
            },
            in_model: SummaryEval {
                metrics: serde_json::from_value(im).unwrap(),
                eval_s: 28.31,
            },
            features: None,
        }
    }

    #[test]
    fn the_summary_text_is_the_old_one() {
        let want = "\
model      data/models/m.gguf  (30 blocks, d = 576)
hook       blocks.15.hook_resid_post  (contexts of 128 tokens, BOS excluded)
train      20062 activations from 830 documents (1 shards, f32)  extract 15.8 s
held-out   4189 activations from 43 documents  extract 15.8 s
SAE        topk d_sae = 9216, k = 32, 40960 training tokens  train 4.2 s
held-out   FVU 0.5963  (explained variance 0.4037)  L0 32.00  dead 0.0007  cos 0.8469  (4189 tokens, eval 0.4 s)
in-model   CE clean 4.0829  SAE 5.7304  zero 15.3437  mean 9.4953  nats
           ce_loss_score 0.8537  delta_ce 1.6475  kl_sae 1.8326  (2015 tokens, 28.3 s)
SAE files  runs/main/sae-x/sae
";
        let s = summary();
        assert_eq!(s.text(), want);
        s.check().unwrap();
        let back: MainSummary = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn the_summary_names_the_features_folder_and_how_to_browse_it() {
        let mut s = summary();
        s.features = Some(SummaryFeatures {
            dir: "runs/main/sae-x/features".into(),
            tokens: 262_100,
            contexts: 2064,
            latents: 9216,
            features_s: 151.25,
        });
        let text = s.text();
        let tail: Vec<&str> = text.lines().rev().take(2).collect();
        assert_eq!(
            tail,
            [
                "browse     saelab serve --features runs/main/sae-x/features --sae \
                 runs/main/sae-x/sae --model data/models/m.gguf",
                "features   runs/main/sae-x/features  (9216 latents over 262100 tokens, 151.2 s)",
            ]
        );
        let back: MainSummary = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn broken_figures_fail_the_check() {
        type Break = (&'static str, fn(&mut MainSummary));
        let breaks: [Break; 6] = [
            ("FVU", |s| s.heldout.metrics.fvu = 1.2),
            ("FVU", |s| s.heldout.metrics.fvu = f64::NAN),
            ("L0", |s| s.heldout.metrics.l0 = 0.0),
            ("CE loss score", |s| s.in_model.metrics.ce_loss_score = -0.1),
            ("CE loss score", |s| s.in_model.metrics.ce_loss_score = 1.5),
            ("KL", |s| s.in_model.metrics.kl_sae = f64::INFINITY),
        ];
        for (needle, f) in breaks {
            let mut s = summary();
            f(&mut s);
            let e = s.check().unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
        let mut s = summary();
        s.in_model.metrics.ce_sae = f64::NAN;
        s.in_model.metrics.ce_loss_score = f64::NAN;
        assert!(s.check().is_err());
        assert!(s.text().contains("SAE -  zero"), "{}", s.text());
    }

    #[test]
    fn names_and_configs() {
        let mut t = RunTable(
            r#"
            out = "runs/main"
            model = "m.gguf"
            corpus = "c"
            hook = "blocks.15.hook_resid_post"
            [extract]
            train_tokens = 1000
            heldout_tokens = 100
            [sae]
            architecture = "topk"
            k = 32
            expansion_factor = 16
            [train]
            total_tokens = 4000000
            [inmodel]
            tokens = 2048
        "#
            .parse()
            .unwrap(),
        );
        let c = MainConfig::parse(t.clone(), Path::new("main.toml")).unwrap();
        assert_eq!((c.ctx_len, c.batch), (128, 8));
        assert_eq!(
            c.sae_run().path(),
            Path::new("runs/main/sae-blocks.15.hook_resid_post-topk-k32-x16-t4000000")
        );
        assert_eq!(
            c.heldout_cache(),
            Path::new("runs/main/acts/heldout-blocks.15.hook_resid_post")
        );
        t.apply_override("extract.tokens=5").unwrap();
        let e = MainConfig::parse(t, Path::new("main.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("main.toml") && e.contains("tokens"), "{e}");
    }
}
