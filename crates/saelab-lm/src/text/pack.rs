//! Packing documents into fixed-length contexts.
//!
//! # The token stream
//!
//! Each document becomes `[BOS, t_1, ..., t_n]`, where `t_i` are the tokens of its text
//! ([`Tokenizer::encode`], control-token strings taken as plain text). Inside a document
//! BOS has position 0 and `t_i` has position `i`, so a position is the index the token
//! would have if the document were fed to the model alone from its start. The documents'
//! sequences are concatenated, in the given order (or shuffled by document, see
//! [`PackConfig::shuffle_seed`]), into one stream.
//!
//! # Cutting contexts (SAELens-style `prepend_bos`)
//!
//! With `prepend_bos` (the default) every context starts with exactly one BOS, so the
//! model always sees a sequence start in position 0 — the attention sink that real
//! inputs begin with — and the first real tokens of a context are not scored against a
//! mid-text cold start:
//!
//! - if the next stream token is a document's own BOS, the context is the next
//!   `ctx_len` stream tokens;
//! - otherwise (the context continues a document cut by the previous context) a BOS is
//!   prepended and `ctx_len - 1` stream tokens follow. The prepended BOS is not part of
//!   any document: its position is [`NOT_IN_DOCUMENT`] and its document id is that of
//!   the token after it.
//!
//! Without `prepend_bos` the stream is cut into consecutive blocks of `ctx_len` tokens.
//! Either way every stream token appears in exactly one context, in order, except the
//! final partial context, which is dropped ([`ContextStream::tokens_dropped`]).

use rayon::prelude::*;
use saelab_core::rng::Rng;

use super::source::Document;
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// Position recorded for a BOS that was prepended to a context and is not part of any
/// document.
pub const NOT_IN_DOCUMENT: u32 = u32::MAX;

/// How to pack documents into contexts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackConfig {
    /// Tokens per context (at least 2 with `prepend_bos`, else at least 1).
    pub ctx_len: usize,
    /// The token put before every document (and at context starts with `prepend_bos`);
    /// normally [`Tokenizer::bos_id`].
    pub bos_id: u32,
    /// Start every context with BOS (see the module docs). Default true.
    pub prepend_bos: bool,
    /// Visit the documents in an order shuffled by this seed instead of the given
    /// order. Default `None`.
    pub shuffle_seed: Option<u64>,
    /// About how many bytes of text to tokenize (in parallel) per refill of the stream.
    /// Default 1 MiB.
    pub chunk_bytes: usize,
}

impl PackConfig {
    /// `ctx_len`-token contexts, documents prefixed with `bos_id`, BOS at every context
    /// start, documents in order.
    pub fn new(ctx_len: usize, bos_id: u32) -> Self {
        PackConfig {
            ctx_len,
            bos_id,
            prepend_bos: true,
            shuffle_seed: None,
            chunk_bytes: 1 << 20,
        }
    }

    /// Like [`PackConfig::new`], with the tokenizer's BOS; errors if it has none.
    pub fn for_tokenizer(ctx_len: usize, tok: &Tokenizer) -> Result<Self> {
        let bos = tok.bos_id().ok_or_else(|| {
            Error::config(format!(
                "{}: the tokenizer names no BOS token; set one explicitly",
                tok.source().display()
            ))
        })?;
        Ok(Self::new(ctx_len, bos))
    }

    fn validate(&self) -> Result<()> {
        let min = if self.prepend_bos { 2 } else { 1 };
        if self.ctx_len < min {
            return Err(Error::config(format!(
                "context length must be at least {min}, got {}",
                self.ctx_len
            )));
        }
        if u32::try_from(self.ctx_len).is_err() {
            return Err(Error::config(format!(
                "context length {} is too large",
                self.ctx_len
            )));
        }
        Ok(())
    }
}

/// One packed context: three parallel arrays of length `ctx_len`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Context {
    /// Token ids, `[ctx_len]`.
    pub tokens: Vec<u32>,
    /// Document id ([`Document::id`]) of each token, `[ctx_len]`.
    pub doc_ids: Vec<u32>,
    /// Position of each token in its document (BOS = 0, first text token = 1), or
    /// [`NOT_IN_DOCUMENT`] for a prepended BOS, `[ctx_len]`.
    pub positions: Vec<u32>,
}

impl Context {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the context holds no tokens.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// Streams [`Context`]s from documents, tokenizing them lazily, a chunk of documents at
/// a time in parallel on the rayon pool. Yields `Err` once (then ends) if tokenization
/// fails.
pub struct ContextStream<'a> {
    tok: &'a Tokenizer,
    docs: Vec<&'a Document>,
    next_doc: usize,
    cfg: PackConfig,
    tokens: Vec<u32>,
    doc_ids: Vec<u32>,
    positions: Vec<u32>,
    /// Index of the first unconsumed buffered token.
    cursor: usize,
    stream_tokens: u64,
    dropped: usize,
    finished: bool,
}

impl<'a> ContextStream<'a> {
    /// A stream over `docs` (in the given order, or shuffled by `cfg.shuffle_seed`).
    /// Errors if `cfg` is invalid.
    pub fn new(
        tok: &'a Tokenizer,
        docs: impl IntoIterator<Item = &'a Document>,
        cfg: PackConfig,
    ) -> Result<Self> {
        cfg.validate()?;
        let mut docs: Vec<&Document> = docs.into_iter().collect();
        if let Some(seed) = cfg.shuffle_seed {
            Rng::new(seed).shuffle(&mut docs);
        }
        Ok(ContextStream {
            tok,
            docs,
            next_doc: 0,
            cfg,
            tokens: Vec::new(),
            doc_ids: Vec::new(),
            positions: Vec::new(),
            cursor: 0,
            stream_tokens: 0,
            dropped: 0,
            finished: false,
        })
    }

    /// Number of documents tokenized so far.
    pub fn documents_read(&self) -> usize {
        self.next_doc
    }

    /// Number of stream tokens (document BOS included, prepended BOS excluded) produced
    /// so far by tokenization.
    pub fn stream_tokens(&self) -> u64 {
        self.stream_tokens
    }

    /// Stream tokens left over at the end that did not fill a context (0 until the
    /// stream has ended).
    pub fn tokens_dropped(&self) -> usize {
        self.dropped
    }

    fn buffered(&self) -> usize {
        self.tokens.len() - self.cursor
    }

    /// Tokenizes further documents until at least `need` tokens are buffered or the
    /// documents run out.
    fn refill(&mut self, need: usize) -> Result<()> {
        while self.buffered() < need && self.next_doc < self.docs.len() {
            if self.cursor > 0 {
                self.tokens.drain(..self.cursor);
                self.doc_ids.drain(..self.cursor);
                self.positions.drain(..self.cursor);
                self.cursor = 0;
            }
            let start = self.next_doc;
            let mut end = start;
            let mut bytes = 0;
            while end < self.docs.len() && (end == start || bytes < self.cfg.chunk_bytes) {
                bytes += self.docs[end].text.len();
                end += 1;
            }
            let encoded = tokenize_documents(self.tok, &self.docs[start..end])?;
            for (doc, ids) in self.docs[start..end].iter().zip(encoded) {
                let n = ids.len() + 1;
                let last_pos = u32::try_from(ids.len())
                    .ok()
                    .filter(|&p| p < NOT_IN_DOCUMENT);
                if last_pos.is_none() {
                    return Err(Error::config(format!(
                        "{}: document has {} tokens, more than positions can count",
                        doc.source,
                        ids.len()
                    )));
                }
                self.tokens.push(self.cfg.bos_id);
                self.tokens.extend_from_slice(&ids);
                self.doc_ids.extend(std::iter::repeat_n(doc.id, n));
                self.positions.extend(0..n as u32);
                self.stream_tokens += n as u64;
            }
            self.next_doc = end;
        }
        Ok(())
    }

    fn next_context(&mut self) -> Result<Option<Context>> {
        let ctx_len = self.cfg.ctx_len;
        self.refill(ctx_len)?;
        let avail = self.buffered();
        let at_doc_start = avail > 0 && self.positions[self.cursor] == 0;
        let prepend = self.cfg.prepend_bos && !at_doc_start;
        let take = if prepend { ctx_len - 1 } else { ctx_len };
        if avail < take {
            self.dropped = avail;
            self.cursor += avail;
            return Ok(None);
        }
        let mut ctx = Context {
            tokens: Vec::with_capacity(ctx_len),
            doc_ids: Vec::with_capacity(ctx_len),
            positions: Vec::with_capacity(ctx_len),
        };
        let range = self.cursor..self.cursor + take;
        if prepend {
            ctx.tokens.push(self.cfg.bos_id);
            ctx.doc_ids.push(self.doc_ids[self.cursor]);
            ctx.positions.push(NOT_IN_DOCUMENT);
        }
        ctx.tokens.extend_from_slice(&self.tokens[range.clone()]);
        ctx.doc_ids.extend_from_slice(&self.doc_ids[range.clone()]);
        ctx.positions.extend_from_slice(&self.positions[range]);
        self.cursor += take;
        Ok(Some(ctx))
    }
}

impl Iterator for ContextStream<'_> {
    type Item = Result<Context>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        match self.next_context() {
            Ok(Some(ctx)) => Some(Ok(ctx)),
            Ok(None) => {
                self.finished = true;
                None
            }
            Err(e) => {
                self.finished = true;
                Some(Err(e))
            }
        }
    }
}

/// Prefixes a tokenizer error with the document it happened in.
fn in_document(d: &Document, e: Error) -> Error {
    match e {
        Error::Tokenizer(msg) => {
            Error::Tokenizer(format!("{} (document {}): {msg}", d.source, d.id))
        }
        e => e,
    }
}

/// All contexts of `docs` at once (see [`ContextStream`]).
pub fn pack_all<'a>(
    tok: &'a Tokenizer,
    docs: impl IntoIterator<Item = &'a Document>,
    cfg: PackConfig,
) -> Result<Vec<Context>> {
    ContextStream::new(tok, docs, cfg)?.collect()
}

/// The tokens of every document (no BOS), in parallel; output `i` belongs to `docs[i]`.
pub fn tokenize_documents(tok: &Tokenizer, docs: &[&Document]) -> Result<Vec<Vec<u32>>> {
    docs.par_iter()
        .map(|d| tok.encode(&d.text).map_err(|e| in_document(d, e)))
        .collect()
}

/// Total number of text tokens of `docs` (BOS not counted), tokenized in parallel.
pub fn count_tokens(tok: &Tokenizer, docs: &[&Document]) -> Result<u64> {
    docs.par_iter()
        .map(|d| {
            tok.encode(&d.text)
                .map(|ids| ids.len() as u64)
                .map_err(|e| in_document(d, e))
        })
        .sum()
}
