//! The steering job on the real SmolLM2 model (skips without the data, fails under CI),
//! with TopK SAEs of tied random weights saved to disk (the job's behaviour does not
//! depend on training): steered and unsteered continuations share the seed, several
//! SAEs at different hooks steer at once, the measures are computed, and bad input is a
//! one-line error naming what is wrong.

use std::path::Path;

use saelab_core::config::SaeMetadata;
use saelab_core::format::save_sae;
use saelab_core::{ArchConfig, ParamSet, Sae, SaeConfig, Tensor};
use saelab_jobs::steer::{
    ConceptSet, EditSpec, InterventionSpec, PromptRequest, SteerSae, Steerer,
};
use saelab_lm::generate::GenerateOptions;
use saelab_steer::{Mode, Positions, Strength};
use saelab_testkit::{real_data, serial, tied_random_weights};

fn random_sae(dir: &Path, d: usize, n: usize, hook: &str) {
    let (we, wd) = tied_random_weights(d, n, 9, 1.0);
    let mut cfg = SaeConfig::new(ArchConfig::default_for("topk", 16).unwrap(), d, n);
    cfg.metadata = SaeMetadata {
        hook_name: Some(hook.into()),
        ..SaeMetadata::default()
    };
    let mut p = ParamSet::new();
    p.insert("W_enc", Tensor::new(&[d, n], we).unwrap());
    p.insert("b_enc", Tensor::new(&[n], vec![0.0; n]).unwrap());
    p.insert("W_dec", Tensor::new(&[n, d], wd).unwrap());
    p.insert("b_dec", Tensor::new(&[d], vec![0.0; d]).unwrap());
    save_sae(&Sae::new(cfg, p).unwrap(), dir, None).unwrap();
}

fn request(text: &str, n: usize) -> PromptRequest {
    PromptRequest {
        text: text.into(),
        chat: false,
        gen: GenerateOptions {
            max_new_tokens: n,
            temperature: 0.7,
            seed: 5,
            ..GenerateOptions::default()
        },
    }
}

fn add(latent: usize, s: &str) -> EditSpec {
    EditSpec {
        latent,
        mode: Mode::Add,
        strength: Some(s.parse().unwrap()),
    }
}

#[test]
fn steering_runs_from_the_same_seed_and_is_measured() {
    let Some(data) = real_data() else { return };
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    random_sae(&a, 576, 1152, "blocks.6.hook_resid_post");
    random_sae(&b, 576, 1152, "blocks.12.hook_resid_post");
    let st = Steerer::load(&data.model, &mut |_| {}).unwrap();
    let saes = vec![
        SteerSae::load(&a, None, None, &st).unwrap(),
        SteerSae::load(&b, None, None, &st).unwrap(),
    ];
    assert!(saes[0].features.is_none());
    let req = request("The weather today is", 12);
    let specs = vec![
        InterventionSpec {
            sae: 0,
            positions: Positions::All,
            edits: vec![add(3, "raw:120"), add(40, "raw:60")],
        },
        InterventionSpec {
            sae: 1,
            positions: Positions::Prompt,
            edits: vec![EditSpec {
                latent: 7,
                mode: Mode::Clamp,
                strength: Some(Strength::Raw(80.0)),
            }],
        },
    ];
    let out = st.steer(&saes, &specs, &req, true).unwrap();
    // The unsteered side is exactly a plain generation with the same seed.
    assert_eq!(out.unsteered, st.generate(&req).unwrap());
    assert_ne!(
        out.steered.tokens, out.unsteered.tokens,
        "steering changed nothing"
    );
    assert_eq!(out.edits.len(), 3);
    assert_eq!(out.edits[2].hook, "blocks.12.hook_resid_post");
    assert_eq!(out.edits[2].positions, "prompt");
    assert_eq!(out.effects.len(), 3);
    for e in &out.effects {
        for m in [&e.steered, &e.unsteered] {
            assert!((0.0..=1.0).contains(&m.concept_share));
            assert!(m.perplexity >= 1.0 && m.perplexity.is_finite(), "{m:?}");
            assert!(m.tokens > 0);
        }
        assert_eq!(
            e.concept_tokens, 20,
            "20 logit-lens tokens, no features folder"
        );
    }
    // Without a features folder the concept set is the logit lens alone.
    let both = saes[0].concept_tokens(&st.model, 3).unwrap();
    assert_eq!(both.len(), 20);
    assert_eq!(
        saes[0].concept_set(&st.model, 3, ConceptSet::Lens).unwrap(),
        both
    );
    assert!(saes[0]
        .concept_set(&st.model, 3, ConceptSet::Examples)
        .unwrap()
        .is_empty());
    assert_eq!("examples".parse::<ConceptSet>(), Ok(ConceptSet::Examples));
    assert!("top"
        .parse::<ConceptSet>()
        .unwrap_err()
        .contains("both, examples or lens"));
    // Same request, same output: nothing in the job is unseeded.
    assert_eq!(
        st.steer(&saes, &specs, &req, false).unwrap().steered,
        out.steered
    );
}

#[test]
fn bad_steering_input_is_a_one_line_error() {
    let Some(data) = real_data() else { return };
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let (a, small) = (tmp.path().join("a"), tmp.path().join("small"));
    random_sae(&a, 576, 1152, "blocks.6.hook_resid_post");
    random_sae(&small, 64, 128, "blocks.6.hook_resid_post");
    let st = Steerer::load(&data.model, &mut |_| {}).unwrap();
    let saes = vec![SteerSae::load(&a, None, None, &st).unwrap()];
    let run = |edits: Vec<EditSpec>, req: &PromptRequest| {
        let spec = InterventionSpec {
            sae: 0,
            positions: Positions::All,
            edits,
        };
        st.steer(&saes, &[spec], req, false)
            .unwrap_err()
            .to_string()
    };
    let req = request("Hello", 4);
    let one_line = |e: &str, needles: &[&str]| {
        assert!(!e.contains('\n'), "{e}");
        for n in needles {
            assert!(e.contains(n), "{e:?} lacks {n:?}");
        }
    };
    one_line(
        &run(vec![add(1152, "raw:1")], &req),
        &["latent 1152 is out of range", "1152 latents"],
    );
    one_line(&run(vec![add(3, "4x")], &req), &["saelab features", "raw:"]);
    one_line(
        &"NaNx".parse::<Strength>().unwrap_err().to_string(),
        &["'NaNx'", "finite number"],
    );
    let long = "whale ".repeat(9000);
    one_line(
        &run(vec![add(3, "raw:1")], &request(&long, 4)),
        &["context"],
    );
    one_line(
        &run(vec![add(3, "raw:1")], &request("  ", 4)),
        &["prompt is empty"],
    );
    let e = SteerSae::load(&small, None, None, &st)
        .unwrap_err()
        .to_string();
    one_line(&e, &["cfg.json", "d_in = 64", "576 wide"]);
    let e = st.steer(&saes, &[], &req, false).unwrap_err().to_string();
    one_line(&e, &["at least one edit"]);
}
