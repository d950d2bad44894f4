//! `manifest.json` of an activation cache: the one schema, written by `saelab extract`
//! (`saelab_lm::cache`) and read here by the store and by the cache itself.
//!
//! The manifest says what a cache directory holds and how it was made: format and
//! version, the model (path, fingerprint, shape), the hook, `d`, dtype, context length
//! and BOS handling, the corpus part and its context order, the shard list with row
//! and context counts, total rows, the target, and whether the cache is `complete`.
//! [`read_manifest`] checks format, version and that the shard list adds up.
//!
//! The store also accepts a hand-written listing in place of a cache manifest (any
//! JSON whose `format` is not [`FORMAT`]): `{"d": N, "shards": [...]}`, each shard a
//! file name or `{"file": ..., "rows": ...}` (see
//! [`crate::store::ActivationStore::open`]).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tensorfile::{DType, Values};

/// Name of the manifest file that marks a directory as an activation cache.
pub const MANIFEST: &str = "manifest.json";
/// `manifest["format"]` of an activation cache.
pub const FORMAT: &str = "saelab-activation-cache";
/// Current `manifest["version"]`.
pub const VERSION: u32 = 1;

/// Element type of the stored activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheDType {
    /// IEEE binary32.
    F32,
    /// bfloat16 (rounded to nearest even from the f32 forward).
    Bf16,
}

impl CacheDType {
    /// Parses `f32` or `bf16`.
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(CacheDType::F32),
            "bf16" => Ok(CacheDType::Bf16),
            _ => Err(Error::config(format!(
                "unknown activation dtype '{s}' (use f32 or bf16)"
            ))),
        }
    }

    /// `f32` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            CacheDType::F32 => "f32",
            CacheDType::Bf16 => "bf16",
        }
    }

    /// Bytes per value.
    pub fn size(self) -> usize {
        self.dtype().size()
    }

    /// The tensor-file dtype of the shards' `activations`.
    pub fn dtype(self) -> DType {
        match self {
            CacheDType::F32 => DType::F32,
            CacheDType::Bf16 => DType::BF16,
        }
    }

    /// f32 activations `data` as they are stored in a shard.
    pub fn values(self, data: &[f32]) -> Values<'_> {
        match self {
            CacheDType::F32 => Values::F32(data),
            CacheDType::Bf16 => Values::BF16(data),
        }
    }
}

/// The order in which the contexts of a corpus part are visited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContextOrder {
    /// The packing order: documents in corpus order, contexts in stream order.
    Corpus,
    /// A uniformly random permutation of all contexts, drawn from the seed (a new one
    /// per epoch).
    Shuffled {
        /// Seed of the permutation.
        seed: u64,
    },
}

impl ContextOrder {
    /// `corpus` or `shuffled`, as written in manifests and messages.
    pub fn name(&self) -> &'static str {
        match self {
            ContextOrder::Corpus => "corpus",
            ContextOrder::Shuffled { .. } => "shuffled",
        }
    }
}

/// One shard as listed in the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// File name, relative to the cache directory.
    pub file: String,
    /// Activation rows in the shard.
    pub rows: u64,
    /// Contexts the shard holds.
    pub contexts: u64,
    /// Global index of its first context.
    pub first_context: u64,
}

/// The model a cache was extracted from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Path given at extraction (a GGUF file or a Hugging Face directory).
    pub path: String,
    /// Fingerprint of the model files (`saelab_lm::contexts::model_fingerprint`).
    pub fingerprint: String,
    /// Architecture family (`llama`).
    pub architecture: String,
    /// Number of blocks.
    pub n_layers: usize,
    /// Width of the residual stream.
    pub d_model: usize,
}

/// How the token sequences fed to the model were built.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Tokens per context.
    pub ctx_len: usize,
    /// The BOS token id (before every document and at every context start).
    pub bos_id: u32,
    /// Whether every context starts with BOS (always true for saelab caches).
    pub prepend_bos: bool,
    /// Whether BOS positions are stored as rows (default false).
    pub keep_bos: bool,
}

/// The corpus part a cache covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorpusInfo {
    /// Path given at extraction.
    pub path: String,
    /// `train`, `heldout` or `all`.
    pub part: String,
    /// Held-out rule: document `id` is held out when `id % held_out_every == held_out_offset`.
    pub held_out_every: u32,
    /// See `held_out_every`.
    pub held_out_offset: u32,
    /// Documents in the part.
    pub documents: usize,
    /// Fingerprint of the part's documents (`saelab_lm::contexts::documents_fingerprint`).
    pub fingerprint: String,
    /// Order of the contexts: `shuffled` or `corpus`.
    pub order: ContextOrder,
    /// Contexts the part packs into.
    pub contexts_available: u64,
    /// Rows the whole part would give.
    pub rows_available: u64,
}

/// `manifest.json` of an activation cache.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheManifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`] of the writer.
    pub version: u32,
    /// Whether extraction reached its target (or the end of the corpus part).
    pub complete: bool,
    /// Whether the corpus part ran out before the target was reached.
    pub exhausted: bool,
    /// Hook point (TransformerLens name).
    pub hook: String,
    /// Width of every row.
    pub d: usize,
    /// Element type of `activations`.
    pub dtype: CacheDType,
    /// Rows over all shards.
    pub rows: u64,
    /// Contexts over all shards (the shards hold contexts `0..contexts`).
    pub contexts: u64,
    /// Rows asked for.
    pub target_rows: u64,
    /// The shards, in dataset order.
    pub shards: Vec<ShardInfo>,
    /// The model.
    pub model: ModelInfo,
    /// Token sequences.
    pub tokens: TokenInfo,
    /// Corpus part.
    pub corpus: CorpusInfo,
    /// Version of saelab that wrote the cache.
    pub saelab_version: String,
}

/// Reads and checks `dir/manifest.json`: JSON of the right format and version, shard
/// counts adding up. Errors name the file.
pub fn read_manifest(dir: &Path) -> Result<CacheManifest> {
    let path = dir.join(MANIFEST);
    let v = read_json(&path)?;
    cache_manifest(&path, v)
}

/// The JSON value of the manifest file `path`.
fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::bad_file(path, format!("corrupt manifest: {e}")))
}

/// Checks the manifest `v` read from `path` against [`CacheManifest`]'s schema.
fn cache_manifest(path: &Path, v: serde_json::Value) -> Result<CacheManifest> {
    if v.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
        return Err(Error::bad_file(
            path,
            format!("not a saelab activation-cache manifest (format is not \"{FORMAT}\")"),
        ));
    }
    let version = v.get("version").and_then(|f| f.as_u64()).unwrap_or(0);
    if version != VERSION as u64 {
        return Err(Error::bad_file(
            path,
            format!("cache format version {version}; this saelab reads version {VERSION}"),
        ));
    }
    let m: CacheManifest = serde_json::from_value(v)
        .map_err(|e| Error::bad_file(path, format!("corrupt manifest: {e}")))?;
    let rows: u64 = m.shards.iter().map(|s| s.rows).sum();
    let contexts: u64 = m.shards.iter().map(|s| s.contexts).sum();
    let contiguous = m
        .shards
        .iter()
        .scan(0u64, |next, s| {
            let ok = s.first_context == *next;
            *next += s.contexts;
            Some(ok)
        })
        .all(|ok| ok);
    if rows != m.rows || contexts != m.contexts || !contiguous {
        return Err(Error::bad_file(
            path,
            "corrupt manifest: the shard list does not add up to `rows` / `contexts`",
        ));
    }
    Ok(m)
}

/// What the store reads from a manifest: the shard files in dataset order (each with
/// its row count, when the manifest gives one) and the width they all have.
pub(crate) struct ShardListing {
    /// Width of every shard.
    pub d: usize,
    /// `(file name relative to the directory, rows)`.
    pub shards: Vec<(String, Option<u64>)>,
}

/// A hand-written listing: only `d` and the shards (unknown fields are ignored).
#[derive(Deserialize)]
struct HandListing {
    shards: Vec<ListedShard>,
    d: usize,
}

/// A hand-written listing's shard: a file name, or the file name and (optionally) its
/// row count.
#[derive(Deserialize)]
#[serde(untagged)]
enum ListedShard {
    Name(String),
    Info { file: String, rows: Option<u64> },
}

/// Reads the manifest file `path` for the store: an activation-cache manifest (its
/// `format` is [`FORMAT`]) through [`CacheManifest`] and its checks, anything else as a
/// hand-written listing.
pub(crate) fn read_listing(path: &Path) -> Result<ShardListing> {
    let v = read_json(path)?;
    let listing = if v.get("format").and_then(|f| f.as_str()) == Some(FORMAT) {
        let m = cache_manifest(path, v)?;
        ShardListing {
            d: m.d,
            shards: m
                .shards
                .into_iter()
                .map(|s| (s.file, Some(s.rows)))
                .collect(),
        }
    } else {
        let m: HandListing = serde_json::from_value(v)
            .map_err(|e| Error::bad_file(path, format!("corrupt manifest: {e}")))?;
        ShardListing {
            d: m.d,
            shards: m
                .shards
                .into_iter()
                .map(|s| match s {
                    ListedShard::Name(file) => (file, None),
                    ListedShard::Info { file, rows } => (file, rows),
                })
                .collect(),
        }
    };
    if listing.shards.is_empty() {
        return Err(Error::bad_file(path, "manifest lists no shards"));
    }
    Ok(listing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{write_safetensors, ActivationStore, DType};
    use crate::tensor::Matrix;

    fn manifest(shards: Vec<ShardInfo>) -> CacheManifest {
        CacheManifest {
            format: FORMAT.into(),
            version: VERSION,
            complete: true,
            exhausted: false,
            hook: "blocks.0.hook_resid_post".into(),
            d: 2,
            dtype: CacheDType::Bf16,
            rows: shards.iter().map(|s| s.rows).sum(),
            contexts: shards.iter().map(|s| s.contexts).sum(),
            target_rows: 5,
            shards,
            model: ModelInfo {
                path: "m.gguf".into(),
                fingerprint: "1:00".into(),
                architecture: "llama".into(),
                n_layers: 1,
                d_model: 2,
            },
            tokens: TokenInfo {
                ctx_len: 4,
                bos_id: 0,
                prepend_bos: true,
                keep_bos: false,
            },
            corpus: CorpusInfo {
                path: "corpus".into(),
                part: "train".into(),
                held_out_every: 20,
                held_out_offset: 0,
                documents: 2,
                fingerprint: "2:00".into(),
                order: ContextOrder::Shuffled { seed: 3 },
                contexts_available: 2,
                rows_available: 5,
            },
            saelab_version: "0.1.0".into(),
        }
    }

    fn shard(file: &str, rows: u64, first_context: u64) -> ShardInfo {
        ShardInfo {
            file: file.into(),
            rows,
            contexts: 1,
            first_context,
        }
    }

    #[test]
    fn the_store_reads_a_cache_through_the_cache_schema() {
        let dir = tempfile::tempdir().unwrap();
        let a = Matrix::from_vec(3, 2, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let b = Matrix::from_vec(2, 2, vec![-1.0, -2.0, -3.0, -4.0]).unwrap();
        write_safetensors(
            &dir.path().join("s0.safetensors"),
            "activations",
            &a,
            DType::BF16,
        )
        .unwrap();
        write_safetensors(
            &dir.path().join("s1.safetensors"),
            "activations",
            &b,
            DType::BF16,
        )
        .unwrap();
        let write = |m: &serde_json::Value| {
            std::fs::write(dir.path().join(MANIFEST), serde_json::to_vec(m).unwrap()).unwrap()
        };
        let open = || ActivationStore::open(&[dir.path().to_path_buf()], None);
        let good = manifest(vec![
            shard("s0.safetensors", 3, 0),
            shard("s1.safetensors", 2, 1),
        ]);
        write(&serde_json::to_value(&good).unwrap());
        assert_eq!(read_manifest(dir.path()).unwrap(), good);
        let s = open().unwrap();
        assert_eq!(s.read_range(0, 5).unwrap().data[..6], a.data);
        // The cache's own checks: a shard list that does not add up, another version.
        let mut v = serde_json::to_value(&good).unwrap();
        v["rows"] = 6.into();
        write(&v);
        let e = open().unwrap_err().to_string();
        assert!(
            e.contains("manifest.json") && e.contains("does not add up"),
            "{e}"
        );
        let mut v = serde_json::to_value(&good).unwrap();
        v["version"] = 2.into();
        write(&v);
        let e = open().unwrap_err().to_string();
        assert!(e.contains("version 2"), "{e}");
        // The listed row counts are checked against the shard files.
        let wrong = manifest(vec![shard("s0.safetensors", 4, 0)]);
        write(&serde_json::to_value(&wrong).unwrap());
        let e = open().unwrap_err().to_string();
        assert!(
            e.contains("s0.safetensors") && e.contains("has 3 rows"),
            "{e}"
        );
        // Anything else is a hand-written listing, as before.
        write(&serde_json::json!({"format": "mine", "d": 2, "shards": ["s1.safetensors"]}));
        assert_eq!(open().unwrap().rows(), 2);
        write(&serde_json::json!({"d": 2, "shards": []}));
        let e = open().unwrap_err().to_string();
        assert!(e.contains("lists no shards"), "{e}");
        // The cache reads only its own format.
        let e = read_manifest(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a saelab activation-cache manifest"), "{e}");
        assert_eq!(CacheDType::parse("BF16").unwrap().dtype(), DType::BF16);
        assert!(CacheDType::parse("f16").is_err());
    }
}
