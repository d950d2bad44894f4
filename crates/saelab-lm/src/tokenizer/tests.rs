//! Tests of the tokenizer against the real SmolLM2 GGUF and corpus (see
//! [`saelab_testkit::real_data`]: skipped without them, failing under CI).

use std::collections::HashMap;

use rayon::prelude::*;
use saelab_testkit::assert_mentions;

use super::*;
use crate::test_support::{real_corpus, smollm2, smollm2_gguf};

fn id(tok: &Tokenizer, piece: &str) -> u32 {
    tok.token_to_id(piece)
        .unwrap_or_else(|| panic!("`{piece}` not in the vocabulary"))
}

#[test]
fn metadata_facts() {
    let Some(tok) = smollm2() else { return };
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(
        tok.token_piece(tok.bos_id().unwrap()).unwrap(),
        "<|im_start|>"
    );
    assert_eq!(
        tok.token_piece(tok.eos_id().unwrap()).unwrap(),
        "<|im_end|>"
    );
    // GGUF token type 3 (control) marks exactly ids 0..=16 in this file.
    assert_eq!(tok.special_ids(), (0..17).collect::<Vec<u32>>().as_slice());
    assert!(tok.is_special(0) && !tok.is_special(17));
}

#[test]
fn known_tokenizations() {
    let Some(tok) = smollm2() else { return };
    // No prefix space: "Hello" and " Hello" are different single tokens.
    assert_eq!(tok.encode("Hello").unwrap(), vec![id(&tok, "Hello")]);
    assert_eq!(tok.encode(" Hello").unwrap(), vec![id(&tok, "ĠHello")]);
    assert_ne!(id(&tok, "Hello"), id(&tok, "ĠHello"));
    // " the" is one token (the 9th merge builds it).
    assert_eq!(tok.encode(" the").unwrap(), vec![id(&tok, "Ġthe")]);
    // Digits are split one per token, and the space before a number stands alone.
    let pieces = [
        "In",
        "Ġ",
        "1",
        "7",
        "7",
        "6",
        ",",
        "Ġ",
        "1",
        "3",
        "Ġcolonies",
    ];
    let want: Vec<u32> = pieces.iter().map(|p| id(&tok, p)).collect();
    assert_eq!(tok.encode("In 1776, 13 colonies").unwrap(), want);
    // Multi-digit number tokens exist in the vocabulary but are never produced.
    let ids = tok.encode("2021 and 1790 and 3.14159").unwrap();
    for i in ids {
        let s = tok.token_str(i).unwrap();
        assert!(
            s.chars().filter(|c| c.is_numeric()).count() <= 1,
            "token {s:?} holds several digits"
        );
    }
    // A newline maps to its byte-level symbol.
    assert_eq!(tok.encode("\n").unwrap(), vec![id(&tok, "Ċ")]);
    assert_eq!(tok.token_str(id(&tok, "Ġthe")).unwrap(), " the");
}

#[test]
fn control_tokens_are_text_unless_asked() {
    let Some(tok) = smollm2() else { return };
    let text = "<|im_start|>user\nHi<|im_end|>";
    let literal = tok.encode(text).unwrap();
    assert!(
        !literal.iter().any(|&i| tok.is_special(i)),
        "plain encode must not produce control tokens: {literal:?}"
    );
    assert_eq!(tok.decode(&literal).unwrap(), text);
    let special = tok.encode_with_special(text).unwrap();
    assert_eq!(special.first(), Some(&1));
    assert_eq!(special.last(), Some(&2));
    assert_eq!(tok.decode(&special).unwrap(), text);
    // The text between the markers is tokenized the same way by both.
    assert_eq!(
        &special[1..special.len() - 1],
        tok.encode("user\nHi").unwrap().as_slice()
    );
}

#[test]
fn decode_rejects_out_of_range_ids() {
    let Some(tok) = smollm2() else { return };
    let err = tok.decode(&[5, 49152]).unwrap_err().to_string();
    assert!(err.contains("49152"), "{err}");
    assert!(tok.token_str(49152).is_none());
}

#[test]
fn roundtrip_whole_corpus() {
    let Some(tok) = smollm2() else { return };
    let Some(corpus) = real_corpus() else { return };
    assert_eq!(corpus.len(), 873);
    let total: usize = corpus
        .documents()
        .par_iter()
        .map(|d| {
            let ids = tok.encode(&d.text).unwrap();
            let back = tok.decode(&ids).unwrap();
            assert!(back == d.text, "round trip differs for {}", d.source);
            ids.len()
        })
        .sum();
    eprintln!(
        "round trip exact over {} documents, {total} tokens",
        corpus.len()
    );
    // docs/data.md: about 4 M tokens for about 19 MB of English.
    assert!((3_000_000..6_000_000).contains(&total), "{total} tokens");
}

/// Plain GPT-2 BPE on one pre-token, written independently of the `tokenizers` crate:
/// repeatedly merge every occurrence of the adjacent pair with the lowest merge rank.
fn naive_bpe(word: &str, ranks: &HashMap<(String, String), usize>) -> Vec<String> {
    let mut syms: Vec<String> = word.chars().map(String::from).collect();
    loop {
        let best = syms
            .windows(2)
            .filter_map(|w| ranks.get(&(w[0].clone(), w[1].clone())))
            .min();
        let Some(&best) = best else { break };
        let mut out = Vec::with_capacity(syms.len());
        let mut i = 0;
        while i < syms.len() {
            if i + 1 < syms.len()
                && ranks.get(&(syms[i].clone(), syms[i + 1].clone())) == Some(&best)
            {
                out.push(format!("{}{}", syms[i], syms[i + 1]));
                i += 2;
            } else {
                out.push(syms[i].clone());
                i += 1;
            }
        }
        syms = out;
    }
    syms
}

#[test]
fn merge_ranks_are_honoured() {
    let Some(path) = smollm2_gguf() else { return };
    let Some(corpus) = real_corpus() else { return };
    let tok = Tokenizer::from_gguf(&path).unwrap();
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let merges = content.metadata["tokenizer.ggml.merges"].to_vec().unwrap();
    let ranks: HashMap<(String, String), usize> = merges
        .iter()
        .enumerate()
        .map(|(r, m)| {
            let (a, b) = m.to_string().unwrap().split_once(' ').unwrap();
            ((a.to_string(), b.to_string()), r)
        })
        .collect();
    let alphabet = byte_level_alphabet();
    let to_symbols = |s: &str| -> String { s.bytes().map(|b| alphabet[b as usize]).collect() };

    // Words made only of letters, with and without a leading space, are one GPT-2
    // pre-token each, so the whole encoding is BPE on that one piece.
    let mut words: Vec<String> = corpus
        .documents()
        .iter()
        .step_by(7)
        .flat_map(|d| d.text.split(|c: char| !c.is_alphabetic()))
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect();
    words.sort();
    words.dedup();
    assert!(words.len() > 5000, "{} distinct words", words.len());
    let mut multi = 0;
    for w in &words {
        for text in [w.clone(), format!(" {w}")] {
            let want: Vec<u32> = naive_bpe(&to_symbols(&text), &ranks)
                .iter()
                .map(|p| id(&tok, p))
                .collect();
            let got = tok.encode(&text).unwrap();
            assert_eq!(got, want, "BPE of {text:?}");
            multi += usize::from(got.len() > 1);
        }
    }
    // Make sure the comparison exercised real merging, not just whole-word lookups.
    assert!(multi > 1000, "only {multi} multi-token words");
}

#[test]
fn tokenizer_json_matches_gguf() {
    let Some(gguf) = smollm2() else { return };
    let Some(corpus) = real_corpus() else { return };
    let dir = tempfile::tempdir().unwrap();
    // Write the GGUF-built pipeline as a Hugging Face tokenizer.json, plus the config
    // files from which `from_file` takes BOS / EOS.
    let json = gguf.special.to_string(false).unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), json).unwrap();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"}}"#,
    )
    .unwrap();
    let tok = Tokenizer::from_file(dir.path()).unwrap();
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(1), Some(2)));
    assert_eq!(tok.vocab_size(), gguf.vocab_size());
    assert_eq!(tok.special_ids(), gguf.special_ids());
    for d in corpus.documents().iter().step_by(40) {
        assert_eq!(tok.encode(&d.text).unwrap(), gguf.encode(&d.text).unwrap());
    }
    let chat = "<|im_start|>user\n12 apples<|im_end|>";
    assert_eq!(
        tok.encode_with_special(chat).unwrap(),
        gguf.encode_with_special(chat).unwrap()
    );
    assert_eq!(tok.encode(chat).unwrap(), gguf.encode(chat).unwrap());

    // config.json takes precedence over tokenizer_config.json.
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"bos_token_id": 0, "eos_token_id": [0, 2]}"#,
    )
    .unwrap();
    let tok = Tokenizer::from_path(dir.path().join("tokenizer.json")).unwrap();
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(0), Some(0)));
}

#[test]
fn bad_files_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.gguf");
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"this is not a gguf file at all").unwrap();
    // A missing file, a file that is not a GGUF: (the error, its kind, the file it names).
    type IsKind = fn(&saelab_core::Error) -> bool;
    let cases: [(Error, IsKind, &str); 2] = [
        (
            Tokenizer::from_gguf(&missing).unwrap_err(),
            |e| matches!(e, saelab_core::Error::Io { .. }),
            "nope.gguf",
        ),
        (
            Tokenizer::from_path(&junk).unwrap_err(),
            |e| matches!(e, saelab_core::Error::BadFile { .. }),
            "junk.gguf",
        ),
    ];
    for (err, is_kind, file) in cases {
        assert!(matches!(&err, Error::Core(e) if is_kind(e)), "{err}");
        assert_mentions(&err.to_string(), &[file]);
    }

    let json = dir.path().join("tokenizer.json");
    std::fs::write(&json, b"{\"model\": 3}").unwrap();
    let err = Tokenizer::from_file(&json).unwrap_err().to_string();
    assert_mentions(&err, &["tokenizer.json", "not a valid tokenizer.json"]);
}

#[test]
fn unsupported_gguf_tokenizers_are_refused() {
    use gguf_file::Value as V;
    let strs = |v: &[&str]| V::Array(v.iter().map(|s| V::String(s.to_string())).collect());
    let refusal = |md: &HashMap<String, V>| {
        Tokenizer::from_gguf_metadata(md, "m.gguf")
            .unwrap_err()
            .to_string()
    };
    let mut md: HashMap<String, V> = HashMap::new();
    md.insert("tokenizer.ggml.model".into(), V::String("bert".into()));
    md.insert("tokenizer.ggml.tokens".into(), strs(&["a", "b"]));
    md.insert("tokenizer.ggml.merges".into(), strs(&[]));
    let e = refusal(&md);
    assert_mentions(&e, &["m.gguf", "`bert`", "`gpt2`", "`llama`"]);
    assert!(!e.contains('\n'), "{e}");

    // SentencePiece needs scores, and byte tokens for its byte fallback.
    md.insert("tokenizer.ggml.model".into(), V::String("llama".into()));
    assert_mentions(&refusal(&md), &["m.gguf", "tokenizer.ggml.scores"]);
    md.insert(
        "tokenizer.ggml.scores".into(),
        V::Array(vec![V::F32(0.0), V::F32(-1.0)]),
    );
    assert_mentions(&refusal(&md), &["m.gguf", "`<0x00>`"]);

    md.insert("tokenizer.ggml.model".into(), V::String("gpt2".into()));
    // An unknown pre-tokenizer is one line naming it, never a guess.
    md.insert("tokenizer.ggml.pre".into(), V::String("llama-bpe".into()));
    let e = refusal(&md);
    assert_mentions(&e, &["m.gguf", "`llama-bpe`", "qwen2"]);
    assert!(!e.contains('\n'), "{e}");

    // A vocabulary without the 256 byte symbols would silently drop characters.
    md.insert("tokenizer.ggml.pre".into(), V::String("smollm".into()));
    assert_mentions(&refusal(&md), &["byte-level symbol"]);
}

#[test]
fn unrepresentable_characters_are_refused_not_dropped() {
    let Some(tok) = smollm2() else { return };
    assert!(!tok.represents_all_bytes());
    let err = tok.encode("ok \u{4} no").unwrap_err().to_string();
    assert!(err.contains("U+0004") && err.contains("byte 3"), "{err}");
    let err = tok
        .encode_with_special("é\u{40000}")
        .unwrap_err()
        .to_string();
    assert!(err.contains("U+40000") && err.contains("byte 2"), "{err}");
    // Every other character of the Basic Multilingual Plane and the first supplementary
    // planes round-trips.
    let all: String = (0x07..0x13u32)
        .chain(0x17..0x1D)
        .chain(0x1E..0xD800)
        .chain(0xE000..0x11000)
        .chain(0x1F300..0x1F700)
        .filter_map(char::from_u32)
        .collect();
    let ids = tok.encode(&all).unwrap();
    assert_eq!(tok.decode(&ids).unwrap(), all);
}
