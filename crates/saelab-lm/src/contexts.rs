//! The contexts of a corpus part in a fixed order, and running the model over them.
//!
//! Both the activation cache ([`crate::cache`]) and streaming training
//! ([`crate::stream`]) read a corpus part the same way:
//!
//! 1. the part's documents are tokenized and packed into `ctx_len`-token contexts, each
//!    starting with BOS ([`crate::text::PackConfig`], SAELens-style `prepend_bos`);
//! 2. the contexts are visited in a [`ContextOrder`]: corpus order, or a permutation of
//!    all contexts drawn from a seed (the default: a prefix of the stream is then a
//!    uniform sample of the whole part, whatever order the files sort in, and rows of
//!    consecutive contexts come from unrelated documents);
//! 3. epoch `e` of a stream that runs past the end uses the permutation of epoch `e`
//!    (for `Shuffled`, one drawn from `seed` and `e`), so *global context index* `g`
//!    names one context forever: epoch `g / len`, slot `g % len` of that epoch's order.
//!
//! The plan holds every context's tokens in memory (12 bytes per token: token id,
//! document id, position), so a part must fit in memory; the corpora saelab targets
//! (tens of MB of text) take well under 100 MB.
//!
//! [`run_contexts`] runs the model over some contexts, captures hooks and keeps the
//! rows that are not BOS (unless asked to keep them): BOS positions carry huge
//! residual norms and are excluded from every metric (`docs/metrics.md`).

use std::borrow::Cow;
use std::io::Read;
use std::path::Path;

use saelab_core::rng::Rng;

use crate::error::{Error, Result};
use crate::model::{ForwardOptions, HookedModel};
use crate::text::{ContextStream, Document, PackConfig, NOT_IN_DOCUMENT};
use crate::tokenizer::Tokenizer;

pub use saelab_core::store::manifest::ContextOrder;

/// One context of a [`ContextPlan`]: three parallel slices of length `ctx_len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContextRef<'a> {
    /// Global index of the context in the plan's stream (see the module docs).
    pub index: u64,
    /// Token ids.
    pub tokens: &'a [u32],
    /// Document id of each token.
    pub doc_ids: &'a [u32],
    /// Position of each token in its document (0 = the document's BOS), or
    /// [`NOT_IN_DOCUMENT`] for a BOS prepended to the context.
    pub positions: &'a [u32],
}

/// Whether a token at document position `pos` is a BOS (the document's own, at
/// position 0, or one prepended to a context).
pub fn is_bos_position(pos: u32) -> bool {
    pos == 0 || pos == NOT_IN_DOCUMENT
}

/// All contexts of a list of documents, packed once, visited in a [`ContextOrder`].
pub struct ContextPlan {
    ctx_len: usize,
    tokens: Vec<u32>,
    doc_ids: Vec<u32>,
    positions: Vec<u32>,
    order: ContextOrder,
    /// Epoch 0's order (packed indices).
    perm0: Vec<u32>,
    documents: usize,
    tokens_dropped: usize,
}

impl std::fmt::Debug for ContextPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextPlan")
            .field("ctx_len", &self.ctx_len)
            .field("contexts", &self.len())
            .field("documents", &self.documents)
            .field("order", &self.order)
            .finish()
    }
}

impl ContextPlan {
    /// Tokenizes and packs `docs` with `pack` (in the given document order; the
    /// `shuffle_seed` of `pack` is ignored — the order of contexts is `order`).
    /// Errors if tokenization fails or the documents hold fewer than one context of
    /// tokens.
    pub fn new(
        tok: &Tokenizer,
        docs: &[&Document],
        mut pack: PackConfig,
        order: ContextOrder,
    ) -> Result<Self> {
        pack.shuffle_seed = None;
        let ctx_len = pack.ctx_len;
        let mut stream = ContextStream::new(tok, docs.iter().copied(), pack)?;
        let (mut tokens, mut doc_ids, mut positions) = (Vec::new(), Vec::new(), Vec::new());
        for ctx in stream.by_ref() {
            let ctx = ctx?;
            tokens.extend_from_slice(&ctx.tokens);
            doc_ids.extend_from_slice(&ctx.doc_ids);
            positions.extend_from_slice(&ctx.positions);
        }
        let n = tokens.len() / ctx_len.max(1);
        if n == 0 {
            return Err(Error::config(format!(
                "the {} documents hold {} tokens, fewer than one context of {ctx_len}",
                docs.len(),
                stream.stream_tokens()
            )));
        }
        if u32::try_from(n).is_err() {
            return Err(Error::config(format!(
                "{n} contexts are more than a plan can index (2^32)"
            )));
        }
        let mut plan = ContextPlan {
            ctx_len,
            tokens,
            doc_ids,
            positions,
            order,
            perm0: Vec::new(),
            documents: docs.len(),
            tokens_dropped: stream.tokens_dropped(),
        };
        plan.perm0 = plan.epoch_order(0).into_owned();
        Ok(plan)
    }

    /// Contexts per epoch.
    pub fn len(&self) -> usize {
        self.tokens.len() / self.ctx_len
    }

    /// Whether the plan holds no context (never true for a constructed plan).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tokens per context.
    pub fn ctx_len(&self) -> usize {
        self.ctx_len
    }

    /// The visiting order.
    pub fn order(&self) -> ContextOrder {
        self.order
    }

    /// Number of documents packed.
    pub fn documents(&self) -> usize {
        self.documents
    }

    /// Stream tokens left over at the end that did not fill a context.
    pub fn tokens_dropped(&self) -> usize {
        self.tokens_dropped
    }

    /// Tokens in all contexts of one epoch (`len · ctx_len`).
    pub fn total_tokens(&self) -> u64 {
        self.tokens.len() as u64
    }

    /// Tokens of one epoch that are not BOS (the rows a BOS-free cache of the whole
    /// part holds).
    pub fn non_bos_tokens(&self) -> u64 {
        self.positions
            .iter()
            .filter(|&&p| !is_bos_position(p))
            .count() as u64
    }

    /// The order of epoch `epoch`: packed context indices, `[len]`.
    pub fn epoch_order(&self, epoch: u64) -> Cow<'_, [u32]> {
        if epoch == 0 && !self.perm0.is_empty() {
            return Cow::Borrowed(&self.perm0);
        }
        let mut perm: Vec<u32> = (0..self.len() as u32).collect();
        if let ContextOrder::Shuffled { seed } = self.order {
            Rng::new(seed).fork(epoch).shuffle(&mut perm);
        }
        Cow::Owned(perm)
    }

    /// The context with packed index `packed`, labelled with global index `index`.
    pub fn packed(&self, packed: usize, index: u64) -> ContextRef<'_> {
        let r = packed * self.ctx_len..(packed + 1) * self.ctx_len;
        ContextRef {
            index,
            tokens: &self.tokens[r.clone()],
            doc_ids: &self.doc_ids[r.clone()],
            positions: &self.positions[r],
        }
    }

    /// Context `g` of epoch 0 (`g < len`).
    pub fn first_epoch(&self, g: usize) -> ContextRef<'_> {
        self.packed(self.perm0[g] as usize, g as u64)
    }

    /// Rows context `c` contributes to a cache or a stream: its non-BOS tokens, or all
    /// of them with `keep_bos`.
    pub fn rows_of(c: &ContextRef<'_>, keep_bos: bool) -> usize {
        if keep_bos {
            c.tokens.len()
        } else {
            c.positions.iter().filter(|&&p| !is_bos_position(p)).count()
        }
    }
}

/// The rows captured from some contexts: one activation matrix per hook and, for every
/// row, where it came from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CapturedRows {
    /// Width of every row.
    pub d: usize,
    /// Number of rows.
    pub rows: usize,
    /// Per hook (in the order asked), `rows · d` values, row-major.
    pub acts: Vec<Vec<f32>>,
    /// Token id of each row, `[rows]`.
    pub token_ids: Vec<u32>,
    /// Document id of each row, `[rows]`.
    pub doc_ids: Vec<u32>,
    /// Position of each row's token in its document, `[rows]` ([`NOT_IN_DOCUMENT`] for
    /// a prepended BOS).
    pub positions: Vec<u32>,
    /// Global index of each row's context, `[rows]`.
    pub context_ids: Vec<u64>,
    /// Position of each row's token inside its context (0 = the context's first
    /// token), `[rows]`.
    pub context_positions: Vec<u32>,
}

impl CapturedRows {
    /// Empty rows for `hooks` hooks of width `d`.
    pub fn new(hooks: usize, d: usize) -> Self {
        CapturedRows {
            d,
            acts: vec![Vec::new(); hooks],
            ..Default::default()
        }
    }

    /// Appends all rows of `other` (same hooks and width).
    pub fn append(&mut self, other: &CapturedRows) {
        debug_assert_eq!(self.acts.len(), other.acts.len());
        for (a, b) in self.acts.iter_mut().zip(&other.acts) {
            a.extend_from_slice(b);
        }
        self.rows += other.rows;
        self.token_ids.extend_from_slice(&other.token_ids);
        self.doc_ids.extend_from_slice(&other.doc_ids);
        self.positions.extend_from_slice(&other.positions);
        self.context_ids.extend_from_slice(&other.context_ids);
        self.context_positions
            .extend_from_slice(&other.context_positions);
    }

    /// Removes every row, keeping the allocations.
    pub fn clear(&mut self) {
        self.acts.iter_mut().for_each(Vec::clear);
        self.rows = 0;
        self.token_ids.clear();
        self.doc_ids.clear();
        self.positions.clear();
        self.context_ids.clear();
        self.context_positions.clear();
    }
}

/// Runs `model` over `contexts` in one batched forward (they must have equal length),
/// captures `hooks` (canonical names) and returns the rows: every position, or every
/// non-BOS position unless `keep_bos`. The forward stops after the deepest hook.
pub fn run_contexts(
    model: &HookedModel,
    hooks: &[String],
    contexts: &[ContextRef<'_>],
    keep_bos: bool,
) -> saelab_core::Result<CapturedRows> {
    let d = model.d_model();
    let mut out = CapturedRows::new(hooks.len(), d);
    if contexts.is_empty() {
        return Ok(out);
    }
    let batch: Vec<&[u32]> = contexts.iter().map(|c| c.tokens).collect();
    let opts = ForwardOptions::new().capture_all(hooks.iter().cloned());
    let fwd = model.forward(&batch, &opts)?;
    let keep: Vec<(usize, usize)> = contexts
        .iter()
        .enumerate()
        .flat_map(|(b, c)| {
            c.positions
                .iter()
                .enumerate()
                .filter(move |(_, &p)| keep_bos || !is_bos_position(p))
                .map(move |(t, _)| (b, t))
        })
        .collect();
    let seq = contexts[0].tokens.len();
    for (h, hook) in hooks.iter().enumerate() {
        let all = fwd.capture(hook)?.as_slice();
        let dst = &mut out.acts[h];
        dst.reserve(keep.len() * d);
        for &(b, t) in &keep {
            let r = b * seq + t;
            dst.extend_from_slice(&all[r * d..(r + 1) * d]);
        }
    }
    out.rows = keep.len();
    for &(b, t) in &keep {
        let c = &contexts[b];
        out.token_ids.push(c.tokens[t]);
        out.doc_ids.push(c.doc_ids[t]);
        out.positions.push(c.positions[t]);
        out.context_ids.push(c.index);
        out.context_positions.push(t as u32);
    }
    Ok(out)
}

/// A 64-bit content hash for fingerprints: words of 8 bytes mixed with a multiply and
/// a rotation, finished with splitmix64. Not cryptographic; it detects a changed model
/// or corpus, not a forged one.
#[derive(Clone, Debug)]
pub struct Fingerprint {
    h: u64,
    len: u64,
    tail: Vec<u8>,
}

impl Default for Fingerprint {
    fn default() -> Self {
        Fingerprint {
            h: 0x243F_6A88_85A3_08D3,
            len: 0,
            tail: Vec::with_capacity(8),
        }
    }
}

impl Fingerprint {
    /// A fresh hasher.
    pub fn new() -> Self {
        Self::default()
    }

    #[inline]
    fn word(&mut self, w: u64) {
        self.h = (self.h.rotate_left(23) ^ w).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    /// Feeds bytes.
    pub fn update(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len() as u64;
        if !self.tail.is_empty() {
            let need = 8 - self.tail.len();
            let take = need.min(bytes.len());
            self.tail.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.tail.len() < 8 {
                return;
            }
            let w = u64::from_le_bytes(self.tail[..8].try_into().expect("8 bytes"));
            self.tail.clear();
            self.word(w);
        }
        let mut chunks = bytes.chunks_exact(8);
        for c in chunks.by_ref() {
            self.word(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        self.tail.extend_from_slice(chunks.remainder());
    }

    /// The fingerprint: `<bytes hashed>:<16 hex digits>`.
    pub fn finish(&self) -> String {
        let mut h = self.h;
        for (i, &b) in self.tail.iter().enumerate() {
            h ^= (b as u64) << (8 * i);
        }
        h ^= self.len;
        h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        h ^= h >> 31;
        format!("{}:{h:016x}", self.len)
    }
}

fn hash_file(path: &Path, fp: &mut Fingerprint) -> Result<()> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            return Ok(());
        }
        fp.update(&buf[..n]);
    }
}

/// Fingerprint of a model: the whole file for a GGUF; for a Hugging Face directory,
/// `config.json`, `tokenizer.json` (if present) and every `*.safetensors` file, in
/// name order. Errors name a missing or unreadable file.
pub fn model_fingerprint(path: &Path) -> Result<String> {
    let mut fp = Fingerprint::new();
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(path)
            .map_err(|e| Error::io(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                name == "config.json" || name == "tokenizer.json" || name.ends_with(".safetensors")
            })
            .collect();
        files.sort();
        for f in files {
            let name = f.file_name().unwrap_or_default().to_string_lossy();
            fp.update(name.as_bytes());
            hash_file(&f, &mut fp)?;
        }
    } else {
        hash_file(path, &mut fp)?;
    }
    Ok(fp.finish())
}

/// Fingerprint of documents: their ids and texts, in order.
pub fn documents_fingerprint(docs: &[&Document]) -> String {
    let mut fp = Fingerprint::new();
    for d in docs {
        fp.update(&d.id.to_le_bytes());
        fp.update(&(d.text.len() as u64).to_le_bytes());
        fp.update(d.text.as_bytes());
    }
    fp.finish()
}

/// The tokenizer that goes with a model path: the GGUF's own metadata, or
/// `tokenizer.json` inside a Hugging Face directory.
pub fn tokenizer_for_model(path: &Path) -> Result<Tokenizer> {
    if path.is_dir() {
        let tj = path.join("tokenizer.json");
        if !tj.is_file() {
            return Err(Error::bad_file(
                path,
                "model directory has no tokenizer.json",
            ));
        }
        Tokenizer::from_file(tj)
    } else {
        Tokenizer::from_gguf(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::{Corpus, LoadOptions};

    #[test]
    fn fingerprint_is_chunking_independent_and_sensitive() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut a = Fingerprint::new();
        a.update(&data);
        let mut b = Fingerprint::new();
        for c in data.chunks(3) {
            b.update(c);
        }
        assert_eq!(a.finish(), b.finish());
        let mut changed = data.clone();
        changed[999] ^= 1;
        let mut c = Fingerprint::new();
        c.update(&changed);
        assert_ne!(a.finish(), c.finish());
        let mut shorter = Fingerprint::new();
        shorter.update(&data[..999]);
        assert_ne!(a.finish(), shorter.finish());
        assert!(a.finish().starts_with("1000:"));
    }

    #[test]
    fn epochs_are_permutations_and_differ() {
        let corpus = Corpus::from_texts(
            (0..30).map(|i| (format!("d{i}"), "x ".repeat(40 + i))),
            &LoadOptions::default(),
        );
        let tok = crate::test_support::tiny_tokenizer();
        let docs: Vec<&Document> = corpus.documents().iter().collect();
        let plan = ContextPlan::new(
            &tok,
            &docs,
            PackConfig::new(16, tok.bos_id().unwrap()),
            ContextOrder::Shuffled { seed: 3 },
        )
        .unwrap();
        let n = plan.len();
        assert!(n > 10);
        let e0 = plan.epoch_order(0).into_owned();
        let e1 = plan.epoch_order(1).into_owned();
        let mut s0 = e0.clone();
        s0.sort();
        assert_eq!(s0, (0..n as u32).collect::<Vec<_>>());
        assert_ne!(e0, e1);
        assert_ne!(e0, (0..n as u32).collect::<Vec<_>>());
        // Every context starts with BOS and the BOS-free count matches the positions.
        let total: usize = (0..n)
            .map(|g| {
                let c = plan.first_epoch(g);
                assert_eq!(c.tokens[0], tok.bos_id().unwrap());
                assert!(is_bos_position(c.positions[0]));
                ContextPlan::rows_of(&c, false)
            })
            .sum();
        assert_eq!(total as u64, plan.non_bos_tokens());
        let corpus_order = ContextPlan::new(
            &tok,
            &docs,
            PackConfig::new(16, tok.bos_id().unwrap()),
            ContextOrder::Corpus,
        )
        .unwrap();
        assert_eq!(
            corpus_order.epoch_order(5).into_owned(),
            (0..n as u32).collect::<Vec<_>>()
        );
    }
}
