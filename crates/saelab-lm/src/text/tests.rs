//! Tests of text sources, the split and packing. Packing tests run on a small
//! byte-level tokenizer (`test_support`), and again on the real SmolLM2 tokenizer and corpus
//! when `data/` is present.

use std::path::Path;

use saelab_testkit::assert_mentions;

use super::*;
use crate::error::Error;
use crate::test_support::tiny_tokenizer;
use crate::test_support::{real_corpus, smollm2};
use crate::tokenizer::Tokenizer;

fn small_corpus() -> Corpus {
    let texts = [
        "the cat and the dog",
        "",
        "In 1776 the thirteen colonies declared independence.",
        "x",
        "and then there were none; the end",
        "   ",
        "A much longer document, the kind that spans several contexts and the next one too, \
         and ends somewhere in the middle of the last one.",
        "é and ü and 日本",
    ];
    let corpus = Corpus::from_texts(
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("doc{i}"), *t)),
        &LoadOptions::default(),
    );
    // Empty and whitespace-only texts are skipped and ids stay contiguous.
    assert_eq!(corpus.len(), 6);
    for (i, d) in corpus.documents().iter().enumerate() {
        assert_eq!(d.id as usize, i);
    }
    corpus
}

/// The stream of `[BOS, tokens...]` per document, built directly from `encode`.
fn expected_stream(tok: &Tokenizer, docs: &[&Document], bos: u32) -> Vec<(u32, u32, u32)> {
    let mut out = Vec::new();
    for d in docs {
        out.push((bos, d.id, 0));
        for (i, t) in tok.encode(&d.text).unwrap().into_iter().enumerate() {
            out.push((t, d.id, i as u32 + 1));
        }
    }
    out
}

fn flatten(ctxs: &[Context]) -> Vec<(u32, u32, u32)> {
    ctxs.iter()
        .flat_map(|c| (0..c.len()).map(move |i| (c.tokens[i], c.doc_ids[i], c.positions[i])))
        .collect()
}

/// Checks every invariant of packing `docs` with `cfg`.
fn check_packing(tok: &Tokenizer, docs: &[&Document], cfg: &PackConfig) -> Vec<Context> {
    let bos = cfg.bos_id;
    let stream = expected_stream(tok, docs, bos);
    let mut s = ContextStream::new(tok, docs.iter().copied(), cfg.clone()).unwrap();
    let ctxs: Vec<Context> = s.by_ref().collect::<crate::Result<_>>().unwrap();
    assert_eq!(s.stream_tokens() as usize, stream.len());
    for c in &ctxs {
        assert_eq!(c.len(), cfg.ctx_len);
        assert_eq!(c.doc_ids.len(), cfg.ctx_len);
        assert_eq!(c.positions.len(), cfg.ctx_len);
        if cfg.prepend_bos {
            assert_eq!(c.tokens[0], bos, "context must start with BOS");
            assert!(c.positions[0] == 0 || c.positions[0] == NOT_IN_DOCUMENT);
            assert_eq!(
                c.tokens.iter().filter(|&&t| t == bos).count(),
                c.positions
                    .iter()
                    .filter(|&&p| p == 0 || p == NOT_IN_DOCUMENT)
                    .count(),
                "BOS appears only at document starts and context starts"
            );
            // A prepended BOS belongs to the document of the token after it.
            if c.positions[0] == NOT_IN_DOCUMENT {
                assert_eq!(c.doc_ids[0], c.doc_ids[1]);
                assert_ne!(c.positions[1], 0);
            }
        }
        assert!(!c.positions[1..].contains(&NOT_IN_DOCUMENT));
    }
    // Dropping the prepended BOSes gives back the stream, minus the dropped tail.
    let kept: Vec<_> = flatten(&ctxs)
        .into_iter()
        .filter(|&(_, _, p)| p != NOT_IN_DOCUMENT)
        .collect();
    assert_eq!(kept.len() + s.tokens_dropped(), stream.len());
    assert_eq!(kept.as_slice(), &stream[..kept.len()]);
    assert!(s.tokens_dropped() < cfg.ctx_len);
    ctxs
}

#[test]
fn packing_preserves_tokens_and_places_bos() {
    let tok = tiny_tokenizer();
    let corpus = small_corpus();
    let docs: Vec<&Document> = corpus.documents().iter().collect();
    for ctx_len in [2, 3, 7, 16, 64] {
        for prepend_bos in [true, false] {
            let mut cfg = PackConfig::new(ctx_len, 0);
            cfg.prepend_bos = prepend_bos;
            let ctxs = check_packing(&tok, &docs, &cfg);
            assert!(!ctxs.is_empty());
            // The stream does not depend on how many documents are tokenized at once.
            cfg.chunk_bytes = 1;
            assert_eq!(check_packing(&tok, &docs, &cfg), ctxs);
        }
    }
    // Without prepend_bos, contexts are exactly consecutive blocks of the stream.
    let cfg = PackConfig {
        prepend_bos: false,
        ..PackConfig::new(5, 0)
    };
    let ctxs = pack_all(&tok, docs.iter().copied(), cfg).unwrap();
    let stream = expected_stream(&tok, &docs, 0);
    assert_eq!(ctxs.len(), stream.len() / 5);
    assert_eq!(flatten(&ctxs), stream[..ctxs.len() * 5]);
}

#[test]
fn prepend_bos_counts() {
    // Hand-checkable: documents of 3 and 5 tokens (4 and 6 with BOS), ctx_len 4.
    let tok = tiny_tokenizer();
    let corpus = Corpus::from_texts([("a", "xyz"), ("b", "vwxyz")], &LoadOptions::default());
    let docs: Vec<&Document> = corpus.documents().iter().collect();
    let ctxs = pack_all(&tok, docs.iter().copied(), PackConfig::new(4, 0)).unwrap();
    let x = |c: char| tok.encode(&c.to_string()).unwrap()[0];
    let m = NOT_IN_DOCUMENT;
    // Stream: B x y z | B v w x y z.
    // Context 1 starts at a document BOS: B x y z.  Context 2 likewise: B v w x.
    // Context 3 continues document 1: prepended B, then y z — only 2 of the 3 tokens
    // needed remain, so it is dropped.
    assert_eq!(ctxs.len(), 2);
    assert_eq!(ctxs[0].tokens, vec![0, x('x'), x('y'), x('z')]);
    assert_eq!(ctxs[0].positions, vec![0, 1, 2, 3]);
    assert_eq!(ctxs[1].tokens, vec![0, x('v'), x('w'), x('x')]);
    assert_eq!(ctxs[1].doc_ids, vec![1; 4]);
    let ctxs = pack_all(&tok, docs.iter().copied(), PackConfig::new(3, 0)).unwrap();
    // B x y | B z (prepended, continues doc 0) | B v w | B x y | (z dropped)
    assert_eq!(ctxs.len(), 4);
    assert_eq!(ctxs[1].tokens, vec![0, x('z'), 0]);
    assert_eq!(ctxs[1].positions, vec![m, 3, 0]);
    assert_eq!(ctxs[1].doc_ids, vec![0, 0, 1]);
    assert_eq!(ctxs[3].positions, vec![m, 3, 4]);
}

#[test]
fn shuffled_packing_is_a_deterministic_permutation() {
    let tok = tiny_tokenizer();
    let corpus = small_corpus();
    let docs: Vec<&Document> = corpus.documents().iter().collect();
    let cfg = PackConfig {
        shuffle_seed: Some(7),
        prepend_bos: false,
        ..PackConfig::new(2, 0)
    };
    let a = pack_all(&tok, docs.iter().copied(), cfg.clone()).unwrap();
    let b = pack_all(&tok, docs.iter().copied(), cfg).unwrap();
    assert_eq!(a, b);
    let order: Vec<u32> = flatten(&a)
        .into_iter()
        .filter(|&(_, _, p)| p == 0)
        .map(|(_, d, _)| d)
        .collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(sorted, (0..corpus.len() as u32).collect::<Vec<_>>());
    assert_ne!(order, sorted, "seed 7 should change the order");
}

#[test]
fn bad_pack_config_errors() {
    let tok = tiny_tokenizer();
    let corpus = small_corpus();
    let err = ContextStream::new(&tok, corpus.documents(), PackConfig::new(1, 0))
        .err()
        .unwrap();
    assert!(
        matches!(err, Error::Core(saelab_core::Error::Config(_))),
        "{err}"
    );
    let cfg = PackConfig {
        prepend_bos: false,
        ..PackConfig::new(1, 0)
    };
    assert!(ContextStream::new(&tok, corpus.documents(), cfg).is_ok());
    let no_bos = tok.clone().with_special_ids(None, None);
    let err = PackConfig::for_tokenizer(8, &no_bos)
        .unwrap_err()
        .to_string();
    assert!(err.contains("tiny.gguf") && err.contains("BOS"), "{err}");
    // Packing nothing yields nothing.
    assert!(pack_all(&tok, [], PackConfig::new(8, 0))
        .unwrap()
        .is_empty());
}

#[test]
fn held_out_split_rule() {
    let h = HeldOut::default();
    assert_eq!((h.every(), h.offset()), (20, 19));
    assert!(h.is_held_out(19) && h.is_held_out(39) && !h.is_held_out(20) && !h.is_held_out(0));
    assert!(HeldOut::new(20, 20).is_err());
    assert!(HeldOut::new(0, 0).is_err());
    let h = HeldOut::new(3, 0).unwrap();
    let corpus = small_corpus();
    let ids = |p| corpus.part(p, h).iter().map(|d| d.id).collect::<Vec<_>>();
    assert_eq!(ids(Part::HeldOut), vec![0, 3]);
    assert_eq!(ids(Part::Train), vec![1, 2, 4, 5]);
    assert_eq!(ids(Part::All), vec![0, 1, 2, 3, 4, 5]);
}

fn write(path: &Path, text: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn folder_is_recursive_sorted_and_txt_only() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(&root.join("b/x.txt"), b"bx");
    write(&root.join("a.txt"), b"a");
    write(&root.join("a/z.TXT"), b"az");
    write(&root.join("a/notes.md"), b"ignored");
    write(&root.join("c/empty.txt"), b"\n\n");
    let corpus = Corpus::load(root, &LoadOptions::default()).unwrap();
    let texts: Vec<&str> = corpus.documents().iter().map(|d| d.text.as_str()).collect();
    assert_eq!(texts, vec!["az", "a", "bx"]);
    assert!(corpus.documents()[0].source.ends_with("z.TXT"));
    let keep = LoadOptions {
        keep_empty: true,
        ..LoadOptions::default()
    };
    assert_eq!(Corpus::load(root, &keep).unwrap().len(), 4);
    // A single file is one document, text kept exactly.
    let one = Corpus::load(root.join("b/x.txt"), &LoadOptions::default()).unwrap();
    assert_eq!(one.documents()[0].text, "bx");
}

/// The message of the error that loading `path` gives.
fn load_error(path: &Path, opts: &LoadOptions) -> String {
    Corpus::load(path, opts).unwrap_err().to_string()
}

#[test]
fn source_errors_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let opts = LoadOptions::default();

    let missing = root.join("missing.txt");
    let err = Corpus::load(&missing, &opts).unwrap_err();
    assert!(matches!(err, Error::Core(saelab_core::Error::Io { .. })));
    assert!(err.to_string().contains("missing.txt"), "{err}");

    // A folder without documents, one holding an empty document, a file that is not
    // UTF-8: (file, bytes, the folder to load, what the error says).
    for (file, text, folder, needles) in [
        (
            "empty/readme.md",
            &b"not text"[..],
            "empty",
            &["empty", "no *.txt documents found"][..],
        ),
        ("blank/one.txt", b"  \n", "blank", &["blank", "empty"]),
        (
            "latin1/old.txt",
            b"caf\xe9",
            "latin1",
            &["old.txt", "UTF-8", "offset 3"],
        ),
    ] {
        write(&root.join(file), text);
        assert_mentions(&load_error(&root.join(folder), &opts), needles);
    }
}

#[test]
fn jsonl_records_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.jsonl");
    write(
        &good,
        b"{\"text\": \"first\", \"id\": 1}\n\n{\"text\": \"second \\u00e9\"}\r\n{\"text\": \"\"}\n",
    );
    let corpus = Corpus::load(&good, &LoadOptions::default()).unwrap();
    let texts: Vec<&str> = corpus.documents().iter().map(|d| d.text.as_str()).collect();
    assert_eq!(texts, vec!["first", "second é"]);
    assert!(corpus.documents()[1].source.ends_with("good.jsonl:3"));

    let body = dir.path().join("body.jsonl");
    write(&body, b"{\"body\": \"x\"}\n");
    let opts = LoadOptions {
        jsonl_field: "body".into(),
        ..LoadOptions::default()
    };
    assert_eq!(Corpus::load(&body, &opts).unwrap().documents()[0].text, "x");

    // Each bad file is named, with the line and what is wrong with it.
    for (file, text, needles) in [
        (
            "missing_field.jsonl",
            &b"{\"text\": \"ok\"}\n{\"content\": \"no\", \"meta\": 2}\n"[..],
            &[
                "missing_field.jsonl",
                "line 2",
                "no field `text`",
                "content",
            ][..],
        ),
        (
            "num.jsonl",
            b"{\"text\": 5}\n",
            &["num.jsonl", "line 1", "not a string"],
        ),
        (
            "broken.jsonl",
            b"{\"text\": \"a\"}\n{\"text\": \n",
            &["broken.jsonl", "line 2: invalid JSON"],
        ),
        (
            "empty.jsonl",
            b"\n\n",
            &["empty.jsonl", "no non-empty records"],
        ),
    ] {
        let path = dir.path().join(file);
        write(&path, text);
        assert_mentions(&load_error(&path, &LoadOptions::default()), needles);
    }
}

#[test]
fn real_corpus_split_and_token_counts() {
    let Some(tok) = smollm2() else { return };
    let Some(corpus) = real_corpus() else { return };
    // Loading twice gives the same documents in the same (sorted) order.
    let again = real_corpus().unwrap();
    assert_eq!(corpus, again);
    let sources: Vec<&str> = corpus
        .documents()
        .iter()
        .map(|d| d.source.as_str())
        .collect();
    let mut sorted = sources.clone();
    sorted.sort_by(|a, b| Path::new(a).cmp(Path::new(b)));
    assert_eq!(sources, sorted);

    let h = HeldOut::default();
    let train = corpus.part(Part::Train, h);
    let held = corpus.part(Part::HeldOut, h);
    assert_eq!(train.len() + held.len(), corpus.len());
    assert_eq!(held.len(), corpus.len() / 20);
    assert!(held.iter().all(|d| d.id % 20 == 19));
    let train_ids: std::collections::HashSet<u32> = train.iter().map(|d| d.id).collect();
    assert!(held.iter().all(|d| !train_ids.contains(&d.id)));

    let n_train = count_tokens(&tok, &train).unwrap();
    let n_held = count_tokens(&tok, &held).unwrap();
    eprintln!(
        "corpus: {} documents, {} bytes; train {} docs / {n_train} tokens, held-out {} docs / {n_held} tokens (BOS not counted)",
        corpus.len(),
        corpus.total_bytes(),
        train.len(),
        held.len()
    );
    assert!((3_000_000..6_000_000).contains(&(n_train + n_held)));

    // Packing the held-out part into 128-token contexts keeps every token.
    let bos = tok.bos_id().unwrap();
    let cfg = PackConfig::for_tokenizer(128, &tok).unwrap();
    let ctxs = check_packing(&tok, &held, &cfg);
    eprintln!("held-out: {} contexts of 128 tokens", ctxs.len());
    assert!(ctxs.iter().all(|c| c.tokens[0] == bos));
}

#[test]
fn tokenizer_errors_name_the_document() {
    let Some(tok) = smollm2() else { return };
    let corpus = Corpus::from_texts(
        [("good.txt", "fine text"), ("bad.txt", "a \u{6} b")],
        &LoadOptions::default(),
    );
    let mut s = ContextStream::new(&tok, corpus.documents(), PackConfig::new(4, 1)).unwrap();
    let err = s.next().unwrap().unwrap_err().to_string();
    assert!(
        err.contains("bad.txt (document 1)") && err.contains("U+0006"),
        "{err}"
    );
    assert!(s.next().is_none(), "the stream ends after an error");
    let docs: Vec<&Document> = corpus.documents().iter().collect();
    assert!(count_tokens(&tok, &docs)
        .unwrap_err()
        .to_string()
        .contains("bad.txt"));
}
