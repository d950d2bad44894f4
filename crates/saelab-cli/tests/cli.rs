//! End-to-end tests of the `saelab` binary: synth → train → eval, exact resume after an
//! interruption (Ctrl-C, or a SIGKILL at a random moment), inspect and convert, and
//! one-line errors for bad input.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{saelab, saelab_fails, saelab_ok, set_arg, synth, train_args, weights, SAELAB};
use saelab_core::format::load_sae;
use saelab_core::store::ActivationStore;
use saelab_testkit::cli::{p, stderr, stdout};

/// A small synthetic dataset in `dir/synth`: d = 16, 64 features.
fn synth_16(dir: &Path) -> PathBuf {
    let out = dir.join("synth");
    synth(&out, 6000, 2000, 16, 64);
    out
}

/// `dir/name/train.npy`: 2000 synthetic rows of width `d`.
fn synth_d(dir: &Path, name: &str, d: usize) -> PathBuf {
    let out = dir.join(name);
    synth(&out, 2000, 100, d, 32);
    out.join("train.npy")
}

/// `(kind, step)` of every record of a run's `metrics.jsonl`.
fn log_records(run: &Path) -> Vec<(String, u64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad log line {l:?}: {e}"));
            (
                v["kind"].as_str().unwrap().to_string(),
                v["step"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The log of a resumed run: its training steps strictly increase (none repeated or
/// out of order after the resume), and it holds exactly the records, with exactly the
/// values, of the uninterrupted run `full`.
fn assert_same_log(resumed: &Path, full: &Path) {
    let records = log_records(resumed);
    let steps: Vec<u64> = records
        .iter()
        .filter(|(k, _)| k == "train")
        .map(|r| r.1)
        .collect();
    assert!(
        steps.windows(2).all(|w| w[0] < w[1]),
        "training steps out of order or repeated after resume: {steps:?}"
    );
    let text = |dir: &Path| std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    assert!(
        text(resumed) == text(full),
        "the resumed log differs from the uninterrupted one: {records:?} vs {:?}",
        log_records(full)
    );
}

/// `saelab train --resume run` completes the interrupted `run` with exactly the weights
/// and the log of the uninterrupted run `full`.
fn assert_resumes_like(run: &Path, full: &Path) {
    saelab_ok(&["train", "--resume", p(run)]);
    assert!(
        weights(full) == weights(run),
        "{}: the resumed run ended with other weights than {}",
        run.display(),
        full.display()
    );
    assert_same_log(run, full);
}

/// The synthetic data `dir/synth`, the run of [`train_args`] on it to the end
/// (`dir/full`), and the same run stopped as by Ctrl-C after 23 steps (`dir/part`): exit
/// 130, a message pointing to `--resume`, and no SAE yet. Returns the three folders.
fn full_and_stopped_runs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let data = synth_16(dir);
    let acts = data.join("train.npy");
    let full = dir.join("full");
    saelab_ok(&train_args(p(&acts), p(&full)));
    let part = dir.join("part");
    let mut args = train_args(p(&acts), p(&part));
    args.extend(["--stop-after", "23"]);
    let o = saelab(&args);
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert!(stderr(&o).contains("--resume"), "{}", stderr(&o));
    assert!(!part.join("sae").exists());
    (data, full, part)
}

#[test]
fn interrupted_training_resumes_to_identical_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, full, part) = full_and_stopped_runs(tmp.path());
    assert_resumes_like(&part, &full);

    // The trained SAE evaluates, and on synthetic data reports dictionary recovery.
    let heldout = data.join("heldout.npy");
    let eval_json = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["eval", "--sae", p(&full), "--acts", p(&heldout), "--json"];
        args.extend_from_slice(extra);
        serde_json::from_slice(&saelab_ok(&args).stdout).unwrap()
    };
    let v = eval_json(&["--dictionary", p(&data.join("dictionary.npy"))]);
    assert!(v["fvu"].as_f64().unwrap() < 1.0);
    assert!(v["l0"].as_f64().unwrap() <= 4.0);
    assert!(v["mmcs"].as_f64().unwrap() > 0.3);
    assert!(
        v.get("fvu_refit").is_none(),
        "fvu_refit only when asked for"
    );

    // --refit: the best values on the SAE's own support do at least as well as its own.
    let r = eval_json(&["--refit"]);
    let (fvu, refit) = (r["fvu"].as_f64().unwrap(), r["fvu_refit"].as_f64().unwrap());
    assert_eq!(fvu, v["fvu"].as_f64().unwrap());
    assert!(
        refit > 0.0 && refit <= fvu + 1e-9,
        "fvu_refit {refit} vs fvu {fvu}"
    );

    // inspect and convert work on what train wrote and on another format (sparsify);
    // the converted SAE loads back and computes what the original computes.
    let x = ActivationStore::open(&[heldout], None)
        .unwrap()
        .read_range(0, 500)
        .unwrap();
    let sparsify = saelab_testkit::fixtures_dir().join("sparsify/topk");
    for (name, src) in [("trained", full.join("sae")), ("sparsify", sparsify)] {
        let o = saelab_ok(&["inspect", p(&src)]);
        assert!(stdout(&o).contains("topk"), "{name}: {}", stdout(&o));
        let conv = tmp.path().join(format!("converted-{name}"));
        let convert = ["convert", p(&src), "--out", p(&conv)];
        saelab_ok(&convert);
        saelab_fails(&convert, &["already exists"]);
        let (a, b) = (load_sae(&src).unwrap(), load_sae(&conv).unwrap());
        assert_eq!(
            (&a.cfg.arch, a.cfg.d_in, a.cfg.d_sae),
            (&b.cfg.arch, b.cfg.d_in, b.cfg.d_sae),
            "{name}"
        );
        let ((la, ra), (lb, rb)) = (a.forward(&x).unwrap(), b.forward(&x).unwrap());
        assert_eq!(la.to_dense(), lb.to_dense(), "{name}: latents differ");
        let worst = ra
            .data
            .iter()
            .zip(&rb.data)
            .map(|(u, v)| (u - v).abs() / (1.0 + u.abs()))
            .fold(0f32, f32::max);
        assert!(worst <= 1e-6, "{name}: reconstructions differ by {worst}");
    }
}

/// `data` with the f32 at `index` (counted from the first value after the `.npy` header
/// of a file of `values` values) replaced by a NaN, written to `path`.
fn with_nan(data: &[u8], values: usize, index: usize, path: &Path) {
    let mut bytes = data.to_vec();
    let at = bytes.len() - values * 4 + 4 * index;
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(path, &bytes).unwrap();
}

#[test]
fn bad_input_gives_one_line_errors_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth_16(tmp.path());
    let acts = data.join("train.npy");
    let out = tmp.path().join("run");
    // `saelab train` on `acts` refused in one line holding `needles`, before any run
    // folder exists.
    let refused = |args: &[&str], needles: &[&str]| {
        saelab_fails(args, needles);
        assert!(!out.exists());
    };

    // truncated npy
    let bytes = std::fs::read(&acts).unwrap();
    let trunc = tmp.path().join("trunc.npy");
    std::fs::write(&trunc, &bytes[..bytes.len() / 2]).unwrap();
    refused(&train_args(p(&trunc), p(&out)), &["trunc.npy", "truncated"]);

    // corrupt safetensors
    let bad = tmp.path().join("bad.safetensors");
    std::fs::write(&bad, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}").unwrap();
    refused(&train_args(p(&bad), p(&out)), &["bad.safetensors"]);

    // A NaN (value 100 is row 6, column 4), caught while sampling the initialisation
    // rows: the store reports the file and row, before any run folder exists.
    let nan_path = tmp.path().join("nan.npy");
    with_nan(&bytes, 6000 * 16, 100, &nan_path);
    refused(
        &train_args(p(&nan_path), p(&out)),
        &["nan.npy", "row 6 ", "NaN", "column 4"],
    );

    // unknown architecture
    let mut args = train_args(p(&acts), p(&out));
    set_arg(&mut args, "--arch", "sparsemax");
    refused(&args, &["sparsemax"]);

    // --refit on a LayerNorm-input SAE (the vendored SAELens fixture, d_in = 16 as here)
    let ln = saelab_testkit::fixtures_dir().join("saelens/layer_norm_topk");
    let held = data.join("heldout.npy");
    saelab_fails(
        &["eval", "--sae", p(&ln), "--acts", p(&held), "--refit"],
        &["layer_norm_topk"],
    );

    // eval with a width mismatch: a real SAE, trained on activations of d = 8.
    let narrow = synth_d(tmp.path(), "narrow", 8);
    let sae8 = tmp.path().join("sae8");
    let mut args = train_args(p(&narrow), p(&sae8));
    set_arg(&mut args, "--tokens", "512");
    saelab_ok(&args);
    saelab_fails(
        &["eval", "--sae", p(&sae8), "--acts", p(&acts)],
        &[
            "train.npy",
            "activations have d = 16",
            "sae8",
            "expects d_in = 8",
        ],
    );
    // and one whose decoder does not match the true dictionary's width
    saelab_fails(
        &[
            "eval",
            "--sae",
            p(&sae8),
            "--acts",
            p(&narrow),
            "--dictionary",
            p(&data.join("dictionary.npy")),
        ],
        &["dictionary.npy", "width 16", "decoder 8"],
    );
}

/// `saelab train` of `arch` for 4000 steps of 256 rows, logging every step and writing a
/// checkpoint every 100: long enough to be killed at a random moment.
fn long_train_args<'a>(acts: &'a str, out: &'a str, arch: &'a str) -> Vec<&'a str> {
    let mut args = train_args(acts, out);
    set_arg(&mut args, "--arch", arch);
    set_arg(&mut args, "--tokens", "1024000");
    let i = args
        .iter()
        .position(|a| *a == "train.checkpoint_every=5")
        .unwrap();
    args[i] = "train.checkpoint_every=100";
    args.extend(["--set", "train.log_every=1"]);
    args
}

/// The step of the run's latest checkpoint (`None` while none is in place).
fn checkpoint_step(run: &Path) -> Option<u64> {
    let bytes = std::fs::read(run.join("checkpoint/trainer_state.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["step"].as_u64()
}

/// The last training step in the run's log (an incomplete last line, being written
/// when the process stopped, does not count).
fn last_logged_step(run: &Path) -> u64 {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "train")
        .filter_map(|v| v["step"].as_u64())
        .max()
        .unwrap_or(0)
}

fn signal(child: &Child, sig: &str) {
    let pid = child.id().to_string();
    let ok = Command::new("kill")
        .args([sig, pid.as_str()])
        .status()
        .unwrap();
    assert!(ok.success(), "kill {sig} {pid} failed");
}

/// Kills (SIGKILL) the `saelab train` child writing `run` at a random moment after its
/// first checkpoint, when its log holds steps past its latest checkpoint (so that the
/// resume has log lines to drop): waits for the checkpoint, then `delay`, then freezes
/// the child (SIGSTOP) and looks; if the log is not past the checkpoint yet, lets it run
/// a moment longer. Returns the checkpoint step and the last logged step.
fn kill_past_a_checkpoint(child: &mut Child, run: &Path, delay: Duration) -> (u64, u64) {
    let t = Instant::now();
    while checkpoint_step(run).is_none() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "train ended before its first checkpoint"
        );
        assert!(t.elapsed() < Duration::from_secs(120), "no checkpoint");
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(delay);
    loop {
        signal(child, "-STOP");
        if let Some(status) = child.try_wait().unwrap() {
            panic!("train finished ({status}) before it could be killed; make the run longer");
        }
        if let Some(ck) = checkpoint_step(run) {
            let last = last_logged_step(run);
            if last > ck {
                child.kill().unwrap();
                child.wait().unwrap();
                return (ck, last);
            }
        }
        signal(child, "-CONT");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn killed_training_resumes_exactly_from_its_last_periodic_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth_16(tmp.path());
    let acts = data.join("train.npy");
    // A random moment, printed so that a failure can be reproduced.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    // TopK, and BatchTopK, whose threshold estimate is part of the state.
    for (i, arch) in ["topk", "batchtopk"].into_iter().enumerate() {
        let full = tmp.path().join(format!("{arch}-full"));
        saelab_ok(&long_train_args(p(&acts), p(&full), arch));

        let part = tmp.path().join(format!("{arch}-killed"));
        let delay = Duration::from_micros(u64::from(nanos.rotate_left(7 * i as u32) % 300_000));
        let mut child = SAELAB
            .cmd(&long_train_args(p(&acts), p(&part), arch))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (ck, last) = kill_past_a_checkpoint(&mut child, &part, delay);
        eprintln!(
            "{arch}: killed {delay:?} after the first checkpoint, at step {last} (checkpoint {ck})"
        );
        assert!(!part.join("sae").exists(), "a killed run has no SAE");
        // The lines logged after the checkpoint are dropped and logged again once.
        assert_resumes_like(&part, &full);
    }
}

#[test]
fn a_nan_row_missed_by_the_initialisation_sample_stops_training_cleanly() {
    // 32768 rows, all for training: the initialisation sample (16384 evenly spaced
    // rows) takes the even rows, so a NaN in row 20001 is met only during training.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("big");
    synth(&dir, 32768, 100, 16, 64);
    let clean = std::fs::read(dir.join("train.npy")).unwrap();
    let nan = tmp.path().join("late-nan.npy");
    with_nan(&clean, 32768 * 16, 20001 * 16 + 3, &nan);
    let run = tmp.path().join("run");
    // One epoch (128 steps of 256 rows) reads every row once.
    let mut args = train_args(p(&nan), p(&run));
    set_arg(&mut args, "--tokens", "32768");
    args.extend([
        "--set",
        "train.val_fraction=0",
        "--set",
        "train.log_every=1",
    ]);
    saelab_fails(
        &args,
        &[
            "late-nan.npy",
            "row 20001 ",
            "NaN",
            "column 3",
            "must be finite",
        ],
    );
    // The run had started: its record and log are there, and no SAE, half-written or
    // whole, and no temporary file.
    assert!(run.join("run.json").is_file());
    assert!(!run.join("sae").exists());
    let steps = log_records(&run);
    assert!(!steps.is_empty() && steps.len() < 128, "{steps:?}");
    for e in std::fs::read_dir(&run).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().to_string();
        assert!(
            ["run.json", "metrics.jsonl", "checkpoint"].contains(&name.as_str()),
            "unexpected {name} in the run folder"
        );
    }
    // The same data without the NaN trains to the end.
    std::fs::write(&nan, &clean).unwrap();
    let run2 = tmp.path().join("run2");
    set_arg(&mut args, "--out", p(&run2));
    saelab_ok(&args);
}

#[test]
fn a_crash_while_a_checkpoint_is_replaced_still_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, full, part) = full_and_stopped_runs(tmp.path());
    // What a kill between the two renames that replace `checkpoint/` leaves: the
    // previous checkpoint moved aside, the new one complete under its temporary name.
    std::fs::rename(part.join("checkpoint"), part.join("checkpoint.old")).unwrap();
    std::fs::create_dir(part.join(".checkpoint.tmp-4242")).unwrap();
    assert_resumes_like(&part, &full);
}
