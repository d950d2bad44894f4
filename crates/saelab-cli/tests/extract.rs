//! End-to-end tests of `saelab extract` and of `saelab train --model` (streaming) on the
//! real SmolLM2 model and corpus (see `saelab_testkit::real_data`: each test skips with
//! a message when they are absent, and fails instead under CI). Every test uses a few
//! contexts of a 24-document slice of the corpus and early hook points, so the suite
//! stays fast.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

mod common;

use common::{read_json, saelab, saelab_fails, saelab_ok, set_arg, weights, SAELAB};
use saelab_core::store::ActivationStore;
use saelab_lm::cache::{read_manifest, read_shard_rows, ShardRows};
use saelab_testkit::cli::{assert_one_line_error, p, stderr, stdout};
use saelab_testkit::{assert_mentions, real_data, serial};

/// What the real-model tests start from: the model, the corpus slice in a temporary
/// folder, and the lock that runs them one at a time.
struct Real {
    model: PathBuf,
    corpus: PathBuf,
    tmp: tempfile::TempDir,
    _serial: MutexGuard<'static, ()>,
}

impl Real {
    /// The model and corpus as arguments.
    fn args(&self) -> (&str, &str) {
        (p(&self.model), p(&self.corpus))
    }

    /// `tmp/name`.
    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

/// The real model and [`corpus`], or `None` (with a message; a panic under CI) without
/// the data.
fn real() -> Option<Real> {
    let data = real_data()?;
    let serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    Some(Real {
        corpus: corpus(&data.collection("moby"), tmp.path()),
        model: data.model,
        tmp,
        _serial: serial,
    })
}

/// `dir/corpus`: 24 Moby-Dick chapters from the collection `moby` (document 19 is held
/// out).
fn corpus(moby: &Path, dir: &Path) -> PathBuf {
    let out = dir.join("corpus");
    std::fs::create_dir_all(&out).unwrap();
    for i in 1..=24 {
        let name = format!("chapter_{i}.txt");
        std::fs::copy(moby.join(&name), out.join(format!("{i:02}.txt"))).unwrap();
    }
    out
}

/// All rows and row metadata of a cache directory (checking it opens as a store).
fn contents(dir: &Path) -> (Vec<f32>, ShardRows) {
    let m = read_manifest(dir).unwrap();
    let store = ActivationStore::open(&[dir.to_path_buf()], None).unwrap();
    assert_eq!(store.rows() as u64, m.rows);
    let acts = store.read_range(0, store.rows()).unwrap().data;
    let mut meta = ShardRows::default();
    for s in &m.shards {
        let r = read_shard_rows(&dir.join(&s.file)).unwrap();
        meta.token_ids.extend(r.token_ids);
        meta.doc_ids.extend(r.doc_ids);
        meta.positions.extend(r.positions);
        meta.context_ids.extend(r.context_ids);
        meta.context_positions.extend(r.context_positions);
    }
    (acts, meta)
}

fn no_temp_files(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().to_string();
        assert!(!n.contains(".tmp-"), "temporary file left: {n}");
    }
}

fn extract_args<'a>(
    model: &'a str,
    corpus: &'a str,
    out: &'a str,
    tokens: &'a str,
) -> Vec<&'a str> {
    vec![
        "extract",
        "--model",
        model,
        "--hook",
        "blocks.2.hook_resid_post",
        "--corpus",
        corpus,
        "--tokens",
        tokens,
        "--ctx-len",
        "64",
        "--batch",
        "4",
        "--shard-rows",
        "300",
        "--out",
        out,
    ]
}

#[test]
fn extracted_cache_matches_the_model_and_trains_and_evaluates() {
    let Some(r) = real() else { return };
    let (m, c) = r.args();
    let cache = r.path("cache");
    let hooks = ["blocks.3.hook_resid_post", "blocks.1.hook_mlp_out"];
    let mut args = extract_args(m, c, p(&cache), "600");
    set_arg(&mut args, "--hook", hooks[0]);
    set_arg(&mut args, "--shard-rows", "256");
    args.extend(["--hook", hooks[1]]);
    let o = saelab_ok(&args);
    assert!(stdout(&o).contains("tokens/s"), "{}", stdout(&o));

    let model = saelab_lm::model::HookedModel::load(&r.model).unwrap();
    for hook in hooks {
        let dir = cache.join(hook);
        let m = read_manifest(&dir).unwrap();
        assert!(m.complete && !m.exhausted);
        assert_eq!(
            (m.hook.as_str(), m.d, m.tokens.ctx_len, m.tokens.bos_id),
            (hook, 576, 64, 1)
        );
        assert!(!m.tokens.keep_bos && m.tokens.prepend_bos);
        assert_eq!((m.corpus.part.as_str(), m.corpus.documents), ("train", 23));
        assert_eq!(m.model.n_layers, 30);
        assert!(m.rows >= 600 && m.rows < 600 + 4 * 64, "{}", m.rows);
        assert!(m.shards.len() >= 2);
        let (acts, meta) = contents(&dir);
        // No BOS rows (BOS is id 1 at document position 0 or prepended).
        assert!(meta.token_ids.iter().all(|&t| t != 1));
        assert!(meta.positions.iter().all(|&t| t >= 1));
        assert!(meta.doc_ids.iter().all(|&d| d % 20 != 19));
        // Rebuild the first context from its rows (BOS where no row is stored) and check
        // the stored activations against a forward of that context alone.
        let g0 = meta.context_ids[0];
        let rows: Vec<usize> = (0..meta.context_ids.len())
            .filter(|&r| meta.context_ids[r] == g0)
            .collect();
        let mut ctx = vec![1u32; 64];
        for &r in &rows {
            ctx[meta.context_positions[r] as usize] = meta.token_ids[r] as u32;
        }
        let fwd = model
            .forward(
                &[ctx],
                &saelab_lm::model::ForwardOptions::new().capture(hook),
            )
            .unwrap();
        let all = fwd.capture(hook).unwrap().as_slice();
        let mut worst = 0f32;
        for &r in &rows {
            let t = meta.context_positions[r] as usize;
            for c in 0..576 {
                let (a, b) = (acts[r * 576 + c], all[t * 576 + c]);
                worst = worst.max((a - b).abs() / (1.0 + b.abs()));
            }
        }
        assert!(
            worst < 1e-4,
            "{hook}: stored rows differ from the forward by {worst}"
        );
    }

    // The same command again: already complete, without loading the model.
    let t = Instant::now();
    let o = saelab_ok(&args);
    assert!(stdout(&o).contains("already complete"), "{}", stdout(&o));
    assert!(!stdout(&o).contains("loaded"), "{}", stdout(&o));
    eprintln!("no-op rerun took {:.2} s", t.elapsed().as_secs_f64());

    // A held-out cache, a short training run on the train cache, an evaluation.
    let held = r.path("held");
    let mut args = extract_args(m, c, p(&held), "300");
    set_arg(&mut args, "--hook", hooks[0]);
    args.extend(["--part", "heldout"]);
    saelab_ok(&args);
    let (_, hmeta) = contents(&held);
    assert!(hmeta.doc_ids.iter().all(|&d| d == 19));
    let run = r.path("run");
    let train_dir = cache.join(hooks[0]);
    saelab_ok(&[
        "train",
        "--acts",
        p(&train_dir),
        "--arch",
        "topk",
        "--k",
        "8",
        "--expansion",
        "2",
        "--tokens",
        "2048",
        "--batch-size",
        "256",
        "--lr",
        "1e-3",
        "--out",
        p(&run),
    ]);
    let cfg = read_json(&run.join("sae/cfg.json"));
    let meta = &cfg["metadata"];
    assert_eq!(meta["hook_name"], hooks[0], "{cfg}");
    assert_eq!(meta["context_size"], 64, "{cfg}");
    let o = saelab_ok(&["eval", "--sae", p(&run), "--acts", p(&held), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let fvu = v["fvu"].as_f64().unwrap();
    assert!(fvu > 0.0 && fvu < 1.0, "{v}");
    assert!(v["l0"].as_f64().unwrap() <= 8.0 + 1e-9, "{v}");
}

/// The number of shards the manifest in `dir` lists (0 while there is none).
fn manifest_shards(dir: &Path) -> usize {
    read_manifest(dir).map(|m| m.shards.len()).unwrap_or(0)
}

/// Starts `saelab args…`, an extraction into `dir` (its stdout discarded, its stderr
/// to `stderr`), and waits until the manifest there lists `n` shards.
fn start_extract(args: &[&str], dir: &Path, n: usize, stderr: Stdio) -> Child {
    let mut child = SAELAB
        .cmd(args)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let t = Instant::now();
    while manifest_shards(dir) < n {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("extract ended early: {status}");
        }
        assert!(t.elapsed() < Duration::from_secs(300), "no shard appeared");
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

#[test]
fn interrupted_and_killed_extractions_resume() {
    let Some(r) = real() else { return };
    let (m, c) = r.args();

    let full = r.path("full");
    saelab_ok(&extract_args(m, c, p(&full), "1500"));

    // Stopped as by Ctrl-C after 8 contexts: exit 130, one line, a consistent cache.
    let part = r.path("part");
    let mut args = extract_args(m, c, p(&part), "1500");
    args.extend(["--stop-after-contexts", "8"]);
    let o = saelab_fails(&args, &["interrupted", "run the same command again"]);
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    let mp = read_manifest(&part).unwrap();
    assert!(!mp.complete && mp.contexts == 8, "{mp:?}");
    contents(&part);
    // Running the same command again continues it: the same cache as in one go.
    let o = saelab_ok(&extract_args(m, c, p(&part), "1500"));
    assert!(stdout(&o).contains("resumed at"), "{}", stdout(&o));
    assert_eq!(contents(&part), contents(&full));

    // A real SIGINT while running, then a SIGKILL: both leave a consistent cache that
    // the same command continues.
    let live = r.path("live");
    let big = extract_args(m, c, p(&live), "60000");
    let child = start_extract(&big, &live, 1, Stdio::piped());
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    // A line on the signal, then the same line as above.
    let lines: Vec<String> = stderr(&o).lines().map(String::from).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_mentions(&lines[0], &["stopping at the next safe point"]);
    assert_mentions(&lines[1], &["interrupted", "run the same command again"]);
    let after_int = read_manifest(&live).unwrap();
    assert!(!after_int.complete);
    contents(&live);
    no_temp_files(&live);

    let mut child = start_extract(&big, &live, after_int.shards.len() + 1, Stdio::null());
    child.kill().unwrap();
    child.wait().unwrap();
    let after_kill = read_manifest(&live).unwrap();
    assert!(after_kill.rows > after_int.rows && !after_kill.complete);
    contents(&live);
    // Finish with a target just past what is there.
    let target = (after_kill.rows + 100).to_string();
    saelab_ok(&extract_args(m, c, p(&live), &target));
    let done = read_manifest(&live).unwrap();
    assert!(done.complete && done.rows >= after_kill.rows + 100);
    no_temp_files(&live);
    let (a, ma) = contents(&live);
    let mut ids = ma.context_ids.clone();
    ids.dedup();
    assert_eq!(ids, (0..done.contexts as i64).collect::<Vec<_>>());
    // The prefix both runs hold is identical.
    let (b, mb) = contents(&full);
    let n = ma.token_ids.len().min(mb.token_ids.len());
    assert_eq!(ma.token_ids[..n], mb.token_ids[..n]);
    assert_eq!(a[..n * 576], b[..n * 576]);
}

#[test]
fn bad_input_gives_one_line_errors_and_leaves_nothing_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    // No data needed: a model that does not exist, with a corpus of one document (the
    // model is named), a folder without documents, one with an empty document, and an
    // empty held-out part (the corpus is checked before the model is read).
    let folder = |name: &str, docs: &[(&str, &str)]| {
        let dir = tmp.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        for (file, text) in docs {
            std::fs::write(dir.join(file), text).unwrap();
        }
        dir
    };
    let one = folder("one", &[("a.txt", "some text")]);
    let none = folder("none", &[]);
    let blank = folder("blank", &[("blank.txt", "  \n")]);
    for (corpus, extra, needles) in [
        (&one, &[][..], &["nope.gguf"][..]),
        (&none, &[], &["none", "no *.txt documents found"]),
        (&blank, &[], &["blank", "are empty"]),
        (&one, &["--part", "heldout"], &["heldout part is empty"]),
    ] {
        let args = extract_args("nope.gguf", p(corpus), p(&out), "100");
        saelab_fails(&[&args[..], extra].concat(), needles);
        assert!(!out.exists());
    }

    let Some(r) = real() else { return };
    let (m, c) = r.args();
    // Not a GGUF, a truncated GGUF, an unsupported architecture.
    let junk = tmp.path().join("junk.gguf");
    std::fs::write(&junk, b"this is not a gguf file at all").unwrap();
    let bytes = std::fs::read(&r.model).unwrap();
    let cut = tmp.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let key = b"general.architecture";
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    let mut patched = bytes.clone();
    // value type (u32 string = 8), length (u64 = 5), then "llama"
    assert_eq!(&patched[at + 12..at + 17], b"llama");
    patched[at + 12..at + 17].copy_from_slice(b"gemma");
    let gem = tmp.path().join("gemma.gguf");
    std::fs::write(&gem, &patched).unwrap();
    for (model, needles) in [
        (&junk, &["junk.gguf", "not a readable GGUF"][..]),
        (&cut, &["cut.gguf"]),
        (&gem, &["gemma.gguf", "unsupported architecture 'gemma'"]),
    ] {
        saelab_fails(&extract_args(p(model), c, p(&out), "100"), needles);
        assert!(!out.exists());
    }
    // A hook that does not exist (the valid ones are listed), a layer out of range.
    let mut args = extract_args(m, c, p(&out), "100");
    set_arg(&mut args, "--hook", "blocks.3.hook_resid_sideways");
    saelab_fails(&args, &["unknown hook", "hook_resid_post", "hook_mlp_out"]);
    set_arg(&mut args, "--hook", "blocks.30.hook_resid_post");
    saelab_fails(&args, &["layer 30 is out of range", "0..=29"]);
    assert!(!out.exists());
    // An --out that holds something else.
    let foreign = folder("foreign", &[("notes.txt", "mine")]);
    saelab_fails(
        &extract_args(m, c, p(&foreign), "100"),
        &["foreign", "not an activation cache"],
    );
    assert_eq!(std::fs::read_dir(&foreign).unwrap().count(), 1);
    // A cache made with other settings is not mixed with new rows.
    saelab_ok(&extract_args(m, c, p(&out), "100"));
    let mut args = extract_args(m, c, p(&out), "200");
    args.extend(["--dtype", "bf16"]);
    saelab_fails(&args, &["other settings", "dtype"]);

    // A full disk (the file-size limit of the shell: writes fail with EFBIG): the
    // first shard fails, the message names it, the cache stays consistent, and the
    // same command without the limit completes it.
    let full = tmp.path().join("full");
    let line = "trap '' XFSZ; ulimit -f 200; exec \"$0\" \"$@\"";
    let args = extract_args(m, c, p(&full), "400");
    let o = Command::new("sh")
        .arg("-c")
        .arg(line)
        .arg(env!("CARGO_BIN_EXE_saelab"))
        .args(&args[..])
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .unwrap();
    assert_one_line_error(&o, &["shard-00000.safetensors", "disk full", "consistent"]);
    let mf = read_manifest(&full).unwrap();
    assert_eq!((mf.shards.len(), mf.complete), (0, false));
    no_temp_files(&full);
    saelab_ok(&args);
    assert!(read_manifest(&full).unwrap().complete);
}

fn stream_args<'a>(m: &'a str, c: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--model",
        m,
        "--hook",
        "blocks.2.hook_resid_post",
        "--corpus",
        c,
        "--ctx-len",
        "32",
        "--batch-contexts",
        "4",
        "--window-contexts",
        "16",
        "--val-tokens",
        "256",
        "--arch",
        "topk",
        "--k",
        "8",
        "--expansion",
        "1",
        "--tokens",
        "2560",
        "--batch-size",
        "256",
        "--lr",
        "1e-3",
        "--set",
        "train.checkpoint_every=3",
        "--out",
        out,
    ]
}

/// Runs `saelab args…`, which stops as by Ctrl-C (exit 130), then resumes it to the end
/// with `saelab train --resume out`.
fn stop_and_resume(args: &[&str], out: &Path) {
    let o = saelab(args);
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert!(stderr(&o).contains("--resume"), "{}", stderr(&o));
    saelab_ok(&["train", "--resume", p(out)]);
}

#[test]
fn streaming_training_resumes_exactly_and_sweeps_share_one_pass() {
    let Some(r) = real() else { return };
    let (m, c) = r.args();

    let full = r.path("full");
    let o = saelab_ok(&stream_args(m, c, p(&full)));
    assert!(stdout(&o).contains("fvu"), "{}", stdout(&o));
    let cfg = read_json(&full.join("sae/cfg.json"));
    assert_eq!(cfg["metadata"]["hook_name"], "blocks.2.hook_resid_post");
    let log = std::fs::read_to_string(full.join("metrics.jsonl")).unwrap();
    assert!(log.contains("\"kind\":\"val\""), "{log}");

    // Interrupted mid-run, resumed: the same weights.
    let part = r.path("part");
    let mut args = stream_args(m, c, p(&part));
    args.extend(["--stop-after", "5"]);
    stop_and_resume(&args, &part);
    assert!(
        weights(&full) == weights(&part),
        "resumed streaming run differs"
    );

    // Two hooks × two k in one pass, interrupted and resumed as a sweep: the member
    // with the first run's settings ends with the first run's weights.
    let sweep = r.path("sweep");
    let mut args = stream_args(m, c, p(&sweep));
    let i = args
        .iter()
        .position(|a| *a == "blocks.2.hook_resid_post")
        .unwrap();
    args.insert(i + 1, "blocks.1.hook_mlp_out");
    let i = args.iter().position(|a| *a == "8").unwrap();
    args.insert(i + 1, "16");
    args.extend(["--stop-after", "4"]);
    stop_and_resume(&args, &sweep);
    let names = read_json(&sweep.join("sweep.json"));
    assert_eq!(names["runs"].as_array().unwrap().len(), 4, "{names}");
    let member = sweep.join("blocks.2.hook_resid_post-topk-k8-n576");
    assert!(
        weights(&member) == weights(&full),
        "sweep member differs from the single run"
    );
    let other = sweep.join("blocks.1.hook_mlp_out-topk-k16-n576");
    let cfg = read_json(&other.join("sae/cfg.json"));
    assert_eq!(cfg["metadata"]["hook_name"], "blocks.1.hook_mlp_out");
    assert_eq!(cfg["k"], 16, "{cfg}");
}
