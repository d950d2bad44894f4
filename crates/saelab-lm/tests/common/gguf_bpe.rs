//! Test/bench-only helper: a `tokenizers` byte-level BPE built from the vocabulary and
//! merges stored in a GGUF file's metadata (SmolLM2 pre-tokenizer: digits split one by
//! one, byte-level without a prefix space). The crate's own tokenizer lives in
//! `saelab_lm::tokenizer`; this exists so the model tests do not depend on it.

use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::Tokenizer;

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) => a
            .iter()
            .map(|x| match x {
                Value::String(s) => s.clone(),
                other => panic!("expected a string, got {other:?}"),
            })
            .collect(),
        other => panic!("expected an array, got {other:?}"),
    }
}

/// Build the tokenizer from `path`'s `tokenizer.ggml.tokens` / `tokenizer.ggml.merges`.
pub fn gguf_tokenizer(path: &Path) -> Tokenizer {
    let mut f = std::fs::File::open(path).expect("open GGUF");
    let ct = Content::read(&mut f).expect("read GGUF header");
    let tokens = strings(&ct.metadata["tokenizer.ggml.tokens"]);
    let merges = strings(&ct.metadata["tokenizer.ggml.merges"]);
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, i as u32))
        .collect();
    let merges: Vec<(String, String)> = merges
        .iter()
        .map(|m| {
            let (a, b) = m.split_once(' ').expect("merge has two parts");
            (a.to_string(), b.to_string())
        })
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .expect("build BPE");
    let mut tk = Tokenizer::new(bpe);
    tk.with_pre_tokenizer(Some(Sequence::new(vec![
        Digits::new(true).into(),
        ByteLevel::new(false, true, true).into(),
    ])));
    tk
}

/// Token ids of `text` (no special tokens added).
pub fn encode(tk: &Tokenizer, text: &str) -> Vec<u32> {
    tk.encode(text, false).expect("encode").get_ids().to_vec()
}
