//! Test helpers shared by the unit tests of the crate: a tiny byte-level BPE tokenizer
//! and a tiny random LLaMA in the Hugging Face layout, so that the contexts, the cache
//! and the stream can be tested without the real model; and the real SmolLM2 tokenizer
//! and corpus for the tokenizer and text tests (through [`saelab_testkit::real_data`]:
//! `None` with a message when `scripts/setup.sh` has not fetched them, a panic when
//! `CI` or `SAELAB_REQUIRE_DATA` is set).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value as V;

use crate::model::HookedModel;
use crate::text::{Corpus, LoadOptions};
use crate::tokenizer::Tokenizer;

/// A byte-level BPE: BOS (`<s>`, id 0) + the 256 byte symbols + a few merges
/// (262 tokens).
pub fn tiny_tokenizer() -> Tokenizer {
    let mut tokens = vec!["<s>".to_string()];
    let mut next = 256u32;
    for b in 0u32..256 {
        let printable = (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        let c = if printable {
            char::from_u32(b).unwrap()
        } else {
            next += 1;
            char::from_u32(next - 1).unwrap()
        };
        tokens.push(c.to_string());
    }
    let merges = ["t h", "th e", "Ġ the", "a n", "an d"];
    for m in merges {
        tokens.push(m.replace(' ', ""));
    }
    let strs = |v: Vec<String>| V::Array(v.into_iter().map(V::String).collect());
    let mut md = HashMap::new();
    md.insert("tokenizer.ggml.model".to_string(), V::String("gpt2".into()));
    md.insert("tokenizer.ggml.pre".to_string(), V::String("smollm".into()));
    let mut types = vec![V::I32(1); tokens.len()];
    types[0] = V::I32(3);
    md.insert("tokenizer.ggml.token_type".to_string(), V::Array(types));
    md.insert("tokenizer.ggml.tokens".to_string(), strs(tokens));
    md.insert(
        "tokenizer.ggml.merges".to_string(),
        strs(merges.iter().map(|s| s.to_string()).collect()),
    );
    md.insert("tokenizer.ggml.bos_token_id".to_string(), V::U32(0));
    Tokenizer::from_gguf_metadata(&md, "tiny.gguf").unwrap()
}

/// The random HF-layout LLaMA writer, shared with the integration tests.
#[path = "../tests/common/tiny_llama.rs"]
mod tiny_llama;

/// Writes a random 3-layer LLaMA (d 32, 4 heads, 2 KV heads, vocabulary 262) in the
/// Hugging Face layout into `dir` and loads it.
pub fn tiny_model(dir: &Path) -> HookedModel {
    tiny_llama::TinyLlama {
        vocab: 262,
        d: 32,
        heads: 4,
        kv_heads: 2,
        head_dim: 8,
        ffn: 48,
        layers: 3,
        tie: true,
        dtype: safetensors::Dtype::F32,
        max_positions: 256,
        bos: 0,
        eos: 0.into(),
    }
    .write(dir);
    HookedModel::load(dir).unwrap()
}

/// [`tiny_model`] in a fresh temporary folder (which must live as long as the model is
/// used), with [`tiny_tokenizer`] and [`tiny_corpus`].
pub fn tiny_setup() -> (tempfile::TempDir, HookedModel, Tokenizer, Corpus) {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    (dir, model, tiny_tokenizer(), tiny_corpus())
}

/// 40 short English-like documents (ids 0..40; with the default rule, 19 and 39 are
/// held out).
pub fn tiny_corpus() -> Corpus {
    let words = [
        "the", "cat", "and", "dog", "ran", "then", "a", "ship", "sailed", "north", "whale", "sea",
        "union", "state", "of", "is", "strong",
    ];
    let texts = (0..40usize).map(|i| {
        let n = 12 + (i * 7) % 30;
        let text: Vec<&str> = (0..n)
            .map(|j| words[(i * 5 + j * j + j) % words.len()])
            .collect();
        (format!("doc{i}"), text.join(" "))
    });
    Corpus::from_texts(texts, &LoadOptions::default())
}

/// The SmolLM2 GGUF, or `None` (with a message) when the real data is absent.
pub fn smollm2_gguf() -> Option<PathBuf> {
    Some(saelab_testkit::real_data()?.model)
}

/// The SmolLM2 tokenizer, or `None` when the real data is absent.
pub fn smollm2() -> Option<Tokenizer> {
    Some(Tokenizer::from_gguf(smollm2_gguf()?).expect("load the SmolLM2 tokenizer"))
}

/// The real corpus (all three collections), or `None` when the real data is absent.
pub fn real_corpus() -> Option<Corpus> {
    let dir = saelab_testkit::real_data()?.corpus;
    Some(Corpus::load(&dir, &LoadOptions::default()).expect("load the real corpus"))
}
