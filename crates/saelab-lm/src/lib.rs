//! `saelab-lm`: hooked transformer language models, tokenizers and text sources.
//!
//! - [`model`]: a family-neutral hooked model (LLaMA for now) with weights from GGUF
//!   (dequantised to f32) or a Hugging Face directory, and a forward pass on saelab's
//!   own f32 kernels with TransformerLens-style hook points (capture, patch in place,
//!   stop early);
//! - [`generate`]: text generation over the model's KV cache (greedy, temperature,
//!   top-p, seed, stop tokens), one prompt or a batch, with patches at every step;
//! - [`tokenizer`]: byte-level BPE from GGUF metadata or `tokenizer.json`;
//! - [`chat`]: the ChatML chat template (SmolLM2's instruct models) to token ids;
//! - [`text`]: documents from text files, folders and JSONL, packed into contexts;
//! - [`contexts`]: a corpus part's contexts in a fixed (shuffled) order, run through
//!   the model with BOS rows dropped;
//! - [`cache`]: the sharded activation cache written by `saelab extract`;
//! - [`stream`]: activations streamed from the model as shuffled training batches;
//! - [`error`]: the crate's error type.

#![warn(missing_docs)]

pub mod cache;
pub mod chat;
pub mod contexts;
pub mod error;
pub mod generate;
pub mod model;
pub mod stream;
pub mod text;
pub mod tokenizer;

#[cfg(test)]
mod test_support;

pub use error::{Error, Result};
