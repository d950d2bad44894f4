//! Tokenizers against llama.cpp's, run through node-llama-cpp
//! (`tests/oracle/llama_cpp_tokenize.mjs`, installed by `scripts/setup.sh --oracle`):
//! fixed strings with their ids as llama.cpp gives them, and every document of the real
//! corpus, for each model's tokenizer.

use std::path::Path;
use std::process::Command;

use saelab_lm::text::{Corpus, LoadOptions};
use saelab_lm::tokenizer::Tokenizer;
use saelab_testkit::tokenizer_oracle;

/// A string, its ids by `encode`, and by `encode_with_special` when they differ.
pub type Fixed = (&'static str, &'static [u32], Option<&'static [u32]>);

/// Every case of `cases` encodes to its ids (and with special tokens to its special
/// ids), and decodes back to its text.
pub fn assert_fixed_ids(tok: &Tokenizer, cases: &[Fixed]) {
    for (text, plain, special) in cases {
        let ids = tok.encode(text).unwrap();
        assert_eq!(&ids, plain, "encode({text:?})");
        assert_eq!(&tok.decode(&ids).unwrap(), text);
        let want = special.unwrap_or(plain);
        assert_eq!(
            &tok.encode_with_special(text).unwrap(),
            want,
            "encode_with_special({text:?})"
        );
    }
}

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
    let words: Vec<u32> = std::fs::read(out)
        .unwrap()
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

/// Every document of the corpus at `corpus` round-trips exactly through the tokenizer
/// of the GGUF at `model` (more than `min_tokens` tokens in all) and, when the oracle
/// is installed (required under CI, see `saelab_testkit::tokenizer_oracle`), gets
/// exactly llama.cpp's ids.
pub fn assert_corpus_matches_llama_cpp(model: &Path, corpus: &Path, min_tokens: usize) {
    let tok = Tokenizer::from_gguf(model).unwrap();
    let corpus = Corpus::load(corpus, &LoadOptions::default()).unwrap();
    let texts: Vec<&str> = corpus.documents().iter().map(|d| d.text.as_str()).collect();
    let ours = tok.encode_batch(&texts).unwrap();
    let tokens: usize = ours.iter().map(Vec::len).sum();
    for (doc, ids) in corpus.documents().iter().zip(&ours) {
        assert_eq!(
            tok.decode(ids).unwrap(),
            doc.text,
            "{}: round trip",
            doc.source
        );
    }
    eprintln!(
        "{} documents, {tokens} tokens: exact round trip",
        texts.len()
    );
    assert!(tokens > min_tokens, "{tokens} tokens");

    let Some(oracle) = tokenizer_oracle() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let docs = tmp.path().join("docs.jsonl");
    let jsonl: String = texts
        .iter()
        .map(|t| serde_json::to_string(t).unwrap() + "\n")
        .collect();
    std::fs::write(&docs, jsonl).unwrap();
    let theirs = oracle_ids(&oracle, model, &docs, &tmp.path().join("ids.bin"));
    assert_eq!(theirs.len(), ours.len(), "one token list per document");
    let differ: Vec<String> = corpus
        .documents()
        .iter()
        .zip(&ours)
        .zip(&theirs)
        .filter(|((_, a), b)| a != b)
        .map(|((doc, a), b)| {
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
            format!(
                "{}: token {at}: saelab {:?}, llama.cpp {:?}",
                doc.source,
                show(a),
                show(b)
            )
        })
        .collect();
    eprintln!(
        "llama.cpp: {} of {} documents differ",
        differ.len(),
        texts.len()
    );
    assert!(
        differ.is_empty(),
        "{} of {} documents tokenize differently, e.g.\n{}",
        differ.len(),
        texts.len(),
        differ[..differ.len().min(10)].join("\n")
    );
}
