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
//! `keep_bos` is set: their residual norms are huge and `docs/metrics.md` excludes them from
//! every metric. Rows keep the order of the contexts and of the tokens in them.
//!
//! `manifest.json` ([`CacheManifest`]) says what the cache holds and how it was made:
//! format and version, the model (path, fingerprint, shape), the hook, `d`, dtype,
//! context length and BOS handling, the corpus part, the shard list with row and
//! context counts, total rows, the target, and whether the cache is `complete`. Its
//! schema is saelab-core's ([`saelab_core::store::manifest`]), so that
//! [`saelab_core::store::ActivationStore::open`] reads a cache directory directly
//! through the same types; the shards' bytes are [`saelab_core::tensorfile`]'s.
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
//!
//! # Modules
//!
//! - `manifest.rs`: the settings a cache must match to be continued ([`CacheSpec`]),
//!   what a directory holds ([`cache_status`]), atomic manifest writes;
//! - `shard.rs`: the shard buffer and its writes (`ShardWriter`), [`read_shard_rows`];
//! - `extract.rs`: the job ([`extract`]): open or resume every hook's cache, run the
//!   model, flush shards, reconcile hooks after a kill.

mod extract;
mod manifest;
mod shard;

pub use extract::{
    extract, hook_dirs, ExtractJob, ExtractOptions, ExtractSummary, Progress, DEFAULT_SHARD_ROWS,
};
pub use manifest::{cache_status, part_name, CacheSpec, CacheStatus};
pub use saelab_core::store::manifest::{
    read_manifest, CacheDType, CacheManifest, CorpusInfo, ModelInfo, ShardInfo, TokenInfo, FORMAT,
    MANIFEST, VERSION,
};
pub use shard::{read_shard_rows, ShardRows};

/// What `tests.rs` takes from here through `use super::*`.
#[cfg(test)]
use {
    crate::contexts::ContextOrder,
    crate::error::Error,
    crate::model::HookedModel,
    crate::text::{HeldOut, Part},
    manifest::is_temp_name,
    shard::shard_name,
    std::{fs, path::Path, sync::atomic::Ordering},
};

#[cfg(test)]
mod tests;
