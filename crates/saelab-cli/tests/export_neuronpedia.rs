//! `saelab export-neuronpedia` end to end on the real SmolLM2 model and corpus (see
//! `saelab_testkit::real_data`: skipped with a message without them, failing under CI):
//! a small TopK SAE trained here, `saelab features` over a few thousand tokens, the
//! export, and `scripts/check_neuronpedia.py` on it — passing on the export, failing on
//! an export with one field corrupted; the Explanation rows of an `explanations.json`
//! merged into the folder (as `saelab autointerp` leaves it), those of a dead latent or
//! with no text left out, none and no folder without one; and the refusals (a folder
//! of another SAE, an output folder that is something else), one line each.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;

use common::{read_json, saelab_fails, saelab_ok};
use saelab_core::format::{load_sae, save_sae};
use saelab_features::explanations::{merge_explanations, ExplanationRecord, ExplanationScore};
use saelab_features::Features;
use saelab_testkit::cli::{p, stdout};
use saelab_testkit::data::{data_required, workspace_root};
use saelab_testkit::{real_data, serial};

const MODEL_ID: &str = "smollm2-135m-instruct";
/// The latent the test switches off.
const DEAD: usize = 5;

/// `python3 scripts/check_neuronpedia.py dir`, or `None` (with a message; a panic when
/// the data is required) without `python3`.
fn checker(dir: &Path) -> Option<Output> {
    let script = workspace_root().join("scripts/check_neuronpedia.py");
    match Command::new("python3").arg(&script).arg(dir).output() {
        Ok(o) => Some(o),
        Err(e) => {
            assert!(!data_required(), "python3 is needed for the checker: {e}");
            eprintln!("skipping the checker: no python3 ({e})");
            None
        }
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Copies the folder `from` to `to` (recursively).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

fn read_gz(path: &Path) -> String {
    let mut s = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_string(&mut s)
        .unwrap();
    s
}

fn write_gz(path: &Path, s: &str) {
    let mut g = flate2::write::GzEncoder::new(
        std::fs::File::create(path).unwrap(),
        flate2::Compression::default(),
    );
    g.write_all(s.as_bytes()).unwrap();
    g.finish().unwrap();
}

/// Trains a TopK SAE (k 8, 576 latents) on `blocks.2.hook_resid_post` streamed from the
/// model into `out`.
fn train(model: &str, corpus: &str, out: &str) {
    saelab_ok(&[
        "train",
        "--model",
        model,
        "--hook",
        "blocks.2.hook_resid_post",
        "--corpus",
        corpus,
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
        "--out",
        out,
    ]);
}

#[test]
fn export_passes_the_checker_and_corruptions_and_other_saes_are_caught() {
    let Some(data) = real_data() else { return };
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let t = |name: &str| -> PathBuf { tmp.path().join(name) };
    let corpus = t("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    for i in 1..=24 {
        std::fs::copy(
            data.collection("moby").join(format!("chapter_{i}.txt")),
            corpus.join(format!("{i:02}.txt")),
        )
        .unwrap();
    }
    let model = p(&data.model);
    let run = t("run");
    train(model, p(&corpus), p(&run));
    // The trained SAE with latent 5 switched off (encoder bias −10⁴): a dead latent.
    let sae_dir = t("sae");
    let mut sae = load_sae(&run.join("sae")).unwrap();
    sae.params.get_mut("b_enc").data[DEAD] = -1e4;
    save_sae(&sae, &sae_dir, None).unwrap();
    let feat = t("features");
    saelab_ok(&[
        "features",
        "--sae",
        p(&sae_dir),
        "--model",
        model,
        "--corpus",
        p(&corpus),
        "--tokens",
        "4000",
        "--ctx-len",
        "64",
        "--range",
        "256",
        "--out",
        p(&feat),
    ]);

    // The explanations autointerp would leave: two of the first live latent, one of
    // the second; one of the dead latent and one without text, both left out.
    let f = Features::open(&feat).unwrap();
    let n = f.n_latents();
    let live: Vec<usize> = (0..n).filter(|&i| f.latent(i).unwrap().count > 0).collect();
    let rec = |latent: usize, explainer: &str, text: &str, scores| ExplanationRecord {
        latent: latent as u32,
        explainer: explainer.into(),
        explanation: text.into(),
        source: "runs/autointerp/test".into(),
        scores,
    };
    let score = |scorer: &str, value, shuffled, failed| ExplanationScore {
        scorer: scorer.into(),
        metric: "auroc".into(),
        value,
        shuffled,
        baseline: 0.5,
        failed,
    };
    merge_explanations(
        &feat,
        vec![
            rec(
                live[0],
                "token-set",
                "\" whale\", \" sea\"",
                vec![
                    score("embedding", Some(0.6123), Some(0.48), 0),
                    score("surprisal", None, Some(0.5), 2),
                ],
            ),
            rec(
                live[0],
                "llm:local:explainer.gguf#0123abcd",
                "Whales.",
                Vec::new(),
            ),
            rec(
                live[1],
                "token-set",
                "\" ship\"",
                vec![score("embedding", Some(0.55), Some(0.5), 0)],
            ),
            rec(DEAD, "token-set", "\" never\"", Vec::new()),
            rec(
                live[2],
                "llm:local:explainer.gguf#0123abcd",
                "  ",
                Vec::new(),
            ),
        ],
    )
    .unwrap();

    let out = t("np");
    let o = saelab_ok(&[
        "export-neuronpedia",
        "--features",
        p(&feat),
        "--sae",
        p(&sae_dir),
        "--out",
        p(&out),
        "--model-id",
        MODEL_ID,
        "--batch-size",
        "128",
    ]);
    assert!(stdout(&o).contains("latents in"), "{}", stdout(&o));

    // What the export holds, against the features folder.
    let settings = read_json(&out.join("run_settings.json"));
    assert_eq!(settings["latents_exported"], live.len());
    assert_eq!(settings["batches"], live.len().div_ceil(128));
    let skipped = read_json(&out.join("skipped_indexes.json"));
    assert_eq!(skipped["skipped_indexes"], serde_json::json!([DEAD]));
    assert_eq!(live.len(), n - 1);
    let b0 = read_json(&out.join("batch-0.json"));
    assert_eq!(
        (b0["model_id"].as_str(), b0["layer"].as_u64()),
        (Some(MODEL_ID), Some(2))
    );
    let first = &b0["features"][0];
    let rec = f.latent(live[0]).unwrap();
    assert_eq!(first["feature_index"], live[0]);
    let heights: u64 = first["freq_hist_data_bar_heights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_u64().unwrap())
        .sum();
    assert_eq!(heights, rec.count);
    let top = &first["activations"][0];
    assert_eq!(top["bin_min"], -1.0);
    assert_eq!(top["tokens"].as_array().unwrap().len(), 63);
    let q = top["qualifying_token_index"].as_u64().unwrap() as u32;
    assert_eq!(q + 1, rec.top[0].pos);
    let v = top["values"][q as usize].as_f64().unwrap();
    assert!((v - rec.max as f64).abs() < 1e-5, "{v} vs {}", rec.max);
    let bulk = out.join(MODEL_ID).join("2-saelab-res-576");
    for file in [
        "release.jsonl",
        "model.jsonl",
        "sourceset.jsonl",
        "source.jsonl",
    ] {
        assert!(bulk.join(file).is_file(), "no {file}");
    }
    let neurons = read_gz(&bulk.join("features/batch-0.jsonl.gz"));
    let row: serde_json::Value = serde_json::from_str(neurons.lines().next().unwrap()).unwrap();
    assert_eq!(row["index"], live[0].to_string());
    assert_eq!(row["topkCosSimIndices"].as_array().unwrap().len(), 10);

    // The Explanation rows: the three with a live latent and a text, by latent then
    // explainer, every line with exactly the Explanation columns.
    assert_eq!(settings["explanations"], 3);
    assert_eq!(settings["explanations_left_out"], 2);
    assert!(stdout(&o).contains("3 explanations"), "{}", stdout(&o));
    let rows: Vec<serde_json::Value> = read_gz(&bulk.join("explanations/batch-0.jsonl.gz"))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3);
    let columns = [
        "id",
        "modelId",
        "layer",
        "index",
        "description",
        "authorId",
        "typeName",
        "explanationModelName",
        "embedding",
        "notes",
        "triggeredByUserId",
        "createdAt",
    ];
    for r in &rows {
        let mut keys: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut want = columns;
        want.sort_unstable();
        assert_eq!(keys, want, "{r}");
        assert_eq!(r["modelId"], MODEL_ID);
        assert_eq!(r["layer"], "2-saelab-res-576");
        assert_eq!(r["embedding"], serde_json::Value::Null);
        assert_eq!(r["authorId"], row["creatorId"]);
        assert_eq!(r["triggeredByUserId"], row["creatorId"]);
        assert_eq!(r["createdAt"], row["createdAt"]);
    }
    let got: Vec<(&str, &str, &str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["index"].as_str().unwrap(),
                r["typeName"].as_str().unwrap(),
                r["explanationModelName"].as_str().unwrap(),
                r["description"].as_str().unwrap(),
            )
        })
        .collect();
    let (l0, l1) = (live[0].to_string(), live[1].to_string());
    assert_eq!(
        got,
        [
            (
                l0.as_str(),
                "saelab_llm",
                "local:explainer.gguf#0123abcd",
                "Whales."
            ),
            (
                l0.as_str(),
                "saelab_token-set",
                "saelab-token-set",
                "\" whale\", \" sea\""
            ),
            (
                l1.as_str(),
                "saelab_token-set",
                "saelab-token-set",
                "\" ship\""
            ),
        ]
    );
    assert_eq!(rows[0]["notes"], serde_json::Value::Null);
    assert_eq!(
        rows[1]["notes"],
        "embedding auroc 0.612 (shuffled 0.480, baseline 0.500); \
         surprisal auroc — (shuffled 0.500, baseline 0.500, 2 failed)"
    );
    let ids: std::collections::BTreeSet<&str> =
        rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 3);

    // The checker passes on the export.
    let Some(o) = checker(&out) else { return };
    let said = text(&o);
    assert!(
        o.status.success(),
        "the checker failed on the export:\n{said}"
    );
    assert!(said.starts_with("ok: "), "{said}");
    assert!(said.contains(" 3 explanations"), "{said}");
    eprintln!("{said}");

    // One histogram height off by one in the batch JSON: caught.
    let bad = t("np-height");
    copy_dir(&out, &bad);
    let mut b = read_json(&bad.join("batch-0.json"));
    let h = &mut b["features"][0]["freq_hist_data_bar_heights"][0];
    *h = (h.as_u64().unwrap() + 1).into();
    std::fs::write(bad.join("batch-0.json"), serde_json::to_vec(&b).unwrap()).unwrap();
    let o = checker(&bad).unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("sum of freq heights"), "{}", text(&o));

    // One Activation row's maxValue changed, and a key dropped from another: caught.
    let bad = t("np-rows");
    copy_dir(&out, &bad);
    let path = bad
        .join(MODEL_ID)
        .join("2-saelab-res-576/activations/batch-0.jsonl.gz");
    let mut lines: Vec<serde_json::Value> = read_gz(&path)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mv = lines[0]["maxValue"].as_f64().unwrap();
    lines[0]["maxValue"] = (mv + 0.5).into();
    lines[1].as_object_mut().unwrap().remove("lossValues");
    let s: String = lines.iter().map(|l| format!("{l}\n")).collect();
    write_gz(&path, &s);
    let o = checker(&bad).unwrap();
    let said = text(&o);
    assert!(!o.status.success(), "{said}");
    assert!(said.contains("maxValue"), "{said}");
    assert!(said.contains("keys differ from line 1"), "{said}");

    // Explanation rows of a latent without a Neuron row, with an empty description,
    // and with a key dropped: each caught.
    let bad = t("np-explanations");
    copy_dir(&out, &bad);
    let path = bad
        .join(MODEL_ID)
        .join("2-saelab-res-576/explanations/batch-0.jsonl.gz");
    let mut lines: Vec<serde_json::Value> = read_gz(&path)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    lines[0]["index"] = DEAD.to_string().into();
    lines[1]["description"] = "".into();
    lines[2].as_object_mut().unwrap().remove("notes");
    let s: String = lines.iter().map(|l| format!("{l}\n")).collect();
    write_gz(&path, &s);
    let o = checker(&bad).unwrap();
    let said = text(&o);
    assert!(!o.status.success(), "{said}");
    assert!(
        said.contains(&format!(
            "explanation of latent {DEAD}, which has no Neuron row"
        )),
        "{said}"
    );
    assert!(said.contains("description '' empty"), "{said}");
    assert!(said.contains("keys differ from line 1"), "{said}");

    // Without explanations.json: no Explanation rows, no explanations/ folder.
    std::fs::remove_file(feat.join("explanations.json")).unwrap();
    let none = t("np-none");
    saelab_ok(&[
        "export-neuronpedia",
        "--features",
        p(&feat),
        "--sae",
        p(&sae_dir),
        "--out",
        p(&none),
        "--model-id",
        MODEL_ID,
    ]);
    assert!(!none
        .join(MODEL_ID)
        .join("2-saelab-res-576/explanations")
        .exists());
    assert_eq!(
        read_json(&none.join("run_settings.json"))["explanations"],
        0
    );
    let o = checker(&none).unwrap();
    assert!(o.status.success(), "{}", text(&o));

    // A folder made from another SAE (the trained one, latent 5 not switched off):
    // refused, naming features.json; nothing is written.
    let out2 = t("np-other");
    let args = |sae: &Path, out: &Path| {
        [
            "export-neuronpedia",
            "--features",
            p(&feat),
            "--sae",
            p(sae),
            "--out",
            p(out),
            "--model-id",
            MODEL_ID,
        ]
        .map(String::from)
    };
    let a = args(&run, &out2);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    saelab_fails(&a, &["features.json", "another SAE"]);
    assert!(!out2.exists());

    // An output folder that is not an earlier export: refused, left alone.
    let a = args(&sae_dir, &corpus);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    saelab_fails(&a, &["corpus", "not an earlier saelab Neuronpedia export"]);
    assert!(corpus.join("01.txt").is_file());
}
