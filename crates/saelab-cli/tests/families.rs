//! Every model-running subcommand on each opt-in model family, end to end through the
//! command line: `extract` (train and held-out caches), `train` on the cache and
//! `train --model` (streamed), `eval` on activations and `eval --model` (in-model),
//! `features`, `generate` (with the chat template for the instruct model) and `steer
//! --measure`, at a middle block, small enough to take a minute or two per model.
//!
//! The models are opt-in (`scripts/setup.sh --model qwen2.5-0.5b`, `--model
//! gemma3-270m`), so each test skips with a message when its GGUF is absent, CI
//! included; the corpus is the default one.

use std::path::{Path, PathBuf};

mod common;

use common::{read_json, saelab_ok};
use saelab_testkit::cli::{p, stdout};
use saelab_testkit::{real_data, serial};

/// `dir/corpus`: 24 Moby-Dick chapters (document 19 is held out).
fn corpus(moby: &Path, dir: &Path) -> PathBuf {
    let out = dir.join("corpus");
    std::fs::create_dir_all(&out).unwrap();
    for i in 1..=24 {
        let name = format!("chapter_{i}.txt");
        std::fs::copy(moby.join(&name), out.join(format!("{i:02}.txt"))).unwrap();
    }
    out
}

/// The whole command-line path on the opt-in model `name`, whose residual is `d` wide,
/// at `hook`; `chat`: it is an instruct model with a chat template.
fn every_subcommand_runs(name: &str, d: usize, hook: &str, chat: bool) {
    let Some(gguf) = saelab_testkit::data::opt_in_model(name) else {
        return;
    };
    let Some(data) = real_data() else { return };
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let t = |n: &str| tmp.path().join(n);
    let (model, corp) = (p(&gguf), corpus(&data.collection("moby"), tmp.path()));
    let corp = p(&corp);

    // extract: a train cache and a held-out cache.
    let extract = |out: &Path, tokens: &str, part: &str| {
        let o = saelab_ok(&[
            "extract",
            "--model",
            model,
            "--hook",
            hook,
            "--corpus",
            corp,
            "--tokens",
            tokens,
            "--ctx-len",
            "64",
            "--batch",
            "4",
            "--part",
            part,
            "--out",
            p(out),
        ]);
        eprintln!("{name} extract: {}", stdout(&o).trim());
    };
    extract(&t("cache"), "1500", "train");
    extract(&t("held"), "300", "heldout");
    // One hook: the cache is the folder itself.
    let m = saelab_lm::cache::read_manifest(&t("cache")).unwrap();
    assert!(m.complete && m.rows >= 1500, "{:?}", m.rows);
    assert_eq!((m.d, m.hook.as_str()), (d, hook));

    // train on the cache, eval on the held-out cache.
    let run = t("run");
    saelab_ok(&[
        "train",
        "--acts",
        p(&t("cache")),
        "--arch",
        "topk",
        "--k",
        "8",
        "--expansion",
        "2",
        "--tokens",
        "4096",
        "--batch-size",
        "256",
        "--lr",
        "1e-3",
        "--out",
        p(&run),
    ]);
    let cfg = read_json(&run.join("sae/cfg.json"));
    assert_eq!(cfg["d_in"], d, "{cfg}");
    assert_eq!(cfg["metadata"]["hook_name"], hook, "{cfg}");
    let o = saelab_ok(&["eval", "--sae", p(&run), "--acts", p(&t("held")), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let fvu = v["fvu"].as_f64().unwrap();
    eprintln!("{name} eval: FVU {fvu:.4}, L0 {}", v["l0"]);
    assert!(fvu > 0.0 && fvu < 1.0, "{v}");

    // eval --model: the SAE spliced into the model.
    let o = saelab_ok(&[
        "eval",
        "--sae",
        p(&run),
        "--model",
        model,
        "--corpus",
        corp,
        "--tokens",
        "512",
        "--ctx-len",
        "64",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    eprintln!("{name} eval --model: {v}");
    let (clean, spliced) = (
        v["ce_clean"].as_f64().unwrap(),
        v["ce_sae"].as_f64().unwrap(),
    );
    assert!(
        clean.is_finite() && clean > 0.5 && spliced >= clean - 0.1,
        "{v}"
    );
    assert!(v["kl_sae"].as_f64().unwrap().is_finite(), "{v}");

    // train --model: streamed from the model, no cache.
    let streamed = t("streamed");
    saelab_ok(&[
        "train",
        "--model",
        model,
        "--hook",
        hook,
        "--corpus",
        corp,
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
        "1024",
        "--batch-size",
        "256",
        "--out",
        p(&streamed),
    ]);
    assert_eq!(read_json(&streamed.join("sae/cfg.json"))["d_in"], d);

    // features, then generate and steer on one of its live latents.
    let features = run.join("features");
    saelab_ok(&[
        "features",
        "--sae",
        p(&run),
        "--model",
        model,
        "--corpus",
        corp,
        "--tokens",
        "1024",
        "--ctx-len",
        "64",
        "--out",
        p(&features),
    ]);
    let mut gen = vec![
        "generate",
        "--model",
        model,
        "--prompt",
        "The whale",
        "--max-new-tokens",
        "8",
        "--json",
    ];
    if chat {
        gen[4] = "Name one large sea animal.";
        gen.push("--chat");
    }
    let g: serde_json::Value = serde_json::from_str(&stdout(&saelab_ok(&gen))).unwrap();
    eprintln!("{name} generate: {}", g["text"]);
    assert!(!g["tokens"].as_array().unwrap().is_empty(), "{g}");
    let store = saelab_features::Features::open(&features).unwrap();
    let live = (0..store.n_latents())
        .find(|&i| store.latent(i).unwrap().max > 0.0)
        .expect("a latent that fired in the features pass")
        .to_string();
    let o = saelab_ok(&[
        "steer",
        "--model",
        model,
        "--sae",
        p(&run),
        "--prompt",
        "The sea was",
        "--latent",
        &live,
        "--strength",
        "8x",
        "--max-new-tokens",
        "6",
        "--measure",
    ]);
    let text = stdout(&o);
    assert!(text.contains("--- steered"), "{text}");
}

#[test]
fn every_subcommand_runs_on_qwen2() {
    every_subcommand_runs("qwen2.5-0.5b", 896, "blocks.12.hook_resid_post", true);
}

#[test]
fn every_subcommand_runs_on_gemma3() {
    every_subcommand_runs("gemma3-270m", 640, "blocks.9.hook_resid_post", false);
}
