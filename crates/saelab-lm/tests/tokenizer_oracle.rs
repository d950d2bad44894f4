//! saelab's tokenizer against an independent implementation: llama.cpp's own, run
//! through node-llama-cpp on the SmolLM2 GGUF's vocabulary
//! (`tests/oracle/llama_cpp_tokenize.mjs`, installed by `scripts/setup.sh --oracle`).
//! Every document of the real corpus must get exactly the same token ids. saelab builds
//! its pipeline (digits split one by one, byte-level BPE) from the GGUF metadata itself;
//! llama.cpp applies its own pre-tokenizer for the file's `smollm` type, so a wrong
//! assumption in either shows up here. Skipped without the real data or the oracle,
//! failing instead under CI.

use std::path::Path;
use std::process::Command;

use saelab_lm::text::{Corpus, LoadOptions};
use saelab_lm::tokenizer::Tokenizer;
use saelab_testkit::{real_data, tokenizer_oracle};

/// Token ids of every line of `docs` (one JSON string each) by the oracle.
fn oracle_ids(oracle: &Path, model: &Path, docs: &Path, out: &Path) -> Vec<Vec<u32>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracle/llama_cpp_tokenize.mjs");
    let o = Command::new("node")
        .arg(&script)
        .args([oracle, model, docs, out])
        .output()
        .expect("run node");
    assert!(
        o.status.success(),
        "the tokenizer oracle failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let bytes = std::fs::read(out).unwrap();
    let words: Vec<u32> = bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let mut docs = Vec::new();
    let mut at = 0;
    while at < words.len() {
        let n = words[at] as usize;
        docs.push(words[at + 1..at + 1 + n].to_vec());
        at += 1 + n;
    }
    docs
}

#[test]
fn every_corpus_document_tokenizes_as_llama_cpp_does() {
    let Some(data) = real_data() else { return };
    let Some(oracle) = tokenizer_oracle() else {
        return;
    };
    let tok = Tokenizer::from_gguf(&data.model).unwrap();
    let corpus = Corpus::load(&data.corpus, &LoadOptions::default()).unwrap();
    let texts: Vec<&str> = corpus.documents().iter().map(|d| d.text.as_str()).collect();
    let tmp = tempfile::tempdir().unwrap();
    let docs = tmp.path().join("docs.jsonl");
    let jsonl: String = texts
        .iter()
        .map(|t| serde_json::to_string(t).unwrap() + "\n")
        .collect();
    std::fs::write(&docs, jsonl).unwrap();
    let theirs = oracle_ids(&oracle, &data.model, &docs, &tmp.path().join("ids.bin"));
    let ours = tok.encode_batch(&texts).unwrap();
    assert_eq!(theirs.len(), ours.len(), "one token list per document");

    let mut differ = Vec::new();
    for ((doc, a), b) in corpus.documents().iter().zip(&ours).zip(&theirs) {
        if a != b {
            let at = a
                .iter()
                .zip(b)
                .position(|(x, y)| x != y)
                .unwrap_or(a.len().min(b.len()));
            let show = |ids: &[u32]| -> Vec<String> {
                ids[at.saturating_sub(2)..(at + 3).min(ids.len())]
                    .iter()
                    .map(|&i| format!("{i} {:?}", tok.token_piece(i).unwrap_or_default()))
                    .collect()
            };
            differ.push(format!(
                "{}: token {at}: saelab {:?}, llama.cpp {:?}",
                doc.source,
                show(a),
                show(b)
            ));
        }
    }
    let tokens: usize = ours.iter().map(Vec::len).sum();
    eprintln!(
        "{} documents, {tokens} tokens; {} differ",
        texts.len(),
        differ.len()
    );
    assert!(tokens > 3_000_000, "{tokens} tokens");
    assert!(
        differ.is_empty(),
        "{} of {} documents tokenize differently, e.g.\n{}",
        differ.len(),
        texts.len(),
        differ[..differ.len().min(10)].join("\n")
    );
}
