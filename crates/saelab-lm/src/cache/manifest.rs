//! The cache's manifest from the writer's side: the settings a cache must match to be
//! continued ([`CacheSpec`]), what a directory holds ([`cache_status`]), and the
//! atomic writes of manifests and shards, whose errors say what is still consistent.
//! The schema itself ([`CacheManifest`]) is saelab-core's
//! [`saelab_core::store::manifest`], which the activation store reads too.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use saelab_core::store::manifest::{
    read_manifest, CacheDType, CacheManifest, ContextOrder, MANIFEST,
};

use crate::error::{Error, Result};
use crate::text::{HeldOut, Part};

/// Writes `m` as `dir/manifest.json`, atomically; `consistent` says what the cache
/// still holds intact should the write fail.
pub(super) fn write_manifest(dir: &Path, m: &CacheManifest, consistent: &str) -> Result<()> {
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

/// Whether `name` is a temporary file of an atomic write (`.NAME.tmp-PID`).
pub(super) fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
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
pub(super) fn write_atomic(
    path: &Path,
    consistent: &str,
    fill: impl FnOnce(&mut BufWriter<fs::File>) -> std::io::Result<()>,
) -> Result<()> {
    saelab_core::io::write_file_with(path, fill).map_err(|e| write_error(path, &e, consistent))
}
