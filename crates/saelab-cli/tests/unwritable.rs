//! Every command that writes an output refuses an output folder that cannot be written
//! — one that root cannot write either (`saelab_testkit::unwritable_dir`, since tests
//! and CI run as root, who ignores permission bits) — with one line naming the path (or
//! the folder above it that could not be created), a non-zero exit, and nothing written. The `eval --model` and `extract` cases need the
//! real model (skipped without it, failing under CI).

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;

use common::{saelab, saelab_fails, saelab_ok, synth, train_args, zero_sae};
use saelab_testkit::cli::{assert_one_line_error, p};
use saelab_testkit::{real_data, unwritable_dir};

/// A path below the unwritable folder (`/sys/saelab-test/<name>`).
fn target(name: &str) -> PathBuf {
    unwritable_dir().join("saelab-test").join(name)
}

/// The command failed in one line naming `out` or the folder above it that could not
/// be created (`/sys/saelab-test`), and `out` does not exist.
fn assert_refused(o: &Output, out: &Path) {
    let missing = out.parent().unwrap();
    assert_one_line_error(o, &[p(missing)]);
    assert!(!missing.exists(), "{} was created", missing.display());
}

/// Synthetic activations (d = 16) and a short TopK run on them.
fn synth_and_run(dir: &Path) -> (PathBuf, PathBuf) {
    let data = dir.join("synth");
    synth(&data, 2000, 200, 16, 32);
    let run = dir.join("run");
    saelab_ok(&train_args(p(&data.join("train.npy")), p(&run)));
    (data, run)
}

#[test]
fn commands_refuse_an_unwritable_output_folder_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, run) = synth_and_run(tmp.path());
    let before = std::fs::read_dir(tmp.path()).unwrap().count();
    let acts = data.join("train.npy");

    let out = target("synth");
    let o = saelab(&["synth", "--out", p(&out), "--rows", "100", "--d", "4"]);
    assert_refused(&o, &out);

    let out = target("run");
    assert_refused(&saelab(&train_args(p(&acts), p(&out))), &out);

    let out = target("report");
    let o = saelab(&["report", "--out", p(&out), p(&run)]);
    assert_refused(&o, &out);

    let out = target("converted");
    let o = saelab(&["convert", p(&run), "--out", p(&out)]);
    assert_refused(&o, &out);

    // Without --model, eval has no file to write: --out is refused up front (it used to
    // be ignored without a word).
    let out = tmp.path().join("eval.json");
    let held = data.join("heldout.npy");
    saelab_fails(
        &[
            "eval",
            "--sae",
            p(&run),
            "--acts",
            p(&held),
            "--out",
            p(&out),
        ],
        &["--out", "--model"],
    );
    assert!(!out.exists());

    // Nothing appeared anywhere else either.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), before);
}

#[test]
fn model_commands_refuse_an_unwritable_output_folder_in_one_line() {
    let Some(data) = real_data() else { return };
    let _g = saelab_testkit::serial();
    let tmp = tempfile::tempdir().unwrap();
    let (model, sotu) = (data.model.clone(), data.collection("sotu"));

    let sae = zero_sae(tmp.path(), "blocks.3.hook_resid_post");
    for (out, command) in [
        (
            target("cache"),
            ["extract", "--hook", "blocks.1.hook_resid_post"],
        ),
        (target("eval.json"), ["eval", "--sae", p(&sae)]),
    ] {
        let on_text = [
            "--model",
            p(&model),
            "--corpus",
            p(&sotu),
            "--tokens",
            "32",
            "--ctx-len",
            "16",
            "--out",
            p(&out),
        ];
        assert_refused(&saelab(&[&command[..], &on_text].concat()), &out);
    }
}
