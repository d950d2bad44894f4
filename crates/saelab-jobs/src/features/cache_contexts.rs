//! The contexts of a features pass read from an activation cache (`saelab extract`)
//! instead of a corpus: the cache's first contexts, rebuilt from the token ids, document
//! ids and positions its shards store for every row, with the store rows of their
//! non-BOS positions, so that Stage A reads the cached activations instead of running
//! the model.
//!
//! A cache without BOS rows (the default) stores every other position, so a context's
//! missing positions are its BOS tokens: they get the manifest's `bos_id`. Every row is
//! checked against the manifest (its context inside its shard's, its position inside
//! the context, contexts in order, no position twice); errors name the shard.

use std::path::Path;

use saelab_core::store::manifest::{read_manifest, CacheManifest};
use saelab_core::tensorfile::safetensors::SafetensorsFile;
use saelab_core::Error;
use saelab_lm::contexts::{is_bos_position, ContextRef};
use saelab_lm::text::NOT_IN_DOCUMENT;

use crate::error::Result;

/// The per-row tensors a cache shard must hold besides its activations.
const ROW_TENSORS: [&str; 4] = ["token_ids", "doc_ids", "positions", "context_positions"];

/// The contexts a pass reads from a cache, owned, with where their rows are.
pub(crate) struct CacheContexts {
    /// The cache's manifest.
    pub manifest: CacheManifest,
    /// Token ids of every context, `ctx_len` each.
    tokens: Vec<u32>,
    /// Document id of every token (`u32::MAX` for a BOS the cache did not store).
    doc_ids: Vec<u32>,
    /// Position of every token in its document ([`NOT_IN_DOCUMENT`] for a BOS the cache
    /// did not store).
    positions: Vec<u32>,
    /// Dataset rows of every context's non-BOS positions, context after context.
    pub rows: Vec<usize>,
    /// `offsets[s]`: where context `s`'s rows begin in `rows`.
    pub offsets: Vec<usize>,
}

impl CacheContexts {
    /// The first contexts of the cache in `dir` whose non-BOS rows reach `tokens` (or
    /// all of them). Errors name the manifest or the shard.
    pub fn read(dir: &Path, tokens: u64) -> Result<CacheContexts> {
        let manifest = read_manifest(dir)?;
        let ctx = manifest.tokens.ctx_len;
        let bos = manifest.tokens.bos_id;
        let mut out = CacheContexts {
            tokens: Vec::new(),
            doc_ids: Vec::new(),
            positions: Vec::new(),
            rows: Vec::new(),
            offsets: vec![0],
            manifest,
        };
        let mut row0 = 0usize;
        let shards = out.manifest.shards.clone();
        for shard in &shards {
            if out.rows.len() as u64 >= tokens {
                break;
            }
            let path = dir.join(&shard.file);
            let f = SafetensorsFile::open(&path)?;
            let [tok, doc, pos, cpos] = ROW_TENSORS.map(|name| f.read_i64(name));
            let (tok, doc, pos, cpos) = (tok?, doc?, pos?, cpos?);
            let ctx_ids = f.read_i64("context_ids")?;
            let n = shard.rows as usize;
            if [&tok, &doc, &pos, &cpos, &ctx_ids]
                .iter()
                .any(|v| v.len() != n)
            {
                return Err(bad(
                    &path,
                    format!("the per-row tensors do not all hold its {n} rows"),
                ));
            }
            let mut r = 0;
            for c in shard.first_context..shard.first_context + shard.contexts {
                if out.rows.len() as u64 >= tokens {
                    break;
                }
                let base = out.tokens.len();
                out.tokens.resize(base + ctx, bos);
                out.doc_ids.resize(base + ctx, u32::MAX);
                out.positions.resize(base + ctx, NOT_IN_DOCUMENT);
                let mut seen = vec![false; ctx];
                let mut last = None;
                while r < n && ctx_ids[r] == c as i64 {
                    let t = usize::try_from(cpos[r]).ok().filter(|&t| t < ctx);
                    let Some(t) = t.filter(|&t| !seen[t] && last.is_none_or(|l| t > l)) else {
                        return Err(bad(
                            &path,
                            format!(
                                "row {r}: position {} in context {c} is outside its {ctx} \
                                 tokens, repeated or out of order",
                                cpos[r]
                            ),
                        ));
                    };
                    seen[t] = true;
                    last = Some(t);
                    let (Ok(tk), Ok(d), Ok(p)) = (
                        u32::try_from(tok[r]),
                        u32::try_from(doc[r]),
                        u32::try_from(pos[r]),
                    ) else {
                        return Err(bad(
                            &path,
                            format!("row {r}: a token id, document id or position out of range"),
                        ));
                    };
                    out.tokens[base + t] = tk;
                    out.doc_ids[base + t] = d;
                    out.positions[base + t] = p;
                    if !is_bos_position(p) {
                        out.rows.push(row0 + r);
                    }
                    r += 1;
                }
                out.offsets.push(out.rows.len());
            }
            if out.rows.len() as u64 >= tokens {
                break;
            }
            if r != n {
                return Err(bad(
                    &path,
                    format!(
                        "row {r} belongs to context {}, not to the shard's contexts {}..{} in order",
                        ctx_ids[r],
                        shard.first_context,
                        shard.first_context + shard.contexts
                    ),
                ));
            }
            row0 += n;
        }
        Ok(out)
    }

    /// Tokens per context.
    pub fn ctx_len(&self) -> usize {
        self.manifest.tokens.ctx_len
    }

    /// The contexts, in cache order.
    pub fn contexts(&self) -> Vec<ContextRef<'_>> {
        let ctx = self.ctx_len();
        (0..self.offsets.len() - 1)
            .map(|s| {
                let r = s * ctx..(s + 1) * ctx;
                ContextRef {
                    index: s as u64,
                    tokens: &self.tokens[r.clone()],
                    doc_ids: &self.doc_ids[r.clone()],
                    positions: &self.positions[r],
                }
            })
            .collect()
    }
}

fn bad(path: &Path, msg: String) -> crate::error::Error {
    Error::bad_file(
        path,
        format!("not a readable activation-cache shard: {msg}"),
    )
    .into()
}
