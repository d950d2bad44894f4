//! End-to-end tests of `saelab sweep`, `saelab report` and `saelab eval --model`.
//!
//! The sweep and report run on synthetic activations (no data needed); the in-model
//! evaluation uses the real SmolLM2 model and corpus (see `saelab_testkit::real_data`:
//! skipped with a message without them, failing under CI).

use std::path::{Path, PathBuf};

mod common;

use common::{identity_sae, read_json, saelab, saelab_fails, saelab_ok, synth};
use saelab_testkit::cli::{assert_one_line_error, p, stderr, stdout};
use saelab_testkit::data::data_required;
use saelab_testkit::real_data;

#[test]
fn sweep_trains_a_grid_in_one_pass_and_report_compares_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("synth");
    synth(&data, 6000, 500, 16, 64);
    let cfg = tmp.path().join("sweep.toml");
    let out = tmp.path().join("sweep");
    std::fs::write(
        &cfg,
        format!(
            r#"
out = "{}"
hook = "blocks.0.hook_resid_post"
[data]
paths = ["{}"]
[train]
total_tokens = 5120
batch_size = 256
lr = 3e-3
log_every = 2
eval_every = 10
checkpoint_every = 0
dead_after_tokens = 2000
val_fraction = 0.1
[sae]
d_sae = 64
[[grid]]
architecture = "topk"
k = [2, 4, 8]
[[grid]]
architecture = "relu"
l1_coefficient = [0.1, 1.0]
[grid.train]
lr = 1e-3
"#,
            p(&out),
            p(&data.join("train.npy"))
        ),
    )
    .unwrap();
    let o = saelab_ok(&["sweep", "--config", p(&cfg), "--dry-run"]);
    assert!(stdout(&o).contains("5 runs"), "{}", stdout(&o));
    assert!(!out.exists(), "a dry run writes nothing");

    saelab_ok(&["sweep", "--config", p(&cfg)]);
    let names = ["topk-k2", "topk-k4", "topk-k8", "relu-lam0.1", "relu-lam1"];
    let mut l0 = Vec::new();
    for n in names {
        let dir = out.join(n);
        assert!(dir.join("sae/cfg.json").is_file(), "{n}: no SAE");
        let log = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
        let last_val: serde_json::Value = log
            .lines()
            .rev()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|v| v["kind"] == "val")
            .expect("a validation record");
        l0.push(last_val["l0"].as_f64().unwrap());
        let cfg = read_json(&dir.join("sae/cfg.json"));
        assert_eq!(cfg["metadata"]["hook_name"], "blocks.0.hook_resid_post");
    }
    // TopK runs have L0 at most k; the grid really varied k.
    assert!(
        l0[0] <= 2.0 + 1e-9 && l0[1] <= 4.0 + 1e-9 && l0[2] <= 8.0 + 1e-9,
        "{l0:?}"
    );
    assert!(l0[2] > l0[0], "{l0:?}");
    // Starting the same sweep again refuses to overwrite.
    saelab_fails(&["sweep", "--config", p(&cfg)], &["already holds a run"]);

    let report = tmp.path().join("report");
    let mut args = vec!["report", "--out", p(&report)];
    let dirs: Vec<PathBuf> = names.iter().map(|n| out.join(n)).collect();
    args.extend(dirs.iter().map(|d| p(d)));
    saelab_ok(&args);
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    for n in names {
        assert!(
            md.contains(&format!("| {n} |")),
            "{n} missing from the table:\n{md}"
        );
    }
    assert!(md.contains("Against TopK at equal L0"), "{md}");
    if md.contains("Plots were not drawn") {
        // (the image's fonts-dejavu-core provides one; CI must check the plots)
        assert!(
            !data_required(),
            "no font found: the plots were not drawn\n{md}"
        );
        eprintln!("skipping the plot checks: no font on this machine (set SAELAB_FONT)");
        return;
    }
    for plot in ["frontier.png", "training.png", "density.png"] {
        let bytes = std::fs::read(report.join(plot)).unwrap();
        assert_eq!(&bytes[1..4], b"PNG", "{plot} is not a PNG");
        assert!(bytes.len() > 10_000, "{plot} is suspiciously small");
        assert!(md.contains(&format!("]({plot})")), "{plot} not linked");
    }
    // No in-model metrics: no CE plot.
    assert!(!report.join("ce_score.png").exists());
    saelab_ok(&[
        "report",
        "--out",
        p(&report),
        "--format",
        "svg",
        p(&dirs[0]),
    ]);
    let svg = std::fs::read_to_string(report.join("frontier.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("L0"), "bad SVG");
}

#[test]
fn report_and_sweep_errors_are_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let nope = tmp.path().join("nope");
    saelab_fails(&["report", "--out", p(tmp.path()), p(&nope)], &["nope"]);
    let cfg = tmp.path().join("s.toml");
    let sweep = ["sweep", "--config", p(&cfg)];
    // No grid; then two grids that cannot share one pass over the data.
    let base = "out = 'x'\n[data]\npaths = ['a.npy']\n";
    for (config, needle) in [
        (base.to_string(), "no [[grid]]"),
        (
            format!(
                "{base}[[grid]]\narchitecture = 'topk'\nk = [4]\n[grid.train]\nbatch_size = 7\n\
                 [[grid]]\narchitecture = 'topk'\nname = 'b'\nk = [4]\n"
            ),
            "share one pass",
        ),
    ] {
        std::fs::write(&cfg, config).unwrap();
        saelab_fails(&sweep, &[needle]);
    }
}

#[test]
fn eval_with_a_model_splices_the_sae_and_reports_ce() {
    let Some(data) = real_data() else { return };
    let (model, corpus) = (data.model.clone(), data.collection("sotu"));
    let tmp = tempfile::tempdir().unwrap();
    let sae_dir = identity_sae(tmp.path(), "id", Some("blocks.15.hook_resid_post"));
    // `saelab eval` of `sae` spliced into the model on the corpus, and `extra`.
    let eval = |sae: &Path, extra: &[&str]| {
        let args = [
            "eval",
            "--sae",
            p(sae),
            "--model",
            p(&model),
            "--corpus",
            p(&corpus),
        ];
        saelab(&[&args[..], extra].concat())
    };
    let json = tmp.path().join("eval.json");
    let o = eval(
        &sae_dir,
        &[
            "--tokens",
            "64",
            "--ctx-len",
            "32",
            "--json",
            "--out",
            p(&json),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["hook"], "blocks.15.hook_resid_post");
    assert_eq!(v["contexts"], 2);
    assert!(
        (v["ce_loss_score"].as_f64().unwrap() - 1.0).abs() < 1e-6,
        "{v}"
    );
    assert!(v["kl_sae"].as_f64().unwrap().abs() < 1e-6, "{v}");
    assert!(v["ce_zero"].as_f64().unwrap() > v["ce_clean"].as_f64().unwrap());
    assert_eq!(read_json(&json)["ce_clean"], v["ce_clean"]);

    // No hook in the metadata and none given: a one-line error naming the SAE.
    let bare = identity_sae(tmp.path(), "bare", None);
    assert_one_line_error(&eval(&bare, &[]), &["names no hook point"]);
    // A hook the model does not have.
    let o = eval(
        &sae_dir,
        &[
            "--hook",
            "blocks.40.hook_resid_post",
            "--tokens",
            "32",
            "--ctx-len",
            "16",
        ],
    );
    assert_one_line_error(&o, &["out of range"]);
}
