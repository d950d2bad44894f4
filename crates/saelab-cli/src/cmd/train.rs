//! `saelab train`: train SAEs on activation files, or on activations streamed from a
//! model with no cache; resume an interrupted run.
//!
//! Several values of `--arch`, `--k`, `--d-sae` / `--expansion` and (when streaming)
//! `--hook` train one SAE per combination in a single pass over the data: every batch
//! is read (or computed by the model) once. One combination writes its run into
//! `--out`; several write `--out/<name>/` each plus `--out/sweep.json`, and
//! `--resume --out`-directory continues them all.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use anyhow::{bail, Context, Result};
use saelab_core::fit::{self, BatchSource, DataSpec, Event, Run, StoreSource, Validation};
use saelab_core::metrics::ReconMetrics;
use saelab_core::store::{ActivationStore, Split};
use saelab_core::train::{TrainConfig, Trainer};
use saelab_core::{Matrix, SaeConfig};
use saelab_lm::contexts::{
    documents_fingerprint, model_fingerprint, tokenizer_for_model, ContextOrder, ContextPlan,
};
use saelab_lm::model::{HookPoint, HookedModel};
use saelab_lm::stream::{
    collect_rows, StreamOptions, StreamSource, StreamSpec, DEFAULT_WINDOW_CONTEXTS,
};
use saelab_lm::text::{Corpus, Document, HeldOut, LoadOptions, PackConfig, Part};

use crate::progress;
use crate::runfile;
use crate::STOP;

/// Rows sampled for the input scale and the `b_dec` initialisation.
const INIT_SAMPLE_ROWS: usize = 16_384;
/// Held-out rows computed for validation when streaming.
const DEFAULT_VAL_TOKENS: usize = 16_384;
/// Lists the runs of a sweep directory.
const SWEEP_FILE: &str = "sweep.json";

#[derive(clap::Args)]
pub struct Args {
    /// TOML run file ([data], [sae], [train]); flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Activation files (.npy, .safetensors) or directories of them (e.g. a `saelab extract` cache).
    #[arg(long, num_args = 1.., conflicts_with = "model")]
    acts: Vec<PathBuf>,
    /// Tensor name inside safetensors files.
    #[arg(long)]
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
    /// JSONL field holding the text (with --model).
    #[arg(long, requires = "model")]
    jsonl_field: Option<String>,
    /// Tokens per context (with --model; default 128).
    #[arg(long, requires = "model")]
    ctx_len: Option<usize>,
    /// Contexts per model forward (with --model; default 8).
    #[arg(long, requires = "model")]
    batch_contexts: Option<usize>,
    /// Contexts per shuffle window (with --model; default 256).
    #[arg(long, requires = "model")]
    window_contexts: Option<usize>,
    /// Held-out validation rows computed at the start (with --model; default 16384).
    #[arg(long, requires = "model")]
    val_tokens: Option<usize>,
    /// Train on BOS positions too (with --model).
    #[arg(long, requires = "model")]
    keep_bos: bool,
    /// Architecture(s): relu, topk, batchtopk, jumprelu, gated.
    #[arg(long, num_args = 1..)]
    arch: Vec<String>,
    /// Latents kept per token (topk, batchtopk); several values train several SAEs.
    #[arg(long, num_args = 1..)]
    k: Vec<usize>,
    /// Number(s) of latents.
    #[arg(long, num_args = 1.., conflicts_with = "expansion")]
    d_sae: Vec<usize>,
    /// Latents per input dimension (default 16); several values train several SAEs.
    #[arg(long, num_args = 1..)]
    expansion: Vec<usize>,
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
    match (&a.resume, &a.model) {
        (Some(dir), _) => resume(dir, a.stop_after),
        (None, Some(_)) => new_stream(&a),
        (None, None) => new_store(&a),
    }
}

// ---------------------------------------------------------------------------------
// Sweeps: the combinations of the multi-valued flags.

/// One SAE configuration of a sweep (unset fields come from the run file).
#[derive(Clone, Debug, Default)]
struct Combo {
    hook: Option<String>,
    arch: Option<String>,
    k: Option<usize>,
    d_sae: Option<usize>,
    expansion: Option<usize>,
}

fn opts_or_none<T: Clone>(v: &[T]) -> Vec<Option<T>> {
    if v.is_empty() {
        vec![None]
    } else {
        v.iter().cloned().map(Some).collect()
    }
}

/// Every combination of hooks × architectures × k × widths.
fn combos(a: &Args, hooks: &[String]) -> Vec<Combo> {
    let mut out = Vec::new();
    for hook in opts_or_none(hooks) {
        for arch in opts_or_none(&a.arch) {
            for k in opts_or_none(&a.k) {
                for d_sae in opts_or_none(&a.d_sae) {
                    for expansion in opts_or_none(&a.expansion) {
                        out.push(Combo {
                            hook: hook.clone(),
                            arch: arch.clone(),
                            k,
                            d_sae,
                            expansion,
                        });
                    }
                }
            }
        }
    }
    out
}

fn int(v: impl TryInto<i64>) -> toml::Value {
    toml::Value::Integer(v.try_into().unwrap_or(i64::MAX))
}

/// The run file with every single-valued flag applied.
fn base_table(a: &Args) -> Result<toml::Table> {
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
    put("train.total_tokens", a.tokens.map(int))?;
    put("train.batch_size", a.batch_size.map(int))?;
    put("train.lr", a.lr.map(|v| toml::Value::Float(v as f64)))?;
    put("train.seed", a.seed.map(int))?;
    put("train.eval_every", a.eval_every.map(int))?;
    if a.reference_kernels {
        put("train.reference_kernels", Some(toml::Value::Boolean(true)))?;
    }
    for kv in &a.set {
        runfile::apply_override(&mut t, kv)?;
    }
    Ok(t)
}

/// The table of one combination.
fn combo_table(base: &toml::Table, c: &Combo) -> Result<toml::Table> {
    let mut t = base.clone();
    if let Some(arch) = &c.arch {
        runfile::set(
            &mut t,
            "sae.architecture",
            toml::Value::String(arch.clone()),
        )?;
    }
    if let Some(k) = c.k {
        runfile::set(&mut t, "sae.k", int(k))?;
    }
    if let Some(n) = c.d_sae {
        runfile::set(&mut t, "sae.d_sae", int(n))?;
    }
    if let Some(e) = c.expansion {
        runfile::set(&mut t, "sae.expansion_factor", int(e))?;
    }
    Ok(t)
}

pub(crate) fn width(d: usize, d_sae: Option<usize>, expansion: Option<usize>) -> usize {
    match (d_sae, expansion) {
        (Some(n), _) => n,
        (None, Some(e)) => e * d,
        (None, None) => 16 * d,
    }
}

/// A sweep member's directory name, e.g. `blocks.15.hook_resid_post-topk-k32-n9216`.
fn run_name(hook: Option<&str>, cfg: &SaeConfig) -> String {
    let mut parts: Vec<String> = hook.map(str::to_string).into_iter().collect();
    parts.push(cfg.arch.name().to_string());
    if let Some(k) = cfg.arch.knob("k") {
        parts.push(format!("k{k}"));
    }
    parts.push(format!("n{}", cfg.d_sae));
    parts.join("-")
}

/// The run directories of `out`: `out` itself for one run, `out/<name>` for several;
/// fails early if `out` already holds a run or a sweep.
pub(crate) fn run_dirs(out: &Path, names: &[String]) -> Result<Vec<PathBuf>> {
    for f in ["run.json", SWEEP_FILE] {
        if out.join(f).exists() {
            bail!(
                "{}: already holds a run; use --resume to continue it or choose another --out",
                out.display()
            );
        }
    }
    if names.len() == 1 {
        return Ok(vec![out.to_path_buf()]);
    }
    let mut seen = std::collections::HashSet::new();
    for n in names {
        if !seen.insert(n) {
            bail!("the sweep lists the configuration {n} twice");
        }
    }
    Ok(names.iter().map(|n| out.join(n)).collect())
}

/// Records the sweep's members in `out/sweep.json` (several runs only).
pub(crate) fn write_sweep(out: &Path, names: &[String]) -> Result<()> {
    if names.len() > 1 {
        saelab_core::io::check_writable(out)?;
        std::fs::create_dir_all(out).with_context(|| out.display().to_string())?;
        saelab_core::io::write_file_atomic(
            &out.join(SWEEP_FILE),
            &serde_json::to_vec_pretty(&serde_json::json!({ "runs": names }))?,
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Training on stored activations.

fn new_store(a: &Args) -> Result<()> {
    let base = base_table(a)?;
    let cs = combos(a, &[]);
    let rfs = cs
        .iter()
        .map(|c| runfile::parse(combo_table(&base, c)?))
        .collect::<Result<Vec<_>>>()?;
    let data = rfs[0].data.clone();
    let store = data.open()?;
    let d = store.d();
    let train_cfg = rfs[0].train.clone();
    let sample = init_sample(&store, train_cfg.val_fraction)?;
    let metadata = cache_metadata(&data);
    let mut trainers = Vec::new();
    for rf in rfs {
        let mut sae_cfg = SaeConfig::new(rf.arch, d, width(d, rf.d_sae, rf.expansion_factor));
        if let Some(m) = &metadata {
            sae_cfg.metadata = m.clone();
        }
        trainers.push(Trainer::new(rf.train, sae_cfg, &sample).context("cannot start training")?);
    }
    let names: Vec<String> = trainers
        .iter()
        .map(|t| run_name(None, t.sae_config()))
        .collect();
    let out = a.out.clone().expect("clap requires --out");
    let dirs = run_dirs(&out, &names)?;
    write_sweep(&out, &names)?;
    let mut runs = Vec::new();
    for (trainer, dir) in trainers.into_iter().zip(dirs) {
        fit::create_run_dir(&dir, &data, &trainer)?;
        runs.push(Run { trainer, dir });
    }
    train_on_store(&store, &mut runs, &names, None, &out, a.stop_after)
}

/// SAE metadata from the manifest of an activation cache, when the data is one.
pub(crate) fn cache_metadata(data: &DataSpec) -> Option<saelab_core::config::SaeMetadata> {
    let dir = data.paths.first()?;
    if !dir.join(saelab_lm::cache::MANIFEST).is_file() {
        return None;
    }
    let m = saelab_lm::cache::read_manifest(dir).ok()?;
    if !m.complete {
        eprintln!(
            "note: {} is an incomplete activation cache ({} of {} rows); \
             `saelab extract` with the same arguments continues it",
            dir.display(),
            m.rows,
            m.target_rows
        );
    }
    Some(saelab_core::config::SaeMetadata {
        model_name: Path::new(&m.model.path)
            .file_stem()
            .map(|s| s.to_string_lossy().to_string()),
        hook_name: Some(m.hook.clone()),
        context_size: Some(m.tokens.ctx_len),
        prepend_bos: Some(m.tokens.prepend_bos),
        dataset_path: Some(m.corpus.path.clone()),
        ..Default::default()
    })
}

pub(crate) fn train_on_store(
    store: &ActivationStore,
    runs: &mut [Run],
    names: &[String],
    state: Option<&serde_json::Value>,
    out: &Path,
    stop_after: Option<u64>,
) -> Result<()> {
    let cfg = runs[0].trainer.train_config().clone();
    // The split and the shuffle come from the first run: the others must agree.
    if let Some(r) = runs.iter().find(|r| {
        let c = r.trainer.train_config();
        c.seed != cfg.seed || c.val_fraction != cfg.val_fraction
    }) {
        bail!(
            "{}: differs from {} in seed or val_fraction; runs trained in one pass share \
             the data split and order",
            r.dir.display(),
            runs[0].dir.display()
        );
    }
    let split = Split::new(store.rows(), cfg.val_fraction)?;
    let mut source = StoreSource::new(store, &split, cfg.batch_size, cfg.seed, state)?;
    let val = (!split.val.is_empty()).then(|| Validation {
        store,
        rows: split.val.clone(),
    });
    let stream_of = vec![0; runs.len()];
    train_loop(
        &mut source,
        &[val.as_ref()],
        runs,
        &stream_of,
        names,
        out,
        stop_after,
    )
}

/// Evenly spaced rows of the training range (never the validation rows).
pub(crate) fn init_sample(store: &ActivationStore, val_fraction: f64) -> Result<Matrix> {
    let split = Split::new(store.rows(), val_fraction)?;
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

// ---------------------------------------------------------------------------------
// Training on activations streamed from a model.

/// The model and the contexts a stream reads: the training part and (if it holds a
/// context) the held-out part. With `check`, the model and the training documents must
/// still have the fingerprints the run started with.
fn stream_inputs(
    spec: &StreamSpec,
    check: bool,
) -> Result<(HookedModel, ContextPlan, Option<ContextPlan>)> {
    let opts = LoadOptions {
        jsonl_field: spec.jsonl_field.clone(),
        ..LoadOptions::default()
    };
    let corpus = Corpus::load(&spec.corpus, &opts)?;
    let held_out = HeldOut::new(spec.held_out_every, spec.held_out_offset)?;
    let train_docs: Vec<&Document> = corpus.part(Part::Train, held_out);
    let held_docs: Vec<&Document> = corpus.part(Part::HeldOut, held_out);
    if train_docs.is_empty() {
        bail!(
            "{}: the train part is empty ({} documents)",
            spec.corpus.display(),
            corpus.len()
        );
    }
    if check {
        if documents_fingerprint(&train_docs) != spec.train_fingerprint {
            bail!(
                "{}: the training documents changed since the run started; \
                 the stream cannot resume exactly",
                spec.corpus.display()
            );
        }
        if model_fingerprint(&spec.model)? != spec.model_fingerprint {
            bail!(
                "{}: the model file changed since the run started",
                spec.model.display()
            );
        }
    }
    let model = HookedModel::load(&spec.model)?;
    if spec.ctx_len < 2 || spec.ctx_len > model.context_length() {
        bail!(
            "--ctx-len {} must be between 2 and the model's context length {}",
            spec.ctx_len,
            model.context_length()
        );
    }
    let tok = tokenizer_for_model(&spec.model)?;
    let bos = tok.bos_id().or(model.bos_token_id()).ok_or_else(|| {
        anyhow::anyhow!(
            "{}: names no BOS token; saelab starts every context with BOS",
            spec.model.display()
        )
    })?;
    let order = ContextOrder::Shuffled { seed: spec.seed };
    let pack = PackConfig::new(spec.ctx_len, bos);
    let train = ContextPlan::new(&tok, &train_docs, pack.clone(), order)
        .map_err(|e| anyhow::anyhow!("{} (train part): {e}", spec.corpus.display()))?;
    let held = if held_docs.is_empty() {
        None
    } else {
        ContextPlan::new(&tok, &held_docs, pack, order).ok()
    };
    if held.is_none() {
        eprintln!(
            "note: {} has no held-out context; training runs without validation",
            spec.corpus.display()
        );
    }
    Ok((model, train, held))
}

/// Held-out activations per hook (`val_rows` of them), as in-memory stores.
fn stream_validation(
    model: &HookedModel,
    held: Option<&ContextPlan>,
    hooks: &[String],
    spec: &StreamSpec,
) -> Result<Vec<Option<ActivationStore>>> {
    let Some(plan) = held.filter(|_| spec.val_rows > 0) else {
        return Ok(hooks.iter().map(|_| None).collect());
    };
    let pb = progress::bar(spec.val_rows as u64, "held-out tokens");
    let ms = collect_rows(
        model,
        plan,
        hooks,
        spec.keep_bos,
        spec.batch_contexts,
        spec.val_rows,
        |n| pb.set_position(n as u64),
    )?;
    pb.finish_and_clear();
    ms.iter()
        .map(|m| Ok(Some(ActivationStore::from_matrix(m)?)))
        .collect()
}

fn new_stream(a: &Args) -> Result<()> {
    let model_path = a.model.clone().expect("checked by the caller");
    let corpus = a
        .corpus
        .clone()
        .expect("clap requires --corpus with --model");
    if a.hooks.is_empty() {
        bail!("--model needs at least one --hook (e.g. --hook blocks.15.hook_resid_post)");
    }
    let mut hooks: Vec<String> = Vec::new();
    for h in &a.hooks {
        let c = HookPoint::parse(h)
            .map(|hp| hp.name())
            .unwrap_or_else(|_| h.clone());
        if !hooks.contains(&c) {
            hooks.push(c);
        }
    }
    let base = base_table(a)?;
    let cs = combos(a, &hooks);
    let parts = cs
        .iter()
        .map(|c| runfile::parse_model(combo_table(&base, c)?))
        .collect::<Result<Vec<_>>>()?;
    let train_cfg: TrainConfig = parts[0].train.clone();
    train_cfg.validate()?;
    let out = a.out.clone().expect("clap requires --out");
    for f in ["run.json", SWEEP_FILE] {
        if out.join(f).exists() {
            bail!(
                "{}: already holds a run; use --resume to continue it or choose another --out",
                out.display()
            );
        }
    }
    let opts = LoadOptions {
        jsonl_field: a.jsonl_field.clone().unwrap_or_else(|| "text".into()),
        ..LoadOptions::default()
    };
    let corpus_docs = Corpus::load(&corpus, &opts)?;
    let held_out = HeldOut::default();
    let spec = StreamSpec {
        model: model_path.clone(),
        model_fingerprint: model_fingerprint(&model_path)?,
        corpus: corpus.clone(),
        jsonl_field: opts.jsonl_field.clone(),
        train_fingerprint: documents_fingerprint(&corpus_docs.part(Part::Train, held_out)),
        hook: String::new(),
        ctx_len: a.ctx_len.unwrap_or(128),
        batch_contexts: a.batch_contexts.unwrap_or(8),
        window_contexts: a.window_contexts.unwrap_or(DEFAULT_WINDOW_CONTEXTS),
        keep_bos: a.keep_bos,
        seed: train_cfg.seed,
        val_rows: a.val_tokens.unwrap_or(DEFAULT_VAL_TOKENS),
        held_out_every: held_out.every(),
        held_out_offset: held_out.offset(),
    };
    drop(corpus_docs);
    let (model, train_plan, held_plan) = stream_inputs(&spec, false)?;
    for h in &hooks {
        model.hook(h)?;
    }
    let mut source = StreamSource::new(
        &model,
        &train_plan,
        StreamOptions {
            hooks: hooks.clone(),
            batch_size: train_cfg.batch_size,
            batch_contexts: spec.batch_contexts,
            window_contexts: spec.window_contexts,
            keep_bos: spec.keep_bos,
            seed: spec.seed,
        },
        None,
    )?;
    let d = model.d_model();
    let mut trainers = Vec::new();
    let mut stream_of = Vec::new();
    let mut samples: Vec<Option<Matrix>> = vec![None; hooks.len()];
    for (c, part) in cs.iter().zip(parts) {
        let hook = c.hook.clone().expect("streaming combos have a hook");
        let s = hooks.iter().position(|h| *h == hook).expect("listed hook");
        if samples[s].is_none() {
            samples[s] = Some(source.sample(s, INIT_SAMPLE_ROWS)?);
        }
        let mut sae_cfg = SaeConfig::new(part.arch, d, width(d, part.d_sae, part.expansion_factor));
        sae_cfg.metadata = saelab_core::config::SaeMetadata {
            model_name: model_path
                .file_stem()
                .map(|s| s.to_string_lossy().to_string()),
            hook_name: Some(hook.clone()),
            context_size: Some(spec.ctx_len),
            prepend_bos: Some(true),
            dataset_path: Some(corpus.display().to_string()),
            ..Default::default()
        };
        let sample = samples[s].as_ref().expect("just computed");
        trainers.push(Trainer::new(part.train, sae_cfg, sample).context("cannot start training")?);
        stream_of.push(s);
    }
    let names: Vec<String> = trainers
        .iter()
        .zip(&stream_of)
        .map(|(t, &s)| run_name(Some(&hooks[s]), t.sae_config()))
        .collect();
    let dirs = run_dirs(&out, &names)?;
    let stores = stream_validation(&model, held_plan.as_ref(), &hooks, &spec)?;
    write_sweep(&out, &names)?;
    let mut runs = Vec::new();
    for ((trainer, dir), &s) in trainers.into_iter().zip(dirs).zip(&stream_of) {
        let mut run_spec = spec.clone();
        run_spec.hook = hooks[s].clone();
        fit::create_run_dir_with(&dir, serde_json::json!({ "stream": run_spec }), &trainer)?;
        runs.push(Run { trainer, dir });
    }
    let vals: Vec<Option<Validation>> = stores
        .iter()
        .map(|s| {
            s.as_ref().map(|store| Validation {
                store,
                rows: 0..store.rows(),
            })
        })
        .collect();
    let val_refs: Vec<Option<&Validation>> = vals.iter().map(Option::as_ref).collect();
    let result = train_loop(
        &mut source,
        &val_refs,
        &mut runs,
        &stream_of,
        &names,
        &out,
        a.stop_after,
    );
    if result.is_ok() {
        println!("streamed {} model tokens", source.model_tokens());
    }
    result
}

// ---------------------------------------------------------------------------------
// Resuming.

pub(crate) fn resume(dir: &Path, stop_after: Option<u64>) -> Result<()> {
    let sweep = dir.join(SWEEP_FILE);
    let names: Vec<String> = if sweep.is_file() {
        let v: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&sweep).with_context(|| sweep.display().to_string())?,
        )
        .map_err(|e| anyhow::anyhow!("{}: not valid JSON: {e}", sweep.display()))?;
        serde_json::from_value(v["runs"].clone())
            .map_err(|e| anyhow::anyhow!("{}: no valid `runs` list: {e}", sweep.display()))?
    } else {
        vec![String::new()]
    };
    let dirs: Vec<PathBuf> = names
        .iter()
        .map(|n| {
            if n.is_empty() {
                dir.to_path_buf()
            } else {
                dir.join(n)
            }
        })
        .collect();
    let mut runs = Vec::new();
    let mut states = Vec::new();
    let mut datas = Vec::new();
    for d in &dirs {
        let (run, state) = fit::resume_run(d)?;
        datas.push(fit::read_run_data(d)?);
        states.push(state);
        runs.push(run);
    }
    if states.iter().any(|s| *s != states[0]) {
        bail!(
            "{}: the runs' checkpoints are at different data positions (interrupted while \
             checkpointing?); resume them one by one",
            dir.display()
        );
    }
    let names: Vec<String> = dirs
        .iter()
        .map(|d| {
            d.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string()
        })
        .collect();
    eprintln!(
        "resuming {} at step {} of {}",
        dir.display(),
        runs[0].trainer.step_count(),
        runs[0].trainer.train_config().total_steps()
    );
    if datas[0].get("stream").is_some() {
        let specs = datas
            .iter()
            .zip(&dirs)
            .map(|(v, d)| {
                serde_json::from_value::<StreamSpec>(v["stream"].clone()).map_err(|e| {
                    anyhow::anyhow!(
                        "{}: invalid stream in run.json: {e}",
                        d.join("run.json").display()
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if specs.iter().any(|s| !s.same_pass(&specs[0])) {
            bail!(
                "{}: the runs were not streamed from one pass over the model",
                dir.display()
            );
        }
        let mut hooks: Vec<String> = Vec::new();
        for s in &specs {
            if !hooks.contains(&s.hook) {
                hooks.push(s.hook.clone());
            }
        }
        let stream_of: Vec<usize> = specs
            .iter()
            .map(|s| hooks.iter().position(|h| *h == s.hook).expect("listed"))
            .collect();
        let spec = &specs[0];
        let (model, train_plan, held_plan) = stream_inputs(spec, true)?;
        let cfg = runs[0].trainer.train_config().clone();
        let mut source = StreamSource::new(
            &model,
            &train_plan,
            StreamOptions {
                hooks: hooks.clone(),
                batch_size: cfg.batch_size,
                batch_contexts: spec.batch_contexts,
                window_contexts: spec.window_contexts,
                keep_bos: spec.keep_bos,
                seed: spec.seed,
            },
            Some(&states[0]),
        )?;
        let stores = stream_validation(&model, held_plan.as_ref(), &hooks, spec)?;
        let vals: Vec<Option<Validation>> = stores
            .iter()
            .map(|s| {
                s.as_ref().map(|store| Validation {
                    store,
                    rows: 0..store.rows(),
                })
            })
            .collect();
        let val_refs: Vec<Option<&Validation>> = vals.iter().map(Option::as_ref).collect();
        train_loop(
            &mut source,
            &val_refs,
            &mut runs,
            &stream_of,
            &names,
            dir,
            stop_after,
        )
    } else {
        let data: DataSpec = serde_json::from_value(datas[0].clone()).map_err(|e| {
            anyhow::anyhow!(
                "{}: no valid `data` entry: {e}",
                dirs[0].join("run.json").display()
            )
        })?;
        if datas.iter().any(|d| *d != datas[0]) {
            bail!("{}: the runs read different data", dir.display());
        }
        let store = data.open()?;
        train_on_store(&store, &mut runs, &names, Some(&states[0]), dir, stop_after)
    }
}

// ---------------------------------------------------------------------------------
// The loop and its output.

fn train_loop(
    source: &mut dyn BatchSource,
    vals: &[Option<&Validation>],
    runs: &mut [Run],
    stream_of: &[usize],
    names: &[String],
    out: &Path,
    stop_after: Option<u64>,
) -> Result<()> {
    let total = runs[0].trainer.train_config().total_steps();
    let start = runs[0].trainer.step_count();
    let n_runs = runs.len();
    let pb = progress::bar(total, "steps");
    pb.set_position(start);
    let mut last_val: Vec<Option<ReconMetrics>> = vec![None; n_runs];
    let label = |i: usize| {
        if n_runs > 1 {
            format!("{}: ", names[i])
        } else {
            String::new()
        }
    };
    let result = fit::fit_streams(source, vals, runs, stream_of, &STOP, |ev| match ev {
        Event::Step { run, report } => {
            if run == 0 {
                pb.set_position(report.step);
                if report.step % 10 == 0 || report.step == total {
                    pb.set_message(format!(
                        "loss {:.4} L0 {:.1} FVU {:.4} dead {:.3}",
                        report.loss, report.l0, report.fvu, report.dead_frac
                    ));
                }
            }
            if run + 1 == n_runs && stop_after.is_some_and(|s| report.step >= s) {
                STOP.store(true, Ordering::SeqCst);
            }
        }
        Event::Eval { run, metrics, step } => {
            pb.println(format!(
                "{}step {step}: val FVU {:.4}, L0 {:.1}, dead {:.3}",
                label(run),
                metrics.fvu,
                metrics.l0,
                metrics.dead_frac
            ));
            last_val[run] = Some(metrics.clone());
        }
        Event::Checkpoint { step } => pb.println(format!("checkpoint at step {step}")),
    });
    pb.finish_and_clear();
    if let Err(saelab_core::Error::Interrupted) = result {
        return Err(
            anyhow::Error::new(saelab_core::Error::Interrupted).context(format!(
            "interrupted at step {}; checkpoint saved — continue with: saelab train --resume {}",
            runs[0].trainer.step_count(),
            out.display()
        )),
        );
    }
    result?;
    if n_runs == 1 {
        if let Some(m) = &last_val[0] {
            println!("{}", crate::cmd::eval::table(m, None));
        }
        println!("SAE written to {}", runs[0].dir.join("sae").display());
        return Ok(());
    }
    let w = names.iter().map(String::len).max().unwrap_or(3).max(3);
    println!("{:<w$} {:>8} {:>8} {:>8}", "run", "L0", "FVU", "dead");
    for (name, m) in names.iter().zip(&last_val) {
        match m {
            Some(m) => println!(
                "{name:<w$} {:>8.1} {:>8.4} {:>8.4}",
                m.l0, m.fvu, m.dead_frac
            ),
            None => println!("{name:<w$} (no validation rows)"),
        }
    }
    println!("SAEs written to {}/<run>/sae", out.display());
    Ok(())
}
