//! Text sources and context packing.
//!
//! - [`source`]: a [`Corpus`] of [`Document`]s read from a plain-text file, a folder of
//!   `*.txt` files, or JSONL, and the deterministic train / held-out split by document
//!   ([`HeldOut`], [`Part`]);
//! - [`pack`]: documents tokenized, BOS-prefixed, concatenated and cut into fixed-length
//!   [`Context`]s that record, per token, the token id, the document id and the position
//!   in the document; streamed by [`ContextStream`] with parallel tokenization.

pub mod pack;
pub mod source;

pub use pack::{
    count_tokens, pack_all, tokenize_documents, Context, ContextStream, PackConfig, NOT_IN_DOCUMENT,
};
pub use source::{Corpus, Document, HeldOut, LoadOptions, Part};

#[cfg(test)]
mod tests;
