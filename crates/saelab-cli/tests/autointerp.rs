//! `saelab autointerp` end to end on the real SmolLM2 and corpus (skipped with a
//! message without them, failing under CI): a features pass of a random TopK SAE over
//! 8 192 tokens, then token-set explanations scored by the embedding and surprisal
//! scorers against the shuffled control, in delphi's layout; the LLM-judged detection
//! scorer against `saelab serve --llm` (real completions of SmolLM2, whose malformed
//! answers are counted failures while the run goes on); a rerun that finds every file
//! and does nothing; the means recomputed from the score files by a standard-library
//! Python script (`scripts/check_delphi_scores.py`); and the refusals before any work.

use std::path::Path;

mod common;

use common::{copy_collection, random_sae, read_json, saelab_fails, saelab_ok, start_llm_server};
use saelab_testkit::cli::{p, stdout};
use saelab_testkit::{real_data, serial};

const HOOK: &str = "blocks.6.hook_resid_post";

#[test]
fn token_set_and_llm_judged_runs_write_delphis_layout_and_resume() {
    let Some(data) = real_data() else { return };
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    random_sae(&run.join("sae"), 576, 256, HOOK);
    let model = p(&data.model);
    // 12 State of the Union addresses.
    let corp = tmp.path().join("corpus");
    copy_collection(&data, "sotu", "", 12, &corp);
    let features = run.join("features");
    saelab_ok(&[
        "features",
        "--sae",
        p(&run),
        "--model",
        model,
        "--corpus",
        p(&corp),
        "--tokens",
        "8192",
        "--ctx-len",
        "128",
        "--out",
        p(&features),
    ]);

    // Token sets, embedding and surprisal, two latents.
    let out = tmp.path().join("ai");
    let args = [
        "autointerp",
        "--features",
        p(&features),
        "--out",
        p(&out),
        "--random",
        "2",
        "--embedder",
        p(&data.embedder),
        "--scorers",
        "embedding,surprisal",
    ];
    let o = saelab_ok(&args);
    let text = stdout(&o);
    assert!(text.contains("| embedding | auroc | 2 |"), "{text}");
    assert!(text.contains("| surprisal | auroc | 2 |"), "{text}");
    let summary = read_json(&out.join("summary.json"));
    assert_eq!(summary["explained"], 2, "{summary}");
    let latents: Vec<u64> = summary["scorers"][0]["per_latent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_u64().unwrap())
        .collect();
    for &l in &latents {
        let e = out.join(format!("explanations/{HOOK}_latent{l}.txt"));
        let expl: String = serde_json::from_slice(&std::fs::read(&e).unwrap()).unwrap();
        assert!(!expl.is_empty());
        for scorer in ["embedding", "surprisal"] {
            let f = out.join(format!("scores/{scorer}/{HOOK}_latent{l}.txt"));
            let items: Vec<serde_json::Value> =
                serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
            // 50 test examples (5 per quantile) and 50 non-activating ones.
            assert_eq!(items.len(), 100, "{}", f.display());
            for key in [
                "str_tokens",
                "activations",
                "distance",
                "activating",
                "prediction",
                "probability",
                "correct",
            ] {
                assert!(
                    items[0].get(key).is_some(),
                    "{key} missing in {}",
                    f.display()
                );
            }
            assert!(out
                .join(format!("shuffled/scores/{scorer}/{HOOK}_latent{l}.txt"))
                .is_file());
        }
        // The control used another latent's explanation.
        let c = out.join(format!("shuffled/explanations/{HOOK}_latent{l}.txt"));
        let ctrl: String = serde_json::from_slice(&std::fs::read(&c).unwrap()).unwrap();
        let other = latents.iter().find(|&&m| m != l).unwrap();
        let theirs: String = serde_json::from_slice(
            &std::fs::read(out.join(format!("explanations/{HOOK}_latent{other}.txt"))).unwrap(),
        )
        .unwrap();
        assert_eq!(ctrl, theirs);
    }
    // The features folder keeps each explanation with its scores, as the summary has
    // them.
    let store = saelab_features::explanations::read_explanations(&features).unwrap();
    assert_eq!(store.len(), 2, "{store:?}");
    for (s, scorer) in ["embedding", "surprisal"].iter().enumerate() {
        for row in summary["scorers"][s]["per_latent"].as_array().unwrap() {
            let l = row[0].as_u64().unwrap() as u32;
            let rec = store.iter().find(|r| r.latent == l).unwrap();
            assert_eq!(rec.explainer, "token-set");
            let sc = rec.scores.iter().find(|x| x.scorer == *scorer).unwrap();
            assert_eq!(sc.metric, "auroc");
            assert_eq!(sc.value, row[1].as_f64());
            assert_eq!(sc.shuffled, row[2].as_f64());
        }
    }
    // A rerun finds every file: nothing is recomputed, the summary is the same.
    let before =
        std::fs::read(out.join(format!("scores/surprisal/{HOOK}_latent{}.txt", latents[0])))
            .unwrap();
    let t = std::time::Instant::now();
    let again = saelab_ok(&args);
    assert_eq!(
        read_json(&out.join("summary.json"))["scorers"],
        summary["scorers"],
        "{}",
        stdout(&again)
    );
    assert_eq!(
        std::fs::read(out.join(format!("scores/surprisal/{HOOK}_latent{}.txt", latents[0])))
            .unwrap(),
        before
    );
    eprintln!("rerun: {:.1} s", t.elapsed().as_secs_f64());
    // delphi's field names, read by a standard-library Python script, give the same
    // means.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/check_delphi_scores.py");
    let check = std::process::Command::new("python3")
        .arg(&script)
        .arg(&out)
        .arg("--control")
        .output()
        .expect("run python3");
    let said = String::from_utf8_lossy(&check.stdout);
    eprintln!("{said}");
    assert!(
        check.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert_eq!(said.matches(" ok").count(), 4, "{said}");

    // Hard negatives: with --neighbours, non-activating examples come from windows
    // where the latent's nearest latents fire.
    let hard = tmp.path().join("hard");
    saelab_ok(&[
        "autointerp",
        "--features",
        p(&features),
        "--out",
        p(&hard),
        "--latents",
        &latents[0].to_string(),
        "--embedder",
        p(&data.embedder),
        "--scorers",
        "embedding",
        "--neighbours",
        "5",
    ]);
    let na = &read_json(&hard.join("summary.json"))["non_activating"];
    assert_eq!(na[0], 50, "{na}");
    assert!(na[1].as_u64().unwrap() > 0, "{na}");

    // Detection judged by SmolLM2 behind `saelab serve --llm`: real completions, one
    // latent; SmolLM2-135M rarely writes a well-formed list, and whatever it writes is
    // parsed or counted as a failure.
    let server = start_llm_server(&data.model);
    let judged = tmp.path().join("judged");
    let base = format!("http://{}/v1", server.addr);
    let o = saelab_ok(&[
        "autointerp",
        "--features",
        p(&features),
        "--out",
        p(&judged),
        "--latents",
        &latents[0].to_string(),
        "--scorers",
        "detection",
        "--llm-base-url",
        &base,
        "--llm-model",
        "smollm2",
        "--llm-key-optional",
        "--per-prompt",
        "10",
    ]);
    let s = read_json(&judged.join("summary.json"));
    let det = &s["scorers"][0];
    eprintln!("{}", stdout(&o));
    let items: Vec<serde_json::Value> = serde_json::from_slice(
        &std::fs::read(judged.join(format!("scores/detection/{HOOK}_latent{}.txt", latents[0])))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(items.len(), 100);
    let answered = items.iter().filter(|i| !i["prediction"].is_null()).count();
    assert_eq!(
        det["failed_items"].as_u64().unwrap() as usize,
        (100 - answered) + count_unanswered(&judged, latents[0]),
        "{s}"
    );
    let cached = std::fs::read_dir(judged.join("llm-cache")).unwrap().count();
    assert!(cached >= 2, "{cached} replies cached");
    drop(server);

    // Simulation by the local SmolLM2 (teacher forcing, no server): every excerpt's
    // reply tokenises to one placeholder per token, so none fails; the correlation is
    // a number (SmolLM2 predicts little).
    let simulated = tmp.path().join("simulated");
    saelab_ok(&[
        "autointerp",
        "--features",
        p(&features),
        "--out",
        p(&simulated),
        "--latents",
        &latents[0].to_string(),
        "--scorers",
        "simulation",
        "--explainer-model",
        p(&data.model),
        "--test-per-quantile",
        "1",
        "--non-activating",
        "5",
    ]);
    let sim =
        read_json(&simulated.join(format!("scores/simulation/{HOOK}_latent{}.txt", latents[0])));
    assert_eq!(
        sim["items"].as_array().unwrap().len(),
        15,
        "10 activating + 5 not"
    );
    assert_eq!(sim["failed"], 0, "{}", sim["no_digit"]);
    let row = &read_json(&simulated.join("summary.json"))["scorers"][0];
    assert_eq!(
        (row["metric"].as_str(), row["latents"].as_u64()),
        (Some("correlation"), Some(1))
    );
    // An endpoint cannot score a given reply: refused before any work.
    saelab_fails(
        &[
            "autointerp",
            "--features",
            p(&features),
            "--out",
            p(&tmp.path().join("x")),
            "--random",
            "1",
            "--scorers",
            "simulation",
            "--llm-base-url",
            "http://127.0.0.1:9/v1",
            "--llm-model",
            "m",
            "--llm-key-optional",
        ],
        &["simulation scorer", "local model"],
    );

    // Refusals before any work: an LLM scorer without an LLM, an unknown scorer, an
    // unreachable endpoint counted (the run goes on).
    saelab_fails(
        &[
            "autointerp",
            "--features",
            p(&features),
            "--out",
            p(&tmp.path().join("x")),
            "--random",
            "1",
            "--scorers",
            "fuzz",
        ],
        &["need an LLM"],
    );
    saelab_fails(
        &[
            "autointerp",
            "--features",
            p(&features),
            "--out",
            p(&tmp.path().join("x")),
            "--random",
            "1",
            "--scorers",
            "vibes",
        ],
        &["unknown scorer"],
    );
    let dead = tmp.path().join("dead");
    let o = saelab_ok(&[
        "autointerp",
        "--features",
        p(&features),
        "--out",
        p(&dead),
        "--latents",
        &latents[0].to_string(),
        "--scorers",
        "detection",
        "--llm-base-url",
        "http://127.0.0.1:9/v1",
        "--llm-model",
        "m",
        "--llm-key-optional",
        "--llm-retries",
        "0",
        "--llm-timeout",
        "2",
    ]);
    let s = read_json(&dead.join("summary.json"));
    assert_eq!(s["scorers"][0]["failed_items"], 200, "{}", stdout(&o));
}

/// Items of the shuffled control without a prediction.
fn count_unanswered(out: &Path, latent: u64) -> usize {
    let items: Vec<serde_json::Value> = serde_json::from_slice(
        &std::fs::read(out.join(format!(
            "shuffled/scores/detection/{HOOK}_latent{latent}.txt"
        )))
        .unwrap(),
    )
    .unwrap();
    items.iter().filter(|i| i["prediction"].is_null()).count()
}
