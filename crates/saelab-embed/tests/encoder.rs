//! saelab-embed on the real all-MiniLM-L6-v2 folder of `scripts/setup.sh`: parity with
//! an independent NumPy forward, the semantics the embedding scorer relies on, the
//! one-line errors, and the speed (printed, not asserted).
//!
//! The parity fixture `tests/fixtures/minilm_reference.json` was written by
//! `scripts/minilm_reference.sh` (run once after `scripts/setup.sh`; it makes a virtual
//! environment `target/minilm-reference-venv` with pinned numpy, safetensors and
//! tokenizers and runs `scripts/minilm_reference.py`): the token ids of 8 fixed texts
//! (short, the scorer's query form, empty, non-ASCII, one of 300+ tokens truncated at
//! 256, odd whitespace, code, a plain sentence) from the `tokenizers` Python package,
//! and their 384 embedding components from a float64 NumPy forward written by hand,
//! one text at a time. That reference gives, for "This is an example sentence", the
//! components sentence-transformers' own examples print (0.0676569, 0.0634959,
//! 0.0487131, 0.0793050, …). These tests need no Python: they read the fixture.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use saelab_embed::{cosine, SentenceEncoder};
use saelab_testkit::{assert_mentions, real_data, serial};

/// The encoder, loaded once per test binary, or `None` (skipped) without the data.
fn encoder() -> Option<&'static SentenceEncoder> {
    static ENCODER: OnceLock<Option<SentenceEncoder>> = OnceLock::new();
    ENCODER
        .get_or_init(|| {
            real_data().map(|d| {
                SentenceEncoder::load(&d.embedder)
                    .unwrap_or_else(|e| panic!("loading {}: {e}", d.embedder.display()))
            })
        })
        .as_ref()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[derive(serde::Deserialize)]
struct Fixture {
    max_seq_length: usize,
    normalized: bool,
    sentences: Vec<Reference>,
}

#[derive(serde::Deserialize)]
struct Reference {
    text: String,
    ids: Vec<u32>,
    embedding: Vec<f32>,
}

#[test]
fn matches_the_numpy_reference() {
    let _g = serial();
    let Some(enc) = encoder() else { return };
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm_reference.json");
    let fixture: Fixture = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(enc.max_seq_length(), fixture.max_seq_length);
    assert_eq!(enc.normalizes(), fixture.normalized);
    assert_eq!(enc.dim(), 384);

    let texts: Vec<&str> = fixture.sentences.iter().map(|s| s.text.as_str()).collect();
    let ids = enc.tokenize(&texts).unwrap();
    for (got, want) in ids.iter().zip(&fixture.sentences) {
        assert_eq!(got, &want.ids, "token ids of {:?}", want.text);
    }
    assert!(
        ids.iter().any(|t| t.len() == 256),
        "the long text is truncated at 256 tokens"
    );

    // All texts in one call: padded to the longest (256) and masked.
    let got = enc.embed(&texts).unwrap();
    let mut worst = 0f32;
    for (e, want) in got.iter().zip(&fixture.sentences) {
        let d = max_abs_diff(e, &want.embedding);
        eprintln!(
            "max |Δ| {d:.2e}  ({} tokens) {:?}",
            want.ids.len(),
            truncate(&want.text)
        );
        worst = worst.max(d);
    }
    eprintln!(
        "parity with the NumPy reference: max |Δ| = {worst:.2e} over {} texts × 384",
        texts.len()
    );
    assert!(worst <= 1e-4, "max |Δ| {worst} > 1e-4");
    for e in &got {
        let norm = e.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

#[test]
fn paraphrases_are_closer_than_unrelated_texts() {
    let _g = serial();
    let Some(enc) = encoder() else { return };
    // (text, paraphrase, unrelated, margin). The scorer's query form is not a
    // paraphrase of anything (all-MiniLM-L6-v2 is not instruction-tuned; its cosines
    // with texts are low, ≈ 0.2), so only its ranking is asserted.
    let triples = [
        ("A man is playing a guitar.", "Someone plays an acoustic guitar.", "The stock market fell today.", 0.3),
        ("The cat sat on the mat.", "A cat is sitting on a rug.", "Quantum computers use qubits.", 0.3),
        ("He drove his car to work.", "He went to his job by car.", "The soup needs more salt.", 0.3),
        (
            "Instruct: Retrieve sentences that could be related to the explanation.\nQuery: references to rivers and water",
            "The boat drifted slowly down the wide river.",
            "She paid the electricity bill online.",
            0.0,
        ),
    ];
    for (a, para, other, margin) in triples {
        let e = enc.embed(&[a, para, other]).unwrap();
        let (near, far) = (cosine(&e[0], &e[1]), cosine(&e[0], &e[2]));
        eprintln!("cos {near:.3} (paraphrase) vs {far:.3} (unrelated): {a:?}");
        assert!(
            near > far + margin,
            "{a:?}: paraphrase {near} not {margin} above unrelated {far}"
        );
    }
    let e = enc.embed(&["Same text.", "Same text."]).unwrap();
    assert!((cosine(&e[0], &e[1]) - 1.0).abs() < 1e-6);
}

/// 70 texts of different lengths (more than one forward: a forward holds at most 64)
/// against each embedded alone.
#[test]
fn a_batch_equals_one_text_at_a_time() {
    let _g = serial();
    let Some(enc) = encoder() else { return };
    let words = "the river ran past the old mill where children played every summer afternoon";
    let words: Vec<&str> = words.split(' ').collect();
    let texts: Vec<String> = (0..70)
        .map(|i| {
            let n = 1 + (i * 7) % 40;
            (0..n)
                .map(|j| words[(i + j) % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let batch = enc.embed(&refs).unwrap();
    assert_eq!(batch.len(), texts.len());
    let mut worst = 0f32;
    for (t, b) in refs.iter().zip(&batch) {
        let alone = enc.embed(&[t]).unwrap().remove(0);
        worst = worst.max(max_abs_diff(b, &alone));
    }
    eprintln!("batch vs one at a time: max |Δ| = {worst:.2e}");
    assert!(worst <= 1e-5, "max |Δ| {worst}");
    assert!(enc.embed(&[]).unwrap().is_empty());
}

/// A short text padded to 256 positions beside a long one embeds as it does alone.
#[test]
fn padding_changes_nothing() {
    let _g = serial();
    let Some(enc) = encoder() else { return };
    let long = "words and more words ".repeat(100);
    for short in ["", "Hi.", "A man is playing a guitar."] {
        let both = enc.embed(&[short, &long]).unwrap();
        let alone = enc.embed(&[short]).unwrap();
        let d = max_abs_diff(&both[0], &alone[0]);
        eprintln!("padded to 256 vs alone: max |Δ| = {d:.2e} for {short:?}");
        assert!(d <= 1e-5, "{short:?}: max |Δ| {d}");
    }
}

/// Prints sentences/s for 64 sentences of about 32 tokens (no assertion on time).
#[test]
fn speed() {
    let _g = serial();
    let Some(enc) = encoder() else { return };
    let base = "The committee met on Tuesday afternoon to discuss the annual budget, the library and the repairs to the old stone bridge over the river near town";
    let texts: Vec<String> = (0..64).map(|i| format!("{base} {i}.")).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let tokens = enc
        .tokenize(&refs)
        .unwrap()
        .iter()
        .map(Vec::len)
        .sum::<usize>() as f64
        / 64.0;
    enc.embed(&refs[..4]).unwrap();
    let rounds = 3;
    let start = Instant::now();
    for _ in 0..rounds {
        enc.embed(&refs).unwrap();
    }
    let secs = start.elapsed().as_secs_f64() / rounds as f64;
    eprintln!(
        "speed: {:.0} sentences/s ({:.0} ms for 64 sentences of {tokens:.0} tokens, {} rayon threads)",
        64.0 / secs,
        secs * 1e3,
        rayon_threads()
    );
}

fn rayon_threads() -> String {
    std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "2 (serial())".to_string())
}

/// A scratch copy of the model folder (large files linked, not copied), with `edit`
/// applied, and the one-line error of loading it.
fn load_error(edit: impl FnOnce(&Path)) -> Option<String> {
    let data = real_data()?;
    let dir = tempfile::tempdir().unwrap();
    copy_folder(&data.embedder, dir.path());
    edit(dir.path());
    let err = SentenceEncoder::load(dir.path()).unwrap_err().to_string();
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    Some(err)
}

fn copy_folder(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target: PathBuf = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir(&target).unwrap();
            copy_folder(&entry.path(), &target);
        } else if entry.metadata().unwrap().len() > 1 << 20 {
            std::os::unix::fs::symlink(entry.path(), &target).unwrap();
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, serde_json::to_string(&v).unwrap()).unwrap();
}

/// A change to a scratch copy of the model folder.
type Edit = Box<dyn FnOnce(&Path)>;

#[test]
fn bad_folders_are_one_line_errors_naming_the_file() {
    let _g = serial();
    let Some(_) = real_data() else { return };
    let cases: Vec<(&str, Edit, Vec<&str>)> = vec![
        (
            "missing tokenizer",
            Box::new(|d| std::fs::remove_file(d.join("tokenizer.json")).unwrap()),
            vec!["tokenizer.json: missing"],
        ),
        (
            "missing pooling config",
            Box::new(|d| std::fs::remove_dir_all(d.join("1_Pooling")).unwrap()),
            vec!["1_Pooling/config.json: missing"],
        ),
        (
            "bad JSON",
            Box::new(|d| std::fs::write(d.join("config.json"), "{\"model_type\": ").unwrap()),
            vec!["config.json: bad JSON"],
        ),
        (
            "another architecture",
            Box::new(|d| {
                edit_json(&d.join("config.json"), |v| {
                    v["model_type"] = "roberta".into();
                    v["architectures"] = serde_json::json!(["RobertaModel"]);
                })
            }),
            vec!["config.json: unsupported architecture", "roberta"],
        ),
        (
            "CLS pooling",
            Box::new(|d| {
                edit_json(&d.join("1_Pooling/config.json"), |v| {
                    v["pooling_mode_mean_tokens"] = false.into();
                    v["pooling_mode_cls_token"] = true.into();
                })
            }),
            vec![
                "1_Pooling/config.json: pooling",
                "pooling_mode_cls_token",
                "not implemented",
            ],
        ),
        (
            "a Dense module",
            Box::new(|d| {
                edit_json(&d.join("modules.json"), |v| {
                    v.as_array_mut().unwrap().insert(
                        2,
                        serde_json::json!({"idx": 2, "name": "2", "path": "2_Dense",
                                           "type": "sentence_transformers.models.Dense"}),
                    )
                })
            }),
            vec![
                "modules.json: modules",
                "sentence_transformers.models.Dense",
                "not supported",
            ],
        ),
        (
            "weights of another shape",
            Box::new(|d| {
                edit_json(&d.join("config.json"), |v| {
                    v["intermediate_size"] = 1024.into()
                })
            }),
            vec!["model.safetensors: ", "shape", "intermediate.dense.weight"],
        ),
        (
            "a tokenizer that is not JSON",
            Box::new(|d| std::fs::write(d.join("tokenizer.json"), "not json").unwrap()),
            vec!["tokenizer.json: "],
        ),
    ];
    for (what, edit, needles) in cases {
        let err = load_error(edit).unwrap();
        eprintln!("{what}: {err}");
        assert_mentions(&err, &needles);
    }
}
