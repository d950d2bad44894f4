//! End-to-end tests of the `saelab` binary: synth → train → eval, exact resume after an
//! interruption, and one-line errors for bad input.

use std::path::{Path, PathBuf};
use std::process::Output;

use saelab_testkit::cli::{assert_one_line_error, p, stderr, Bin};

const SAELAB: Bin = Bin::new(env!("CARGO_BIN_EXE_saelab"));

fn saelab(args: &[&str]) -> Output {
    SAELAB.run(args)
}

/// A small synthetic dataset: d = 16, 64 features.
fn synth(dir: &Path) -> PathBuf {
    let out = dir.join("synth");
    let o = saelab(&[
        "synth",
        "--out",
        p(&out),
        "--rows",
        "6000",
        "--heldout-rows",
        "2000",
        "--d",
        "16",
        "--features",
        "64",
        "--avg-active",
        "3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    out
}

fn train_args<'a>(acts: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--acts",
        acts,
        "--arch",
        "topk",
        "--k",
        "4",
        "--d-sae",
        "64",
        "--tokens",
        "12800",
        "--batch-size",
        "256",
        "--lr",
        "3e-3",
        "--out",
        out,
        "--set",
        "train.checkpoint_every=5",
        "--set",
        "train.dead_after_tokens=1000",
    ]
}

#[test]
fn interrupted_training_resumes_to_identical_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth(tmp.path());
    let acts = data.join("train.npy");
    let full = tmp.path().join("full");
    let o = saelab(&train_args(p(&acts), p(&full)));
    assert!(o.status.success(), "{}", stderr(&o));

    let part = tmp.path().join("part");
    let mut args = train_args(p(&acts), p(&part));
    args.extend(["--stop-after", "23"]);
    let o = saelab(&args);
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert!(stderr(&o).contains("--resume"), "{}", stderr(&o));
    assert!(!part.join("sae").exists());
    let o = saelab(&["train", "--resume", p(&part)]);
    assert!(o.status.success(), "{}", stderr(&o));

    let a = std::fs::read(full.join("sae/sae_weights.safetensors")).unwrap();
    let b = std::fs::read(part.join("sae/sae_weights.safetensors")).unwrap();
    assert!(a == b, "resumed run ended with different weights");
    let log = std::fs::read_to_string(part.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    let mut sorted = steps.clone();
    sorted.dedup();
    assert_eq!(steps, sorted, "log has repeated steps after resume");

    // The trained SAE evaluates, and on synthetic data reports dictionary recovery.
    let heldout = data.join("heldout.npy");
    let eval_json = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["eval", "--sae", p(&full), "--acts", p(&heldout), "--json"];
        args.extend_from_slice(extra);
        let o = saelab(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap()
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

    // inspect and convert work on what train wrote.
    let o = saelab(&["inspect", p(&full)]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("topk"));
    let conv = tmp.path().join("converted");
    let o = saelab(&["convert", p(&full.join("sae")), "--out", p(&conv)]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn bad_input_gives_one_line_errors_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth(tmp.path());
    let acts = data.join("train.npy");
    let out = tmp.path().join("run");

    // truncated npy
    let bytes = std::fs::read(&acts).unwrap();
    let trunc = tmp.path().join("trunc.npy");
    std::fs::write(&trunc, &bytes[..bytes.len() / 2]).unwrap();
    let o = saelab(&train_args(p(&trunc), p(&out)));
    assert_one_line_error(&o, &["trunc.npy"]);
    assert!(!out.exists());

    // corrupt safetensors
    let bad = tmp.path().join("bad.safetensors");
    std::fs::write(&bad, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}").unwrap();
    let o = saelab(&train_args(p(&bad), p(&out)));
    assert_one_line_error(&o, &["bad.safetensors"]);
    assert!(!out.exists());

    // NaN rows (the store reports the file and row)
    let mut nan = bytes.clone();
    let header_len = bytes.len() - 6000 * 16 * 4;
    nan[header_len + 4 * 100..header_len + 4 * 101].copy_from_slice(&f32::NAN.to_le_bytes());
    let nan_path = tmp.path().join("nan.npy");
    std::fs::write(&nan_path, &nan).unwrap();
    let o = saelab(&train_args(p(&nan_path), p(&out)));
    assert_one_line_error(&o, &["nan.npy"]);

    // unknown architecture
    let mut args = train_args(p(&acts), p(&out));
    let i = args.iter().position(|a| *a == "topk").unwrap();
    args[i] = "sparsemax";
    let o = saelab(&args);
    assert_one_line_error(&o, &["sparsemax"]);
    assert!(!out.exists());

    // unwritable output directory
    let ro = tmp.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    let mut perm = std::fs::metadata(&ro).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o555);
    std::fs::set_permissions(&ro, perm).unwrap();
    let target = ro.join("run");
    if std::fs::write(ro.join("probe"), b"").is_err() {
        // (running as root ignores permissions; then this case cannot be tested)
        let o = saelab(&train_args(p(&acts), p(&target)));
        assert_one_line_error(&o, &["ro/run"]);
        assert!(!target.exists());
    }

    // --refit on a LayerNorm-input SAE (the vendored SAELens fixture, d_in = 16 as here)
    let ln = saelab_testkit::fixtures_dir().join("saelens/layer_norm_topk");
    let held = data.join("heldout.npy");
    let o = saelab(&["eval", "--sae", p(&ln), "--acts", p(&held), "--refit"]);
    assert_one_line_error(&o, &["layer_norm_topk"]);

    // eval with a width mismatch
    let o = saelab(&[
        "eval",
        "--sae",
        env!("CARGO_MANIFEST_DIR"),
        "--acts",
        p(&acts),
    ]);
    assert!(!o.status.success());
}
