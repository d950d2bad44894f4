//! End-to-end tests of `saelab extract` and of `saelab train --model` (streaming) on the
//! real SmolLM2 model and corpus (see `saelab_testkit::real_data`: each test skips with
//! a message when they are absent, and fails instead under CI). Every test uses a few
//! contexts of a 24-document slice of the corpus and early hook points, so the suite
//! stays fast.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{saelab, SAELAB};
use saelab_core::store::ActivationStore;
use saelab_lm::cache::{read_manifest, read_shard_rows, ShardRows};
use saelab_testkit::cli::{assert_one_line_error, p, stderr, stdout};
use saelab_testkit::{real_data, serial};

/// The real model, or `None` (with a message; a panic under CI) without the data.
fn model() -> Option<PathBuf> {
    Some(real_data()?.model)
}

fn saelab_cmd(args: &[&str]) -> Command {
    SAELAB.cmd(args)
}

/// 24 Moby-Dick chapters (document 19 is held out).
fn corpus(dir: &Path) -> PathBuf {
    let out = dir.join("corpus");
    std::fs::create_dir_all(&out).unwrap();
    for i in 1..=24 {
        let name = format!("chapter_{i}.txt");
        std::fs::copy(
            real_data().unwrap().collection("moby").join(&name),
            out.join(format!("{i:02}.txt")),
        )
        .unwrap();
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
    let Some(model_path) = model() else { return };
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let corpus = corpus(tmp.path());
    let cache = tmp.path().join("cache");
    let hooks = ["blocks.3.hook_resid_post", "blocks.1.hook_mlp_out"];
    let args = [
        "extract",
        "--model",
        p(&model_path),
        "--hook",
        hooks[0],
        "--hook",
        hooks[1],
        "--corpus",
        p(&corpus),
        "--tokens",
        "600",
        "--ctx-len",
        "64",
        "--batch",
        "4",
        "--shard-rows",
        "256",
        "--out",
        p(&cache),
    ];
    let o = saelab(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("tokens/s"), "{}", stdout(&o));

    let model = saelab_lm::model::HookedModel::load(&model_path).unwrap();
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
    let o = saelab(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("already complete"), "{}", stdout(&o));
    assert!(!stdout(&o).contains("loaded"), "{}", stdout(&o));
    eprintln!("no-op rerun took {:.2} s", t.elapsed().as_secs_f64());

    // A held-out cache, a short training run on the train cache, an evaluation.
    let held = tmp.path().join("held");
    let o = saelab(&[
        "extract",
        "--model",
        p(&model_path),
        "--hook",
        hooks[0],
        "--corpus",
        p(&corpus),
        "--part",
        "heldout",
        "--tokens",
        "300",
        "--ctx-len",
        "64",
        "--out",
        p(&held),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (_, hmeta) = contents(&held);
    assert!(hmeta.doc_ids.iter().all(|&d| d == 19));
    let run = tmp.path().join("run");
    let train_dir = cache.join(hooks[0]);
    let o = saelab(&[
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
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("sae/cfg.json")).unwrap()).unwrap();
    let meta = &cfg["metadata"];
    assert_eq!(meta["hook_name"], hooks[0], "{cfg}");
    assert_eq!(meta["context_size"], 64, "{cfg}");
    let o = saelab(&["eval", "--sae", p(&run), "--acts", p(&held), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let fvu = v["fvu"].as_f64().unwrap();
    assert!(fvu > 0.0 && fvu < 1.0, "{v}");
    assert!(v["l0"].as_f64().unwrap() <= 8.0 + 1e-9, "{v}");
}

#[test]
fn interrupted_and_killed_extractions_resume() {
    let Some(model_path) = model() else { return };
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let corpus = corpus(tmp.path());
    let (m, c) = (model_path.to_str().unwrap(), corpus.to_str().unwrap());

    let full = tmp.path().join("full");
    let o = saelab(&extract_args(m, c, p(&full), "1500"));
    assert!(o.status.success(), "{}", stderr(&o));

    // Stopped as by Ctrl-C after 8 contexts: exit 130, one line, a consistent cache.
    let part = tmp.path().join("part");
    let mut args = extract_args(m, c, p(&part), "1500");
    args.extend(["--stop-after-contexts", "8"]);
    let o = saelab(&args);
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert_one_line_error(&o, &["interrupted", "run the same command again"]);
    let mp = read_manifest(&part).unwrap();
    assert!(!mp.complete && mp.contexts == 8, "{mp:?}");
    contents(&part);
    // Running the same command again continues it: the same cache as in one go.
    let o = saelab(&extract_args(m, c, p(&part), "1500"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("resumed at"), "{}", stdout(&o));
    assert_eq!(contents(&part), contents(&full));

    // A real SIGINT while running, then a SIGKILL: both leave a consistent cache that
    // the same command continues.
    let live = tmp.path().join("live");
    let manifest_shards = |dir: &Path| read_manifest(dir).map(|m| m.shards.len()).unwrap_or(0);
    let wait_for_shards = |child: &mut std::process::Child, n: usize| {
        let t = Instant::now();
        while manifest_shards(&live) < n {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("extract ended early: {status}");
            }
            assert!(t.elapsed() < Duration::from_secs(300), "no shard appeared");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let big = extract_args(m, c, p(&live), "60000");
    let mut child = saelab_cmd(&big)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_shards(&mut child, 1);
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("run the same command again"),
        "{}",
        stderr(&o)
    );
    let after_int = read_manifest(&live).unwrap();
    assert!(!after_int.complete);
    contents(&live);
    no_temp_files(&live);

    let mut child = saelab_cmd(&big)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_shards(&mut child, after_int.shards.len() + 1);
    child.kill().unwrap();
    child.wait().unwrap();
    let after_kill = read_manifest(&live).unwrap();
    assert!(after_kill.rows > after_int.rows && !after_kill.complete);
    contents(&live);
    // Finish with a target just past what is there.
    let target = (after_kill.rows + 100).to_string();
    let o = saelab(&extract_args(m, c, p(&live), &target));
    assert!(o.status.success(), "{}", stderr(&o));
    let done = read_manifest(&live).unwrap();
    assert!(done.complete && done.rows >= after_kill.rows + 100);
    no_temp_files(&live);
    let (_, meta) = contents(&live);
    let mut ids = meta.context_ids.clone();
    ids.dedup();
    assert_eq!(ids, (0..done.contexts as i64).collect::<Vec<_>>());
    // The prefix both runs hold is identical.
    let (a, ma) = contents(&live);
    let (b, mb) = contents(&full);
    let n = ma.token_ids.len().min(mb.token_ids.len());
    assert_eq!(ma.token_ids[..n], mb.token_ids[..n]);
    assert_eq!(a[..n * 576], b[..n * 576]);
}

#[test]
fn bad_input_gives_one_line_errors_and_leaves_nothing_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    // A missing model (no data needed).
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(empty.join("a.txt"), "some text").unwrap();
    let o = saelab(&extract_args("nope.gguf", p(&empty), p(&out), "100"));
    assert_one_line_error(&o, &["nope.gguf"]);
    assert!(!out.exists());
    // A corpus folder without documents, or with empty ones.
    let none = tmp.path().join("none");
    std::fs::create_dir(&none).unwrap();
    let o = saelab(&extract_args("nope.gguf", p(&none), p(&out), "100"));
    assert_one_line_error(&o, &["none", "no *.txt documents found"]);
    std::fs::write(none.join("blank.txt"), "  \n").unwrap();
    let o = saelab(&extract_args("nope.gguf", p(&none), p(&out), "100"));
    assert_one_line_error(&o, &["are empty"]);
    // An empty held-out part.
    let mut args = extract_args("nope.gguf", p(&empty), p(&out), "100");
    args.extend(["--part", "heldout"]);
    let o = saelab(&args);
    assert_one_line_error(&o, &["heldout part is empty"]);
    assert!(!out.exists());

    let Some(model_path) = model() else { return };
    let _g = serial();
    let corpus = corpus(tmp.path());
    let (m, c) = (model_path.to_str().unwrap(), corpus.to_str().unwrap());
    // Not a GGUF, a truncated GGUF, an unsupported architecture.
    let junk = tmp.path().join("junk.gguf");
    std::fs::write(&junk, b"this is not a gguf file at all").unwrap();
    let o = saelab(&extract_args(p(&junk), c, p(&out), "100"));
    assert_one_line_error(&o, &["junk.gguf", "not a readable GGUF"]);
    let bytes = std::fs::read(&model_path).unwrap();
    let cut = tmp.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let o = saelab(&extract_args(p(&cut), c, p(&out), "100"));
    assert_one_line_error(&o, &["cut.gguf"]);
    let key = b"general.architecture";
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    let mut patched = bytes.clone();
    // value type (u32 string = 8), length (u64 = 5), then "llama"
    assert_eq!(&patched[at + 12..at + 17], b"llama");
    patched[at + 12..at + 17].copy_from_slice(b"gemma");
    let gem = tmp.path().join("gemma.gguf");
    std::fs::write(&gem, &patched).unwrap();
    let o = saelab(&extract_args(p(&gem), c, p(&out), "100"));
    assert_one_line_error(&o, &["gemma.gguf", "unsupported architecture 'gemma'"]);
    assert!(!out.exists());
    // A hook that does not exist (the valid ones are listed), a layer out of range.
    let mut args = extract_args(m, c, p(&out), "100");
    args[4] = "blocks.3.hook_resid_sideways";
    let o = saelab(&args);
    assert_one_line_error(&o, &["unknown hook", "hook_resid_post", "hook_mlp_out"]);
    args[4] = "blocks.30.hook_resid_post";
    let o = saelab(&args);
    assert_one_line_error(&o, &["layer 30 is out of range", "0..=29"]);
    assert!(!out.exists());
    // An --out that holds something else.
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
    let o = saelab(&extract_args(m, c, p(&foreign), "100"));
    assert_one_line_error(&o, &["foreign", "not an activation cache"]);
    assert_eq!(std::fs::read_dir(&foreign).unwrap().count(), 1);
    // A cache made with other settings is not mixed with new rows.
    let o = saelab(&extract_args(m, c, p(&out), "100"));
    assert!(o.status.success(), "{}", stderr(&o));
    let mut args = extract_args(m, c, p(&out), "200");
    args.extend(["--dtype", "bf16"]);
    let o = saelab(&args);
    assert_one_line_error(&o, &["other settings", "dtype"]);

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
    let o = saelab(&args);
    assert!(o.status.success(), "{}", stderr(&o));
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

fn weights(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("sae/sae_weights.safetensors")).unwrap()
}

#[test]
fn streaming_training_resumes_exactly_and_sweeps_share_one_pass() {
    let Some(model_path) = model() else { return };
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let corpus = corpus(tmp.path());
    let (m, c) = (model_path.to_str().unwrap(), corpus.to_str().unwrap());

    let full = tmp.path().join("full");
    let o = saelab(&stream_args(m, c, p(&full)));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("fvu"), "{}", stdout(&o));
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(full.join("sae/cfg.json")).unwrap()).unwrap();
    assert_eq!(cfg["metadata"]["hook_name"], "blocks.2.hook_resid_post");
    let log = std::fs::read_to_string(full.join("metrics.jsonl")).unwrap();
    assert!(log.contains("\"kind\":\"val\""), "{log}");

    // Interrupted mid-run, resumed: the same weights.
    let part = tmp.path().join("part");
    let mut args = stream_args(m, c, p(&part));
    args.extend(["--stop-after", "5"]);
    let o = saelab(&args);
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert!(stderr(&o).contains("--resume"), "{}", stderr(&o));
    let o = saelab(&["train", "--resume", p(&part)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        weights(&full) == weights(&part),
        "resumed streaming run differs"
    );

    // Two hooks × two k in one pass, interrupted and resumed as a sweep: the member
    // with the first run's settings ends with the first run's weights.
    let sweep = tmp.path().join("sweep");
    let mut args = stream_args(m, c, p(&sweep));
    let i = args
        .iter()
        .position(|a| *a == "blocks.2.hook_resid_post")
        .unwrap();
    args.insert(i + 1, "blocks.1.hook_mlp_out");
    let i = args.iter().position(|a| *a == "8").unwrap();
    args.insert(i + 1, "16");
    args.extend(["--stop-after", "4"]);
    let o = saelab(&args);
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    let o = saelab(&["train", "--resume", p(&sweep)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let names: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sweep.join("sweep.json")).unwrap()).unwrap();
    assert_eq!(names["runs"].as_array().unwrap().len(), 4, "{names}");
    let member = sweep.join("blocks.2.hook_resid_post-topk-k8-n576");
    assert!(
        weights(&member) == weights(&full),
        "sweep member differs from the single run"
    );
    let other = sweep.join("blocks.1.hook_mlp_out-topk-k16-n576");
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(other.join("sae/cfg.json")).unwrap()).unwrap();
    assert_eq!(cfg["metadata"]["hook_name"], "blocks.1.hook_mlp_out");
    assert_eq!(cfg["k"], 16, "{cfg}");
}
