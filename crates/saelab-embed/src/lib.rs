//! Sentence embeddings for the auto-interpretation embedding scorer.
//!
//! The embedding scorer of "Automatically Interpreting Millions of Features in LLMs"
//! (delphi) embeds a latent's explanation, as the query
//! `"Instruct: Retrieve sentences that could be related to the explanation.\nQuery:" +
//! explanation`, and example texts with sentence-transformers/all-MiniLM-L6-v2, and
//! ranks the texts by cosine similarity to it. This crate is that encoder, so the scorer
//! runs in Rust with no Python: [`SentenceEncoder::load`] reads a sentence-transformers
//! model folder (`scripts/setup.sh` unpacks all-MiniLM-L6-v2 into
//! `data/models/all-MiniLM-L6-v2/`), [`SentenceEncoder::embed`] turns texts into
//! vectors, [`cosine`] compares two. The caller builds the query text.
//!
//! What runs is what the folder's files say: BERT (`config.json`, `model.safetensors`;
//! candle-transformers' `bert`, f32 on the CPU), the tokenizer (`tokenizer.json`, the
//! `tokenizers` crate), truncation at `max_seq_length` (`sentence_bert_config.json`),
//! mean pooling over the attention mask (`1_Pooling/config.json`) and, when
//! `modules.json` lists a Normalize module, unit L2 norm. Anything else the files ask
//! for (another architecture, pooling mode or module) is refused with a one-line
//! [`Error`] naming the file, never approximated.
//!
//! ```no_run
//! use saelab_embed::{cosine, SentenceEncoder};
//! let enc = SentenceEncoder::load("data/models/all-MiniLM-L6-v2")?;
//! let e = enc.embed(&["A man is playing a guitar.", "Someone plays an acoustic guitar."])?;
//! assert!(cosine(&e[0], &e[1]) > 0.5);
//! # Ok::<(), saelab_embed::Error>(())
//! ```
//!
//! Checked (`tests/encoder.rs`) against an independent NumPy forward of the same files
//! (`scripts/minilm_reference.sh`), to 1e-4 per component, and for the semantics a
//! scorer relies on: paraphrases closer than unrelated texts, batching and padding that
//! change nothing.

#![warn(missing_docs)]

mod encoder;
mod error;
mod pipeline;

pub use encoder::SentenceEncoder;
pub use error::{Error, Result};

/// The cosine similarity `a·b / (‖a‖ ‖b‖)` of two vectors of one length, computed in
/// f64; 0 when either is all zeros. For normalised embeddings it is their dot product.
///
/// Panics if the lengths differ.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "cosine of vectors of different lengths");
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        return 0.0;
    }
    (ab / (aa.sqrt() * bb.sqrt())) as f32
}

#[cfg(test)]
mod tests {
    use super::cosine;

    /// The scorer may share one encoder between threads.
    #[test]
    fn the_encoder_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<super::SentenceEncoder>();
    }

    #[test]
    fn cosine_of_simple_vectors() {
        assert!((cosine(&[1.0, 0.0], &[1.0, 0.0]) - 1.0).abs() < 1e-7);
        assert!(cosine(&[1.0, 0.0], &[0.0, 2.0]).abs() < 1e-7);
        assert!((cosine(&[1.0, 1.0], &[-2.0, -2.0]) + 1.0).abs() < 1e-7);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 2.0]), 0.0);
    }
}
