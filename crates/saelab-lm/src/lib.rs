//! `saelab-lm`: hooked LLaMA-family transformers on candle, tokenizers and text sources.
//!
//! - [`model`]: weights from GGUF (dequantised to f32) or a Hugging Face directory, and a
//!   forward pass with TransformerLens-style hook points (capture, patch, stop early);
//! - [`tokenizer`]: byte-level BPE from GGUF metadata or `tokenizer.json`;
//! - [`text`]: documents from text files, folders and JSONL, packed into contexts;
//! - [`error`]: the crate's error type.

pub mod error;
pub mod model;
pub mod text;
pub mod tokenizer;

pub use error::{Error, Result};
