//! The activation cache: activations of one hook point over a corpus part, written by
//! running the model over packed contexts, in safetensors shards plus a manifest.
//!
//! # Layout
//!
//! A cache is a directory (one per hook; `saelab extract` with several hooks writes
//! `OUT/<hook name>/` for each, see [`hook_dirs`]):
//!
//! ```text
//! manifest.json
//! shard-00000.safetensors
//! shard-00001.safetensors
//! ...
//! ```
//!
//! Each shard holds whole contexts — `rows` activation rows, one per kept token — as
//!
//! | tensor | dtype | shape | meaning |
//! |---|---|---|---|
//! | `activations` | F32 or BF16 | `[rows, d]` | the hook's value at the token |
//! | `token_ids` | I64 | `[rows]` | the token |
//! | `doc_ids` | I64 | `[rows]` | the document ([`crate::text::Document::id`]) |
//! | `positions` | I64 | `[rows]` | position in the document (BOS = 0, first text token = 1; −1 for a BOS prepended to a context) |
//! | `context_ids` | I64 | `[rows]` | global index of the context in the cache's order ([`crate::contexts`]) |
//! | `context_positions` | I64 | `[rows]` | position of the token in the context fed to the model |
//!
//! and `__metadata__` strings (`format`, `hook`, `first_context`). BOS positions (a
//! document's own BOS and the BOS prepended to every context) are left out unless
//! `keep_bos` is set: their residual norms are huge and DESIGN.md excludes them from
//! every metric. Rows keep the order of the contexts and of the tokens in them.
//!
//! `manifest.json` ([`CacheManifest`]) says what the cache holds and how it was made:
//! format and version, the model (path, fingerprint, shape), the hook, `d`, dtype,
//! context length and BOS handling, the corpus part, the shard list with row and
//! context counts, total rows, the target, and whether the cache is `complete`.
//! Its schema is saelab-core's ([`saelab_core::store::manifest`]), so that
//! [`saelab_core::store::ActivationStore::open`] reads a cache directory directly
//! through the same types.
//!
//! # Consistency and resuming
//!
//! Every shard is written to a temporary file, synced and renamed into place; the
//! manifest is rewritten the same way after each shard. The manifest only ever lists
//! complete shards, so whatever happens — Ctrl-C (the rows buffered so far are written
//! as a last, smaller shard), a kill, a full disk (the shard being written is
//! discarded, with a message naming it) — the directory is a valid cache of the
//! contexts its shards list. The contexts are visited in a deterministic order, so
//! running the same extraction again continues at the first context the shards do not
//! hold ([`extract`]); temporary files and shard files the manifest does not list are
//! removed first. With several hooks, shards of equal index hold the same contexts; a
//! hook whose manifest got ahead of the others (a kill between two manifest writes) is
//! cut back to the common prefix.
//!
//! Extraction is deterministic for a given model, corpus part, order and context
//! length; the batch size (contexts per forward) may change the last bits of the
//! activations through the matrix kernels' blocking, but never which rows are stored.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::contexts::{run_contexts, CapturedRows, ContextOrder, ContextPlan, ContextRef};
use crate::error::{Error, Result};
use crate::model::HookedModel;
use crate::text::{HeldOut, Part, NOT_IN_DOCUMENT};

pub use saelab_core::store::manifest::{
    read_manifest, CacheDType, CacheManifest, CorpusInfo, ModelInfo, ShardInfo, TokenInfo, FORMAT,
    MANIFEST, VERSION,
};

/// Default rows per shard (about 75 MB of f32 at d = 576).
pub const DEFAULT_SHARD_ROWS: usize = 32_768;

fn write_manifest(dir: &Path, m: &CacheManifest, consistent: &str) -> Result<()> {
    let path = dir.join(MANIFEST);
    let bytes = serde_json::to_vec_pretty(m).expect("serialisable");
    write_atomic(&path, consistent, |w| w.write_all(&bytes))
}

/// What identifies a cache's contents: a rerun continues a cache only if all of this
/// matches what its manifest says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheSpec {
    /// Hook point (canonical name).
    pub hook: String,
    /// Stored dtype.
    pub dtype: CacheDType,
    /// Store BOS rows.
    pub keep_bos: bool,
    /// Tokens per context.
    pub ctx_len: usize,
    /// Model path (recorded; may change between runs).
    pub model_path: PathBuf,
    /// Model fingerprint (must match).
    pub model_fingerprint: String,
    /// Corpus path (recorded; may change between runs).
    pub corpus_path: PathBuf,
    /// Fingerprint of the part's documents (must match).
    pub corpus_fingerprint: String,
    /// Documents in the part.
    pub documents: usize,
    /// Corpus part.
    pub part: Part,
    /// Held-out rule.
    pub held_out: HeldOut,
    /// Context order.
    pub order: ContextOrder,
}

/// `train`, `heldout` or `all`.
pub fn part_name(p: Part) -> &'static str {
    match p {
        Part::Train => "train",
        Part::HeldOut => "heldout",
        Part::All => "all",
    }
}

impl CacheSpec {
    /// The first setting in which `m` differs from this spec, as `what (cache) vs (now)`.
    pub fn mismatch(&self, m: &CacheManifest) -> Option<String> {
        let diff = |what: &str, a: &dyn std::fmt::Display, b: &dyn std::fmt::Display| {
            Some(format!("{what} is {a} in the cache, {b} now"))
        };
        if m.hook != self.hook {
            return diff("the hook", &m.hook, &self.hook);
        }
        if m.dtype != self.dtype {
            return diff("the dtype", &m.dtype.name(), &self.dtype.name());
        }
        if m.tokens.ctx_len != self.ctx_len {
            return diff("the context length", &m.tokens.ctx_len, &self.ctx_len);
        }
        if m.tokens.keep_bos != self.keep_bos {
            return diff("keep_bos", &m.tokens.keep_bos, &self.keep_bos);
        }
        if m.model.fingerprint != self.model_fingerprint {
            return Some(format!(
                "the model differs (fingerprint {} of {} in the cache, {} of {} now)",
                m.model.fingerprint,
                m.model.path,
                self.model_fingerprint,
                self.model_path.display()
            ));
        }
        if m.corpus.part != part_name(self.part) {
            return diff("the corpus part", &m.corpus.part, &part_name(self.part));
        }
        if (m.corpus.held_out_every, m.corpus.held_out_offset)
            != (self.held_out.every(), self.held_out.offset())
        {
            return Some("the held-out rule differs".into());
        }
        if m.corpus.fingerprint != self.corpus_fingerprint {
            return Some(format!(
                "the corpus part differs ({} documents in the cache, {} now, or changed text)",
                m.corpus.documents, self.documents
            ));
        }
        if m.corpus.order != self.order {
            return Some(format!(
                "the context order differs ({:?} in the cache, {:?} now)",
                m.corpus.order, self.order
            ));
        }
        None
    }
}

/// What a directory holds with respect to a [`CacheSpec`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    /// Nothing yet (missing or empty directory).
    Absent,
    /// A cache of this spec, not complete.
    Partial(Box<CacheManifest>),
    /// A complete cache of this spec.
    Complete(Box<CacheManifest>),
}

/// Checks what `dir` holds. Errors if it holds something else: files but no manifest,
/// a corrupt manifest, or a cache made with different settings (naming the first).
pub fn cache_status(dir: &Path, spec: &CacheSpec) -> Result<CacheStatus> {
    if !dir.exists() {
        return Ok(CacheStatus::Absent);
    }
    if !dir.is_dir() {
        return Err(Error::bad_file(dir, "exists and is not a directory"));
    }
    if !dir.join(MANIFEST).exists() {
        let foreign = fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok())
            .any(|e| !is_temp_name(&e.file_name().to_string_lossy()));
        if foreign {
            return Err(Error::bad_file(
                dir,
                "exists and is not an activation cache (no manifest.json); choose another --out",
            ));
        }
        return Ok(CacheStatus::Absent);
    }
    let m = read_manifest(dir)?;
    if let Some(why) = spec.mismatch(&m) {
        return Err(Error::bad_file(
            dir,
            format!(
                "holds an activation cache made with other settings ({why}); \
                 use another --out or delete it"
            ),
        ));
    }
    Ok(if m.complete {
        CacheStatus::Complete(Box::new(m))
    } else {
        CacheStatus::Partial(Box::new(m))
    })
}

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

    let mut buf = CapturedRows::new(hooks.len(), model.d_model());
    let mut buf_first = progress.contexts;
    let mut buf_contexts = 0u64;
    let flush = |buf: &mut CapturedRows,
                 buf_first: &mut u64,
                 buf_contexts: &mut u64,
                 manifests: &mut Vec<CacheManifest>,
                 progress: &mut Progress|
     -> Result<()> {
        if *buf_contexts == 0 {
            return Ok(());
        }
        write_shard(dirs, &hooks, manifests, buf, *buf_first, *buf_contexts)?;
        *buf_first += *buf_contexts;
        *buf_contexts = 0;
        buf.clear();
        progress.shards = manifests[0].shards.len();
        Ok(())
    };
    while !done(&progress) {
        if stop.load(Ordering::SeqCst) {
            flush(
                &mut buf,
                &mut buf_first,
                &mut buf_contexts,
                &mut manifests,
                &mut progress,
            )?;
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
        buf.append(&got);
        buf_contexts += batch.len() as u64;
        progress.contexts += batch.len() as u64;
        progress.rows += got.rows as u64;
        progress.model_tokens += (batch.len() * plan.ctx_len()) as u64;
        if buf.rows >= opts.shard_rows {
            flush(
                &mut buf,
                &mut buf_first,
                &mut buf_contexts,
                &mut manifests,
                &mut progress,
            )?;
        }
        on_progress(&progress);
    }
    flush(
        &mut buf,
        &mut buf_first,
        &mut buf_contexts,
        &mut manifests,
        &mut progress,
    )?;
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
            architecture: "llama".into(),
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

fn shard_name(i: usize) -> String {
    format!("shard-{i:05}.safetensors")
}

fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
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

/// The message for a failed write: names the file, says whether the disk is full and
/// what is still consistent.
fn write_error(path: &Path, e: &std::io::Error, consistent: &str) -> Error {
    // ENOSPC, EFBIG, EDQUOT: no room for the file.
    let full = matches!(e.raw_os_error(), Some(28) | Some(27) | Some(122));
    let what = if full { "disk full" } else { "write failed" };
    Error::bad_file(
        path,
        format!(
            "{what} ({e}); the cache is unchanged and consistent ({consistent}): \
             fix the problem and run the same command again to resume"
        ),
    )
}

/// [`saelab_core::io::write_file_with`], with an error that says what `consistent`
/// describes (what the cache still holds intact).
fn write_atomic(
    path: &Path,
    consistent: &str,
    fill: impl FnOnce(&mut BufWriter<fs::File>) -> std::io::Result<()>,
) -> Result<()> {
    saelab_core::io::write_file_with(path, fill).map_err(|e| write_error(path, &e, consistent))
}

/// Writes the buffered rows as the next shard of every hook, then the manifests.
fn write_shard(
    dirs: &[PathBuf],
    hooks: &[String],
    manifests: &mut [CacheManifest],
    buf: &CapturedRows,
    first_context: u64,
    contexts: u64,
) -> Result<()> {
    let index = manifests[0].shards.len();
    let file = shard_name(index);
    let consistent = if index == 0 {
        "no shard yet".to_string()
    } else {
        format!("{index} complete shards, {} rows", manifests[0].rows)
    };
    let ints = shard_ints(buf);
    for (h, dir) in dirs.iter().enumerate() {
        let m = &manifests[h];
        let path = dir.join(&file);
        write_atomic(&path, &consistent, |w| {
            write_shard_bytes(w, m.dtype, &hooks[h], first_context, buf, &ints, h)
        })?;
    }
    for (m, dir) in manifests.iter_mut().zip(dirs) {
        m.shards.push(ShardInfo {
            file: file.clone(),
            rows: buf.rows as u64,
            contexts,
            first_context,
        });
        m.rows += buf.rows as u64;
        m.contexts += contexts;
        write_manifest(dir, m, &consistent)?;
    }
    Ok(())
}

/// The per-row integer tensors of a shard, by name (the same for every hook).
type ShardInts = [(&'static str, Vec<i64>); 5];

/// Token ids, document ids, positions (−1 for a prepended BOS), context ids and
/// positions of the rows in `buf`, as the shard's i64 tensors.
fn shard_ints(buf: &CapturedRows) -> ShardInts {
    [
        (
            "token_ids",
            buf.token_ids.iter().map(|&x| x as i64).collect(),
        ),
        ("doc_ids", buf.doc_ids.iter().map(|&x| x as i64).collect()),
        (
            "positions",
            buf.positions
                .iter()
                .map(|&p| if p == NOT_IN_DOCUMENT { -1 } else { p as i64 })
                .collect(),
        ),
        (
            "context_ids",
            buf.context_ids.iter().map(|&x| x as i64).collect(),
        ),
        (
            "context_positions",
            buf.context_positions.iter().map(|&x| x as i64).collect(),
        ),
    ]
}

/// The safetensors encoding of one shard, streamed to `w`.
fn write_shard_bytes(
    w: &mut impl Write,
    dtype: CacheDType,
    hook: &str,
    first_context: u64,
    buf: &CapturedRows,
    ints: &ShardInts,
    h: usize,
) -> std::io::Result<()> {
    let (rows, d) = (buf.rows, buf.d);
    let mut header = serde_json::Map::new();
    let mut meta = BTreeMap::new();
    meta.insert("format", FORMAT.to_string());
    meta.insert("hook", hook.to_string());
    meta.insert("first_context", first_context.to_string());
    header.insert("__metadata__".into(), serde_json::json!(meta));
    let act_bytes = rows * d * dtype.size();
    header.insert(
        "activations".into(),
        serde_json::json!({"dtype": dtype.dtype().name(), "shape": [rows, d],
                           "data_offsets": [0, act_bytes]}),
    );
    let mut off = act_bytes;
    for (name, v) in ints {
        header.insert(
            (*name).into(),
            serde_json::json!({"dtype": "I64", "shape": [v.len()], "data_offsets": [off, off + 8 * v.len()]}),
        );
        off += 8 * v.len();
    }
    let mut text = serde_json::to_string(&header).expect("serialisable");
    while text.len() & 7 != 0 {
        text.push(' ');
    }
    w.write_all(&(text.len() as u64).to_le_bytes())?;
    w.write_all(text.as_bytes())?;
    let acts = &buf.acts[h];
    let mut chunk = Vec::with_capacity(1 << 16);
    for block in acts.chunks(1 << 14) {
        chunk.clear();
        match dtype {
            CacheDType::F32 => block
                .iter()
                .for_each(|x| chunk.extend_from_slice(&x.to_le_bytes())),
            CacheDType::Bf16 => block
                .iter()
                .for_each(|x| chunk.extend_from_slice(&half::bf16::from_f32(*x).to_le_bytes())),
        }
        w.write_all(&chunk)?;
    }
    for (_, v) in ints {
        chunk.clear();
        v.iter()
            .for_each(|x| chunk.extend_from_slice(&x.to_le_bytes()));
        w.write_all(&chunk)?;
    }
    Ok(())
}

/// The per-row tensors of one shard (everything but the activations), each `[rows]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardRows {
    /// Token ids.
    pub token_ids: Vec<i64>,
    /// Document ids.
    pub doc_ids: Vec<i64>,
    /// Positions in the documents (−1: a prepended BOS).
    pub positions: Vec<i64>,
    /// Global context indices.
    pub context_ids: Vec<i64>,
    /// Positions inside the contexts.
    pub context_positions: Vec<i64>,
}

/// Reads the per-row tensors of a shard file. Errors name the file.
pub fn read_shard_rows(path: &Path) -> Result<ShardRows> {
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::bad_file(path, format!("not a valid safetensors file: {e}")))?;
    let get = |name: &str| -> Result<Vec<i64>> {
        let t = st
            .tensor(name)
            .map_err(|_| Error::bad_file(path, format!("no tensor {name}")))?;
        if t.dtype() != safetensors::Dtype::I64 {
            return Err(Error::bad_file(path, format!("tensor {name} is not I64")));
        }
        Ok(t.data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect())
    };
    Ok(ShardRows {
        token_ids: get("token_ids")?,
        doc_ids: get("doc_ids")?,
        positions: get("positions")?,
        context_ids: get("context_ids")?,
        context_positions: get("context_positions")?,
    })
}

#[cfg(test)]
mod tests;
