//! Shards: the rows of whole contexts, as one `.safetensors` file per hook (the tensors
//! of the module docs of [`crate::cache`]). [`ShardWriter`] buffers captured rows and
//! writes them as the next shard of every hook, then the manifests that list it;
//! [`read_shard_rows`] reads a shard's per-row tensors back.

use std::path::{Path, PathBuf};

use saelab_core::store::manifest::{CacheDType, CacheManifest, ShardInfo, FORMAT};
use saelab_core::tensorfile::safetensors::{self, SafetensorsFile, TensorOut};
use saelab_core::tensorfile::Values;

use super::manifest::{write_atomic, write_manifest};
use crate::contexts::CapturedRows;
use crate::error::Result;
use crate::text::NOT_IN_DOCUMENT;

/// File name of shard `i`: `shard-00000.safetensors`, ...
pub(super) fn shard_name(i: usize) -> String {
    format!("shard-{i:05}.safetensors")
}

/// The rows captured since the last shard, and where they go: the cache directory of
/// each hook. [`ShardWriter::flush`] writes them as the next shard of every hook, so
/// shards of equal index hold the same contexts.
pub(super) struct ShardWriter<'a> {
    /// One cache directory per hook.
    dirs: &'a [PathBuf],
    /// The hooks, in the order of `dirs` and of the captured rows.
    hooks: &'a [String],
    /// Rows of the buffered contexts.
    buf: CapturedRows,
    /// Global index of the first buffered context.
    first_context: u64,
    /// Contexts buffered.
    contexts: u64,
}

impl<'a> ShardWriter<'a> {
    /// An empty buffer for rows of width `d`, whose first context will be
    /// `first_context`.
    pub fn new(dirs: &'a [PathBuf], hooks: &'a [String], d: usize, first_context: u64) -> Self {
        ShardWriter {
            dirs,
            hooks,
            buf: CapturedRows::new(hooks.len(), d),
            first_context,
            contexts: 0,
        }
    }

    /// Buffers the rows of `contexts` more contexts (the next ones in order).
    pub fn push(&mut self, rows: &CapturedRows, contexts: u64) {
        self.buf.append(rows);
        self.contexts += contexts;
    }

    /// Rows buffered.
    pub fn rows(&self) -> usize {
        self.buf.rows
    }

    /// Writes the buffered rows, if any, as the next shard of every hook, then every
    /// hook's manifest listing it, and empties the buffer. Returns the number of shards
    /// the manifests list. On an error (a full disk) the shard being written is
    /// discarded and the caches stay as they were.
    pub fn flush(&mut self, manifests: &mut [CacheManifest]) -> Result<usize> {
        if self.contexts > 0 {
            self.write(manifests)?;
            self.first_context += self.contexts;
            self.contexts = 0;
            self.buf.clear();
        }
        Ok(manifests[0].shards.len())
    }

    fn write(&self, manifests: &mut [CacheManifest]) -> Result<()> {
        let (buf, first_context, contexts) = (&self.buf, self.first_context, self.contexts);
        let index = manifests[0].shards.len();
        let file = shard_name(index);
        let consistent = if index == 0 {
            "no shard yet".to_string()
        } else {
            format!("{index} complete shards, {} rows", manifests[0].rows)
        };
        let ints = shard_ints(buf);
        for (h, dir) in self.dirs.iter().enumerate() {
            let dtype = manifests[h].dtype;
            let path = dir.join(&file);
            write_atomic(&path, &consistent, |w| {
                write_shard_file(w, dtype, &self.hooks[h], first_context, buf, h, &ints)
            })?;
        }
        for (m, dir) in manifests.iter_mut().zip(self.dirs) {
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

/// One shard of hook `h` (its activations in `buf`, stored as `dtype`, then `ints`),
/// streamed to `w`, with the `__metadata__` `format`, `hook` and `first_context`.
fn write_shard_file(
    w: &mut impl std::io::Write,
    dtype: CacheDType,
    hook: &str,
    first_context: u64,
    buf: &CapturedRows,
    h: usize,
    ints: &ShardInts,
) -> std::io::Result<()> {
    let (act_shape, row_shape) = ([buf.rows, buf.d], [buf.rows]);
    let mut tensors = vec![TensorOut {
        name: "activations",
        shape: &act_shape,
        values: dtype.values(&buf.acts[h]),
    }];
    tensors.extend(ints.iter().map(|(name, v)| TensorOut {
        name,
        shape: &row_shape,
        values: Values::I64(v),
    }));
    let first = first_context.to_string();
    safetensors::write_to(
        w,
        &tensors,
        &[
            ("format", FORMAT),
            ("hook", hook),
            ("first_context", &first),
        ],
    )
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
    let f = SafetensorsFile::open(path)?;
    Ok(ShardRows {
        token_ids: f.read_i64("token_ids")?,
        doc_ids: f.read_i64("doc_ids")?,
        positions: f.read_i64("positions")?,
        context_ids: f.read_i64("context_ids")?,
        context_positions: f.read_i64("context_positions")?,
    })
}
