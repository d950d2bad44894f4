//! `saelab generate`, `saelab steer` and `saelab steer-eval` end to end on the real
//! SmolLM2 model and corpus (skipped with a message without them, failing under CI),
//! with a TopK SAE of tied random weights and a features pass over a few thousand
//! tokens: the commands run and print what they should, the study writes its files
//! with every part filled, and bad input is a one-line error.

use std::path::{Path, PathBuf};

mod common;

use common::{copy_collection, random_sae, read_json, saelab_fails, saelab_ok};
use saelab_testkit::cli::{p, stdout};
use saelab_testkit::{real_data, serial};

const HOOK: &str = "blocks.2.hook_resid_post";

/// A corpus of 24 Moby-Dick chapters and 24 State of the Union addresses, in folders
/// `moby/` and `sotu/` (documents 19 and 39 are held out).
fn corpus(data: &saelab_testkit::RealData, dir: &Path) {
    copy_collection(data, "moby", "chapter_", 24, &dir.join("moby"));
    copy_collection(data, "sotu", "", 24, &dir.join("sotu"));
}

#[test]
fn generate_steer_and_the_study_run_and_refuse_bad_input() {
    let Some(data) = real_data() else { return };
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let t = |name: &str| -> PathBuf { tmp.path().join(name) };
    let model = p(&data.model);
    let corp = t("corpus");
    corpus(&data, &corp);
    let run = t("run");
    random_sae(&run.join("sae"), 576, 256, HOOK);
    saelab_ok(&[
        "features",
        "--sae",
        p(&run),
        "--model",
        model,
        "--corpus",
        p(&corp),
        "--tokens",
        "2000",
        "--ctx-len",
        "64",
        "--range",
        "256",
        "--out",
        p(&run.join("features")),
    ]);

    let o = saelab_ok(&[
        "generate",
        "--model",
        model,
        "--prompt",
        "The sea was",
        "--max-new-tokens",
        "6",
        "--json",
    ]);
    let g: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(g["tokens"].as_array().unwrap().len(), 6, "{g}");
    assert_eq!(g["finish"], "length");

    let steer = |extra: &[&str]| {
        let mut args = vec![
            "steer",
            "--model",
            model,
            "--sae",
            p(&run),
            "--prompt",
            "I think that",
            "--max-new-tokens",
            "6",
        ];
        args.extend_from_slice(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run_steer = |extra: &[&str]| {
        let a = steer(extra);
        saelab_ok(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let o = run_steer(&["--latent", "7", "--strength", "8x", "--measure"]);
    let text = stdout(&o);
    for needle in ["--- unsteered", "--- steered", "concept share", "Add("] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    let o = run_steer(&[
        "--latent",
        "7",
        "--latent",
        "9",
        "--strength",
        "8x",
        "--json",
    ]);
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["edits"].as_array().unwrap().len(), 2);
    assert_ne!(j["steered"]["tokens"], j["unsteered"]["tokens"], "{j}");

    // Several SAEs through a plan.
    let plan = t("plan.toml");
    std::fs::write(
        &plan,
        format!(
            "[[sae]]\npath = {:?}\n[[sae]]\npath = {:?}\nhook = \"blocks.4.hook_resid_post\"\n\n\
             [[intervention]]\nsae = 0\nedits = [{{ latent = 7, mode = \"add\", strength = \"4x\" }}]\n\n\
             [[intervention]]\nsae = 1\npositions = \"prompt\"\n\
             edits = [{{ latent = 3, mode = \"clamp\", strength = \"raw:50\" }}]\n",
            p(&run),
            p(&run)
        ),
    )
    .unwrap();
    let o = saelab_ok(&[
        "steer",
        "--model",
        model,
        "--prompt",
        "I think that",
        "--max-new-tokens",
        "4",
        "--plan",
        p(&plan),
        "--json",
    ]);
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["edits"][1]["hook"], "blocks.4.hook_resid_post", "{j}");

    // Bad input: one line each.
    let fails = |extra: &[&str], needles: &[&str]| {
        let a = steer(extra);
        saelab_fails(&a.iter().map(String::as_str).collect::<Vec<_>>(), needles);
    };
    fails(
        &["--latent", "256", "--strength", "1x"],
        &["latent 256 is out of range", "256 latents"],
    );
    fails(
        &["--latent", "7", "--strength", "NaNx"],
        &["'NaNx'", "finite number"],
    );
    fails(
        &["--latent", "7", "--mode", "steer", "--strength", "1"],
        &["mode 'steer'", "clamp-min"],
    );
    fails(
        &["--latent", "7", "--positions", "first", "--strength", "1"],
        &["positions 'first'"],
    );
    let long = "whale ".repeat(9000);
    saelab_fails(
        &[
            "steer",
            "--model",
            model,
            "--sae",
            p(&run),
            "--prompt",
            &long,
            "--latent",
            "7",
            "--strength",
            "1",
        ],
        &["context"],
    );
    let small = t("small");
    random_sae(&small, 64, 32, HOOK);
    saelab_fails(
        &[
            "steer",
            "--model",
            model,
            "--sae",
            p(&small),
            "--prompt",
            "Hi",
            "--latent",
            "1",
            "--strength",
            "1",
        ],
        &["cfg.json", "d_in = 64", "576 wide"],
    );

    // The study, at a tiny scale: every part filled.
    let prompts = t("prompts.txt");
    std::fs::write(&prompts, "I think that\nThe best way to\n").unwrap();
    let out = t("study");
    saelab_ok(&[
        "steer-eval",
        "--model",
        model,
        "--sae",
        p(&run),
        "--corpus",
        p(&corp),
        "--out",
        p(&out),
        "--latent",
        "7",
        "--alphas",
        "0,4",
        "--prompts",
        p(&prompts),
        "--max-new-tokens",
        "4",
        "--heldout-contexts",
        "2",
        "--selection-latents",
        "4",
        "--selection-prompts",
        "1",
        "--unlearn-latents",
        "2",
        "--clamps",
        "1",
        "--train-contexts",
        "4",
    ]);
    let s = read_json(&out.join("steer-eval.json"));
    let dose = &s["dose"][0];
    assert_eq!(dose["latent"], 7);
    assert_eq!(dose["rows"].as_array().unwrap().len(), 1);
    assert_eq!(dose["verdict"]["prompts"], 2);
    assert!(dose["rows"][0]["delta_ce"].as_f64().unwrap().is_finite());
    assert_eq!(s["selection"]["latents"].as_array().unwrap().len(), 4);
    let u = &s["unlearning"];
    assert_eq!(u["selected"].as_array().unwrap().len(), 2, "{u}");
    assert_eq!(u["rows"].as_array().unwrap().len(), 1);
    assert!(u["rows"][0]["target_delta_ce"]
        .as_f64()
        .unwrap()
        .is_finite());
    let md = std::fs::read_to_string(out.join("steer-eval.md")).unwrap();
    assert!(
        md.contains("## Unlearning 'moby'") && md.contains("## Latent 7"),
        "{md}"
    );
}
