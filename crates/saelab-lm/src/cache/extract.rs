//! The extraction job: run the model over the contexts of a plan and write every
//! hook's cache, continuing where an earlier run stopped (see [`crate::cache`]).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use saelab_core::store::manifest::{
    CacheManifest, CorpusInfo, ModelInfo, TokenInfo, FORMAT, VERSION,
};

use super::manifest::{
    cache_status, is_temp_name, part_name, write_manifest, CacheSpec, CacheStatus,
};
use super::shard::ShardWriter;
use crate::contexts::{run_contexts, ContextPlan, ContextRef};
use crate::error::{Error, Result};
use crate::model::HookedModel;

/// Default rows per shard (about 75 MB of f32 at d = 576).
pub const DEFAULT_SHARD_ROWS: usize = 32_768;

/// The cache directory of each hook: `out` itself for one hook, `out/<hook>` for
/// several.
pub fn hook_dirs(out: &Path, hooks: &[String]) -> Vec<PathBuf> {
    if hooks.len() == 1 {
        vec![out.to_path_buf()]
    } else {
        hooks.iter().map(|h| out.join(h)).collect()
    }
}

/// How much to extract and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtractOptions {
    /// Rows to store (stops at the first whole context that reaches it, or at the end
    /// of the corpus part).
    pub target_rows: u64,
    /// Contexts per forward.
    pub batch_contexts: usize,
    /// A shard is closed once it holds at least this many rows (at a batch boundary).
    pub shard_rows: usize,
}

/// One extraction: a model, the contexts, and per hook its spec and directory.
pub struct ExtractJob<'a> {
    /// The model.
    pub model: &'a HookedModel,
    /// The contexts of the corpus part, in order.
    pub plan: &'a ContextPlan,
    /// One spec per hook (equal but for the hook).
    pub specs: Vec<CacheSpec>,
    /// One cache directory per hook ([`hook_dirs`]).
    pub dirs: Vec<PathBuf>,
    /// Sizes.
    pub opts: ExtractOptions,
}

/// Progress of an extraction, reported after every batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Rows stored so far (including those of an earlier, resumed run).
    pub rows: u64,
    /// Rows asked for.
    pub target_rows: u64,
    /// Rows available in the whole corpus part.
    pub rows_available: u64,
    /// Contexts processed so far (including earlier runs).
    pub contexts: u64,
    /// Complete shards written so far.
    pub shards: usize,
    /// Tokens run through the model in this session.
    pub model_tokens: u64,
    /// Rows the cache held when this session started.
    pub resumed_rows: u64,
}

/// What an extraction did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtractSummary {
    /// Final progress.
    pub progress: Progress,
    /// Whether the cache is complete.
    pub complete: bool,
    /// Whether the corpus part ran out before the target.
    pub exhausted: bool,
    /// Whether the cache was already complete (nothing was run).
    pub already_complete: bool,
}

/// Runs (or continues) an extraction; see the module docs. Stops at a safe point when
/// `stop` is set — after writing the rows buffered so far as a shard — and returns
/// `saelab_core::Error::Interrupted`. `on_progress` is called once before the first
/// batch (with the position an earlier run reached) and after every batch.
pub fn extract(
    job: &ExtractJob<'_>,
    stop: &AtomicBool,
    mut on_progress: impl FnMut(&Progress),
) -> Result<ExtractSummary> {
    let ExtractJob {
        model,
        plan,
        specs,
        dirs,
        opts,
    } = job;
    if specs.is_empty() || specs.len() != dirs.len() {
        return Err(Error::config("an extraction needs one directory per hook"));
    }
    if opts.batch_contexts == 0 || opts.shard_rows == 0 {
        return Err(Error::config("batch and shard sizes must be positive"));
    }
    if plan.ctx_len() != specs[0].ctx_len {
        return Err(Error::config(
            "the plan's context length differs from the spec's",
        ));
    }
    let hooks: Vec<String> = specs.iter().map(|s| s.hook.clone()).collect();
    let keep_bos = specs[0].keep_bos;
    let rows_available = if keep_bos {
        plan.total_tokens()
    } else {
        plan.non_bos_tokens()
    };

    // Open or create every hook's cache. A hook without a cache beside hooks whose
    // caches hold shards cannot be caught up: refuse rather than cut the others back.
    let statuses = specs
        .iter()
        .zip(dirs)
        .map(|(spec, dir)| cache_status(dir, spec))
        .collect::<Result<Vec<_>>>()?;
    let has_shards = |s: &CacheStatus| match s {
        CacheStatus::Absent => false,
        CacheStatus::Partial(m) | CacheStatus::Complete(m) => !m.shards.is_empty(),
    };
    if let Some(i) = statuses.iter().position(|s| *s == CacheStatus::Absent) {
        if let Some(j) = statuses.iter().position(has_shards) {
            return Err(Error::bad_file(
                &dirs[i],
                format!(
                    "has no cache while {} already holds shards: the hooks of one --out \
                     are extracted together; extract the new hook into another --out",
                    dirs[j].display()
                ),
            ));
        }
    }
    let mut manifests = Vec::with_capacity(specs.len());
    for ((spec, dir), status) in specs.iter().zip(dirs).zip(statuses) {
        let m = match status {
            CacheStatus::Absent => {
                fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
                let m = new_manifest(model, plan, spec, opts.target_rows, rows_available);
                write_manifest(dir, &m, "no shard yet")?;
                m
            }
            CacheStatus::Partial(m) | CacheStatus::Complete(m) => *m,
        };
        manifests.push(m);
    }
    reconcile(&mut manifests, dirs)?;
    for (m, spec) in manifests.iter_mut().zip(specs) {
        m.model.path = spec.model_path.display().to_string();
        m.corpus.path = spec.corpus_path.display().to_string();
    }

    let m0 = &manifests[0];
    let mut progress = Progress {
        rows: m0.rows,
        target_rows: opts.target_rows,
        rows_available,
        contexts: m0.contexts,
        shards: m0.shards.len(),
        model_tokens: 0,
        resumed_rows: m0.rows,
    };
    let n_ctx = plan.len() as u64;
    let done = |p: &Progress| p.rows >= opts.target_rows || p.contexts >= n_ctx;
    if m0.complete && done(&progress) {
        return Ok(ExtractSummary {
            progress,
            complete: true,
            exhausted: m0.exhausted,
            already_complete: true,
        });
    }
    for m in &mut manifests {
        m.complete = false;
        m.exhausted = false;
        m.target_rows = opts.target_rows;
    }
    on_progress(&progress);

    let mut shards = ShardWriter::new(dirs, &hooks, model.d_model(), progress.contexts);
    while !done(&progress) {
        if stop.load(Ordering::SeqCst) {
            progress.shards = shards.flush(&mut manifests)?;
            on_progress(&progress);
            return Err(saelab_core::Error::Interrupted.into());
        }
        let next = progress.contexts;
        let mut batch: Vec<ContextRef<'_>> = Vec::with_capacity(opts.batch_contexts);
        let mut batch_rows = 0u64;
        while batch.len() < opts.batch_contexts
            && next + (batch.len() as u64) < n_ctx
            && progress.rows + batch_rows < opts.target_rows
        {
            let c = plan.first_epoch((next + batch.len() as u64) as usize);
            batch_rows += ContextPlan::rows_of(&c, keep_bos) as u64;
            batch.push(c);
        }
        let got = run_contexts(model, &hooks, &batch, keep_bos)?;
        debug_assert_eq!(got.rows as u64, batch_rows);
        shards.push(&got, batch.len() as u64);
        progress.contexts += batch.len() as u64;
        progress.rows += got.rows as u64;
        progress.model_tokens += (batch.len() * plan.ctx_len()) as u64;
        if shards.rows() >= opts.shard_rows {
            progress.shards = shards.flush(&mut manifests)?;
        }
        on_progress(&progress);
    }
    progress.shards = shards.flush(&mut manifests)?;
    let exhausted = progress.rows < opts.target_rows;
    for (m, dir) in manifests.iter_mut().zip(dirs) {
        m.complete = true;
        m.exhausted = exhausted;
        write_manifest(dir, m, &format!("{} complete shards", m.shards.len()))?;
    }
    Ok(ExtractSummary {
        progress,
        complete: true,
        exhausted,
        already_complete: false,
    })
}

/// The manifest of a new, empty cache of `spec` over `plan`.
fn new_manifest(
    model: &HookedModel,
    plan: &ContextPlan,
    spec: &CacheSpec,
    target_rows: u64,
    rows_available: u64,
) -> CacheManifest {
    let bos_id = plan.first_epoch(0).tokens[0];
    CacheManifest {
        format: FORMAT.into(),
        version: VERSION,
        complete: false,
        exhausted: false,
        hook: spec.hook.clone(),
        d: model.d_model(),
        dtype: spec.dtype,
        rows: 0,
        contexts: 0,
        target_rows,
        shards: Vec::new(),
        model: ModelInfo {
            path: spec.model_path.display().to_string(),
            fingerprint: spec.model_fingerprint.clone(),
            architecture: model.info().family.into(),
            n_layers: model.n_layers(),
            d_model: model.d_model(),
        },
        tokens: TokenInfo {
            ctx_len: spec.ctx_len,
            bos_id,
            prepend_bos: true,
            keep_bos: spec.keep_bos,
        },
        corpus: CorpusInfo {
            path: spec.corpus_path.display().to_string(),
            part: part_name(spec.part).into(),
            held_out_every: spec.held_out.every(),
            held_out_offset: spec.held_out.offset(),
            documents: spec.documents,
            fingerprint: spec.corpus_fingerprint.clone(),
            order: spec.order,
            contexts_available: plan.len() as u64,
            rows_available,
        },
        saelab_version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// Brings the hooks' caches to a common prefix of shards and removes leftovers
/// (temporary files, shard files the manifest does not list).
fn reconcile(manifests: &mut [CacheManifest], dirs: &[PathBuf]) -> Result<()> {
    let common = manifests.iter().map(|m| m.shards.len()).min().unwrap_or(0);
    for i in 0..common {
        let s0 = &manifests[0].shards[i];
        if manifests.iter().any(|m| {
            (m.shards[i].first_context, m.shards[i].contexts) != (s0.first_context, s0.contexts)
        }) {
            return Err(Error::bad_file(
                &dirs[0],
                format!(
                    "the hooks' caches disagree on the contexts of shard {i}; \
                     delete them and extract again"
                ),
            ));
        }
    }
    for (m, dir) in manifests.iter_mut().zip(dirs) {
        if m.shards.len() > common {
            m.shards.truncate(common);
            m.rows = m.shards.iter().map(|s| s.rows).sum();
            m.contexts = m.shards.iter().map(|s| s.contexts).sum();
            m.complete = false;
            write_manifest(dir, m, &format!("{common} complete shards"))?;
        }
        let listed: std::collections::HashSet<&str> =
            m.shards.iter().map(|s| s.file.as_str()).collect();
        for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            let name = entry.file_name().to_string_lossy().to_string();
            let stale_shard = name.starts_with("shard-")
                && name.ends_with(".safetensors")
                && !listed.contains(name.as_str());
            if is_temp_name(&name) || stale_shard {
                let p = entry.path();
                fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
            }
        }
        for s in &m.shards {
            let p = dir.join(&s.file);
            if !p.is_file() {
                return Err(Error::bad_file(
                    &p,
                    "listed in manifest.json but missing; the cache is damaged, delete it and extract again",
                ));
            }
        }
    }
    Ok(())
}
