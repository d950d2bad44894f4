//! Smoke tests of `saelab bench` (the training-step workloads W1–W4 of BENCHMARKS.md, at
//! tiny sizes) and of `saelab bench --model` (the real model's forward, tiny; skipped
//! without the real data, failing under CI): the JSON report parses, and every figure
//! in it is there, finite and consistent with the others.

mod common;

use common::{saelab_fails, saelab_ok, zero_sae};
use saelab_testkit::cli::{p, stdout};
use saelab_testkit::real_data;
use serde_json::Value;

/// `v[key]` as a finite number (panics naming the key otherwise).
fn num(v: &Value, key: &str) -> f64 {
    let x = v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing or not a number in {v}"));
    assert!(x.is_finite(), "{key} = {x} in {v}");
    x
}

/// Checks one timed step series (`fast` or `reference`) of a workload: at least `steps`
/// steps (the fast steps are spread evenly over the reference rounds, rounding up).
fn check_steps(t: &Value, steps: u64, batch: f64, n: f64) {
    assert!(t["steps"].as_u64().is_some_and(|s| s >= steps), "{t}");
    let (median, best) = (num(t, "median_s"), num(t, "best_s"));
    assert!(best > 0.0 && best <= median, "{t}");
    let rate = num(t, "tokens_per_s");
    assert!((rate * median / batch - 1.0).abs() < 1e-6, "{t}");
    assert!(num(t, "cpu_s_per_step") >= 0.0, "{t}");
    let l0 = num(t, "l0");
    assert!(l0 > 0.0 && l0 <= n, "{t}");
    assert!((0.0..=1.0).contains(&num(t, "dead_frac")), "{t}");
    assert!(num(t, "last_loss") >= 0.0, "{t}");
    assert!(num(t, "aux") >= 0.0, "{t}");
}

#[test]
fn bench_reports_every_workload_with_finite_figures() {
    let (d, n, batch) = (16, 64, 64);
    // Tiny sizes for every run here.
    let bench = |args: &[&str]| {
        let tiny = ["bench", "--d", "16", "--n", "64", "--batch", "64"];
        saelab_ok(&[&tiny[..], args].concat())
    };
    let o = bench(&[
        "--warmup",
        "1",
        "--steps",
        "3",
        "--reference-warmup",
        "0",
        "--reference-steps",
        "2",
        "--dead-every",
        "20",
        "--json",
    ]);
    let r: Value = serde_json::from_slice(&o.stdout).expect("bench --json prints JSON");
    assert_eq!(r["config"]["d"], d);
    assert_eq!(r["config"]["n"], n);
    assert!(num(&r["gemm"], "gflops") > 0.0, "{}", r["gemm"]);
    let ws = r["workloads"].as_array().unwrap();
    let ids: Vec<&str> = ws.iter().map(|w| w["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["W1", "W2", "W3", "W4"]);
    let archs: Vec<&str> = ws
        .iter()
        .map(|w| w["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(archs, ["topk", "relu", "jumprelu", "batchtopk"]);
    for w in ws {
        check_steps(&w["fast"], 3, batch as f64, n as f64);
        check_steps(&w["reference"], 2, batch as f64, n as f64);
        assert!(num(w, "speedup") > 0.0, "{w}");
        assert!(num(w, "roofline_fraction") > 0.0, "{w}");
        assert!(num(&w["gemm"], "median_s") > 0.0, "{w}");
        assert!(!w["settings"].as_str().unwrap().is_empty(), "{w}");
    }
    // W1 and W4 force every 20th latent dead, so AuxK runs.
    for w in [&ws[0], &ws[3]] {
        assert!(num(&w["fast"], "dead_frac") > 0.0, "{w}");
        assert!(num(&w["fast"], "aux") > 0.0, "{w}");
    }

    // The table, one workload, no reference.
    let o = bench(&[
        "--workloads",
        "w2",
        "--warmup",
        "0",
        "--steps",
        "1",
        "--reference-steps",
        "0",
    ]);
    let table = stdout(&o);
    assert!(table.contains("| W2 | relu |"), "{table}");
    assert!(!table.contains("| W1 "), "{table}");

    // Bad settings: one line each, before any work (no model is read).
    saelab_fails(
        &["bench", "--workloads", "w9"],
        &["unknown workload \"w9\"", "w1, w2, w3 or w4"],
    );
    saelab_fails(
        &[
            "bench",
            "--model",
            "nope.gguf",
            "--corpus",
            "nowhere",
            "--contexts",
            "0",
        ],
        &["--contexts must be positive"],
    );
}

#[test]
fn bench_model_times_the_real_forward_and_the_splice() {
    let Some(data) = real_data() else { return };
    let _g = saelab_testkit::serial();
    let tmp = tempfile::tempdir().unwrap();
    let sae = zero_sae(tmp.path(), "blocks.2.hook_resid_post");
    let (contexts, ctx_len) = (2.0, 16.0);
    let o = saelab_ok(&[
        "bench",
        "--model",
        p(&data.model),
        "--corpus",
        p(&data.collection("sotu")),
        "--sae",
        p(&sae),
        "--batches",
        "2",
        "--contexts",
        "2",
        "--ctx-len",
        "16",
        "--json",
    ]);
    let r: Value = serde_json::from_slice(&o.stdout).expect("bench --model --json prints JSON");
    assert_eq!(r["batch"], 2);
    assert_eq!(r["ctx_len"], 16);
    assert_eq!(r["timed_batches"], 2);
    let ws = r["workloads"].as_array().unwrap();
    let ids: Vec<&str> = ws.iter().map(|w| w["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["E1", "E2", "E3", "S1"]);
    // The SAE's hook is captured; E2 captures the last block's residual.
    assert!(
        ws[0]["what"]
            .as_str()
            .unwrap()
            .contains("blocks.2.hook_resid_post"),
        "{r}"
    );
    assert!(
        ws[1]["what"]
            .as_str()
            .unwrap()
            .contains("blocks.29.hook_resid_post"),
        "{r}"
    );
    for w in ws {
        let s = num(w, "batch_s");
        assert!(s > 0.0, "{w}");
        let rate = num(w, "tokens_per_s");
        assert!((rate * s / (contexts * ctx_len) - 1.0).abs() < 1e-6, "{w}");
    }
    assert!(num(&r, "splice_cost") > 0.0, "{r}");
    assert!(num(&r, "cpu_per_wall") > 0.0, "{r}");
}
