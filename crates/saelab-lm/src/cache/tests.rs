//! Cache tests on a tiny random model and a tiny corpus (no data needed); the real
//! model is exercised by the CLI tests in `crates/saelab-cli/tests/extract.rs`.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use saelab_core::store::ActivationStore;
use saelab_testkit::assert_mentions;

use super::*;
use crate::contexts::{documents_fingerprint, ContextPlan};
use crate::model::ForwardOptions;
use crate::test_support::{tiny_setup, tiny_tokenizer};
use crate::text::{Document, PackConfig};

const HOOKS: [&str; 2] = ["blocks.0.hook_resid_post", "blocks.2.hook_mlp_out"];

struct Fixture {
    /// Holds the model's files, and the caches each test writes.
    dir: tempfile::TempDir,
    model: HookedModel,
    plan: ContextPlan,
    docs: Vec<Document>,
    fingerprint: String,
}

fn fixture() -> Fixture {
    let (dir, model, tok, corpus) = tiny_setup();
    let docs: Vec<&Document> = corpus.part(Part::Train, HeldOut::default());
    let plan = ContextPlan::new(
        &tok,
        &docs,
        PackConfig::new(16, 0),
        ContextOrder::Shuffled { seed: 1 },
    )
    .unwrap();
    let fingerprint = documents_fingerprint(&docs);
    Fixture {
        dir,
        model,
        plan,
        docs: docs.into_iter().cloned().collect(),
        fingerprint,
    }
}

impl Fixture {
    /// A path in the fixture's folder.
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn spec(fx: &Fixture, hook: &str, dtype: CacheDType) -> CacheSpec {
    CacheSpec {
        hook: hook.into(),
        dtype,
        keep_bos: false,
        ctx_len: 16,
        model_path: "tiny".into(),
        model_fingerprint: "1:00".into(),
        corpus_path: "corpus".into(),
        corpus_fingerprint: fx.fingerprint.clone(),
        documents: fx.docs.len(),
        part: Part::Train,
        held_out: HeldOut::default(),
        order: ContextOrder::Shuffled { seed: 1 },
    }
}

fn job<'a>(fx: &'a Fixture, out: &Path, dtype: CacheDType, target: u64) -> ExtractJob<'a> {
    let hooks: Vec<String> = HOOKS.iter().map(|s| s.to_string()).collect();
    ExtractJob {
        model: &fx.model,
        plan: &fx.plan,
        specs: hooks.iter().map(|h| spec(fx, h, dtype)).collect(),
        dirs: hook_dirs(out, &hooks),
        opts: ExtractOptions {
            target_rows: target,
            batch_contexts: 3,
            shard_rows: 40,
        },
    }
}

/// Runs `job(fx, out, dtype, target)` to the end: never stopped, no progress callback.
fn extract_to(
    fx: &Fixture,
    out: &Path,
    dtype: CacheDType,
    target: u64,
) -> crate::error::Result<ExtractSummary> {
    run_to_end(&job(fx, out, dtype, target))
}

/// Runs `job` to the end: never stopped, no progress callback.
fn run_to_end(job: &ExtractJob<'_>) -> crate::error::Result<ExtractSummary> {
    extract(job, &AtomicBool::new(false), |_| {})
}

/// Runs the job of 300 rows (f32) into `out`, stopped by the stop flag after `batches`
/// batches.
fn stopped_after(fx: &Fixture, out: &Path, batches: usize) -> crate::error::Result<ExtractSummary> {
    let stop = AtomicBool::new(false);
    let mut seen = 0;
    extract(&job(fx, out, CacheDType::F32, 300), &stop, |_| {
        seen += 1;
        if seen == batches {
            stop.store(true, Ordering::SeqCst);
        }
    })
}

/// The message of the error that `job` ends with.
fn refusal(job: &ExtractJob<'_>) -> String {
    run_to_end(job).unwrap_err().to_string()
}

/// Everything a cache directory holds, concatenated over shards.
#[derive(Debug, PartialEq)]
struct Contents {
    acts: Vec<f32>,
    meta: ShardRows,
}

fn contents(dir: &Path) -> Contents {
    let m = read_manifest(dir).unwrap();
    let store = ActivationStore::open(&[dir.to_path_buf()], None).unwrap();
    assert_eq!(store.rows() as u64, m.rows);
    let acts = store.read_range(0, store.rows()).unwrap().data;
    let mut meta = ShardRows::default();
    for s in &m.shards {
        let r = read_shard_rows(&dir.join(&s.file)).unwrap();
        assert_eq!(r.token_ids.len() as u64, s.rows);
        meta.token_ids.extend(r.token_ids);
        meta.doc_ids.extend(r.doc_ids);
        meta.positions.extend(r.positions);
        meta.context_ids.extend(r.context_ids);
        meta.context_positions.extend(r.context_positions);
    }
    Contents { acts, meta }
}

#[test]
fn extracted_rows_match_an_independent_forward_and_the_tokenizer() {
    let fx = fixture();
    let out = fx.path("cache");
    let target = 150;
    let sum = extract_to(&fx, &out, CacheDType::F32, target).unwrap();
    assert!(sum.complete && !sum.exhausted && !sum.already_complete);
    let tok = tiny_tokenizer();
    for hook in HOOKS {
        let dir = out.join(hook);
        let m = read_manifest(&dir).unwrap();
        assert!(m.complete);
        assert_eq!(m.hook, hook);
        assert_eq!((m.d, m.tokens.ctx_len, m.tokens.bos_id), (32, 16, 0));
        assert!(m.shards.len() >= 3, "{:?}", m.shards);
        assert!(m.rows >= target);
        assert_eq!(m.corpus.contexts_available, fx.plan.len() as u64);
        let c = contents(&dir);
        // Stopped at the first whole context reaching the target.
        let last_ctx = *c.meta.context_ids.last().unwrap();
        let last_rows = c
            .meta
            .context_ids
            .iter()
            .filter(|&&g| g == last_ctx)
            .count() as u64;
        assert!(m.rows - last_rows < target);
        // Contexts 0..m.contexts, in order, each with its non-BOS tokens.
        let mut ids = c.meta.context_ids.clone();
        ids.dedup();
        assert_eq!(ids, (0..m.contexts as i64).collect::<Vec<_>>());
        let d = 32;
        for r in 0..c.meta.token_ids.len() {
            let g = c.meta.context_ids[r] as usize;
            let t = c.meta.context_positions[r] as usize;
            let ctx = fx.plan.first_epoch(g);
            // No BOS rows; the row's token is the tokenizer's token of its document.
            assert!(c.meta.positions[r] >= 1 && c.meta.token_ids[r] != 0);
            assert_eq!(c.meta.token_ids[r], ctx.tokens[t] as i64);
            let doc = fx
                .docs
                .iter()
                .find(|doc| doc.id as i64 == c.meta.doc_ids[r])
                .unwrap();
            let ids = tok.encode(&doc.text).unwrap();
            assert_eq!(
                ids[c.meta.positions[r] as usize - 1] as i64,
                c.meta.token_ids[r]
            );
            // The activation is the model's at that token (a forward of this context
            // alone, so a different batch composition).
            if r % 7 == 0 {
                let fwd = fx
                    .model
                    .forward(&[ctx.tokens], &ForwardOptions::new().capture(hook))
                    .unwrap();
                let all = fwd.capture(hook).unwrap().as_slice();
                let want = &all[t * d..(t + 1) * d];
                let got = &c.acts[r * d..(r + 1) * d];
                for (a, b) in got.iter().zip(want) {
                    assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
                }
            }
        }
    }
    // The two hooks hold the same rows (same tokens), different values.
    let (a, b) = (contents(&out.join(HOOKS[0])), contents(&out.join(HOOKS[1])));
    assert_eq!(a.meta, b.meta);
    assert_ne!(a.acts, b.acts);

    // Running again: already complete. Asking for more extends it exactly.
    let again = extract_to(&fx, &out, CacheDType::F32, target).unwrap();
    assert!(again.already_complete);
    let more = fx.path("more");
    extract_to(&fx, &more, CacheDType::F32, 400).unwrap();
    let sum = extract_to(&fx, &out, CacheDType::F32, 400).unwrap();
    assert!(!sum.already_complete && sum.progress.resumed_rows >= target);
    assert_eq!(
        contents(&out.join(HOOKS[0])),
        contents(&more.join(HOOKS[0]))
    );

    // bf16: the f32 values rounded to nearest even.
    let bf = fx.path("bf16");
    extract_to(&fx, &bf, CacheDType::Bf16, target).unwrap();
    let f32c = contents(&out.join(HOOKS[1]));
    let bfc = contents(&bf.join(HOOKS[1]));
    assert_eq!(
        read_manifest(&bf.join(HOOKS[1])).unwrap().dtype,
        CacheDType::Bf16
    );
    for (x, y) in bfc.acts.iter().zip(&f32c.acts) {
        assert_eq!(*x, half::bf16::from_f32(*y).to_f32());
    }

    // Asking for more than the part holds: complete, exhausted, everything stored.
    let all = fx.path("all");
    let sum = extract_to(&fx, &all, CacheDType::F32, 1 << 40).unwrap();
    assert!(sum.complete && sum.exhausted);
    assert_eq!(sum.progress.rows, fx.plan.non_bos_tokens());
    assert!(read_manifest(&all.join(HOOKS[0])).unwrap().exhausted);
}

#[test]
fn interrupted_killed_and_failed_extractions_resume_to_the_same_cache() {
    let fx = fixture();
    let full = fx.path("full");
    extract_to(&fx, &full, CacheDType::F32, 300).unwrap();
    let want = contents(&full.join(HOOKS[0]));

    // Interrupted (the stop flag) after a few batches: a consistent, smaller cache.
    let part = fx.path("part");
    let e = stopped_after(&fx, &part, 4).unwrap_err();
    assert!(
        matches!(e, Error::Core(saelab_core::Error::Interrupted)),
        "{e}"
    );
    let m = read_manifest(&part.join(HOOKS[0])).unwrap();
    assert!(!m.complete && m.rows > 0 && m.rows < 300);
    ActivationStore::open(&[part.join(HOOKS[0])], None).unwrap();

    // A kill leaves a temporary file, a shard the manifest does not list, and one hook
    // a shard ahead of the other.
    let dir0 = part.join(HOOKS[0]);
    let dir1 = part.join(HOOKS[1]);
    fs::write(dir0.join(".shard-00009.safetensors.tmp-123"), b"partial").unwrap();
    fs::write(dir1.join("shard-00042.safetensors"), b"orphan").unwrap();
    let _ = stopped_after(&fx, &part, 2);
    let mut m1 = read_manifest(&dir1).unwrap();
    let dropped = m1.shards.pop().unwrap();
    m1.rows -= dropped.rows;
    m1.contexts -= dropped.contexts;
    fs::write(dir1.join(MANIFEST), serde_json::to_vec(&m1).unwrap()).unwrap();
    fs::remove_file(dir1.join(&dropped.file)).unwrap();

    // A write failure: the next shard's name is taken by a directory.
    let n0 = read_manifest(&dir0).unwrap().shards.len();
    let blocker = dir0.join(shard_name(n0));
    let never = AtomicBool::new(false);
    let e = extract(&job(&fx, &part, CacheDType::F32, 300), &never, |_| {
        let _ = fs::create_dir(&blocker);
    })
    .unwrap_err()
    .to_string();
    assert_mentions(&e, &[&shard_name(n0), "write failed", "consistent"]);
    // Nothing half-written: the manifests list complete shards only, no temp files.
    for dir in [&dir0, &dir1] {
        let m = read_manifest(dir).unwrap();
        assert!(!m.complete);
        ActivationStore::open(&[dir.to_path_buf()], None).unwrap();
        let temps = fs::read_dir(dir)
            .unwrap()
            .filter(|e| is_temp_name(&e.as_ref().unwrap().file_name().to_string_lossy()))
            .count();
        assert_eq!(temps, 0);
    }
    fs::remove_dir(&blocker).unwrap();

    // Resuming gives exactly the uninterrupted cache.
    let sum = extract_to(&fx, &part, CacheDType::F32, 300).unwrap();
    assert!(sum.complete && sum.progress.resumed_rows > 0);
    assert_eq!(contents(&dir0), want);
    assert_eq!(contents(&dir1), contents(&full.join(HOOKS[1])));
    if read_manifest(&dir1).unwrap().shards.len() <= 42 {
        assert!(!dir1.join("shard-00042.safetensors").exists());
    }
}

#[test]
fn other_settings_and_foreign_directories_are_refused() {
    let fx = fixture();
    let out = fx.path("c");
    extract_to(&fx, &out, CacheDType::F32, 50).unwrap();
    let e = refusal(&job(&fx, &out, CacheDType::Bf16, 50));
    assert_mentions(&e, &["other settings", "dtype"]);
    let mut j = job(&fx, &out, CacheDType::F32, 50);
    j.specs
        .iter_mut()
        .for_each(|s| s.model_fingerprint = "2:01".into());
    assert_mentions(&refusal(&j), &["model differs"]);
    // A directory with other files in it is not overwritten.
    let foreign = fx.path("f");
    fs::create_dir_all(foreign.join(HOOKS[0])).unwrap();
    fs::write(foreign.join(HOOKS[0]).join("notes.txt"), b"mine").unwrap();
    let e = refusal(&job(&fx, &foreign, CacheDType::F32, 50));
    assert_mentions(&e, &["not an activation cache"]);
    assert!(!foreign.join(HOOKS[1]).exists());
    // A hook added on a rerun is refused instead of cutting the others back.
    let mut j = job(&fx, &out, CacheDType::F32, 50);
    j.specs
        .push(spec(&fx, "blocks.1.hook_resid_pre", CacheDType::F32));
    j.dirs.push(out.join("blocks.1.hook_resid_pre"));
    assert_mentions(&refusal(&j), &["extracted together"]);
    assert!(!read_manifest(&out.join(HOOKS[0]))
        .unwrap()
        .shards
        .is_empty());
    // A corrupt manifest is named.
    fs::write(out.join(HOOKS[0]).join(MANIFEST), b"{\"format\": ").unwrap();
    let e = refusal(&job(&fx, &out, CacheDType::F32, 50));
    assert_mentions(&e, &["manifest.json", "corrupt"]);
}
