//! The encode job on the real SmolLM2 model (skips without the data, fails under CI):
//! with an SAE whose latents are `relu(x)` and `relu(−x)` of the hook's activation
//! (`W_enc = [I, −I]`), the latents `encode_text` returns at each token are those of the
//! model's own forward at that position (BOS first and left out); an empty text, a text
//! longer than the model's context and an SAE of another width are one-line errors.

use saelab_core::config::SaeMetadata;
use saelab_core::format::save_sae;
use saelab_core::{ArchConfig, ParamSet, Sae, SaeConfig, Tensor};
use saelab_jobs::encode::{encode_text, EncodeRequest};
use saelab_lm::model::{ForwardOptions, HookedModel};
use saelab_lm::tokenizer::Tokenizer;
use saelab_testkit::{identity_relu_weights, real_data, serial};

const HOOK: &str = "blocks.2.hook_resid_post";

fn identity_sae(d: usize) -> Sae {
    let (we, wd) = identity_relu_weights(d);
    let mut cfg = SaeConfig::new(ArchConfig::default_for("relu", 0).unwrap(), d, 2 * d);
    cfg.metadata = SaeMetadata {
        hook_name: Some(HOOK.into()),
        ..SaeMetadata::default()
    };
    let mut p = ParamSet::new();
    p.insert("W_enc", Tensor::new(&[d, 2 * d], we).unwrap());
    p.insert("b_enc", Tensor::new(&[2 * d], vec![0.0; 2 * d]).unwrap());
    p.insert("W_dec", Tensor::new(&[2 * d, d], wd).unwrap());
    p.insert("b_dec", Tensor::new(&[d], vec![0.0; d]).unwrap());
    Sae::new(cfg, p).unwrap()
}

#[test]
fn latents_are_the_models_activations_through_the_sae() {
    let Some(data) = real_data() else { return };
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let d = 576;
    let dir = tmp.path().join("sae");
    save_sae(&identity_sae(d), &dir, None).unwrap();
    let text = "The whale rose from the sea.";
    let req = EncodeRequest {
        sae: dir.clone(),
        model: data.model.clone(),
        text: text.into(),
        hook: None,
    };
    let e = encode_text(&req, &mut |_| {}).unwrap();
    let model = HookedModel::load(&data.model).unwrap();
    let tok = Tokenizer::from_path(&data.model).unwrap();
    let mut ids = vec![tok.bos_id().unwrap()];
    ids.extend(tok.encode(text).unwrap());
    assert_eq!(e.ids, ids[1..]);
    assert_eq!(e.hook, HOOK);
    let fwd = model
        .forward(&[ids.as_slice()], &ForwardOptions::new().capture(HOOK))
        .unwrap();
    let x = fwd.capture(HOOK).unwrap().as_slice();
    assert_eq!((e.latents.rows, e.latents.cols), (ids.len() - 1, 2 * d));
    for t in 1..ids.len() {
        let row = e.latents.row(t - 1);
        for i in 0..d {
            let v = x[t * d + i];
            assert_eq!(
                (row[i], row[d + i]),
                (v.max(0.0), (-v).max(0.0)),
                "token {t}, dim {i}"
            );
        }
    }
    assert_eq!(e.texts.len(), e.ids.len());

    let err = |text: String, sae: &std::path::Path| {
        let r = EncodeRequest {
            sae: sae.to_path_buf(),
            model: data.model.clone(),
            text,
            hook: None,
        };
        encode_text(&r, &mut |_| {}).unwrap_err().to_string()
    };
    let e = err(String::new(), &dir);
    assert!(e.contains("empty") && !e.contains('\n'), "{e}");
    let e = err("whale ".repeat(9000), &dir);
    assert!(e.contains("reads at most") && !e.contains('\n'), "{e}");
    let narrow = tmp.path().join("narrow");
    let mut small = identity_sae(64);
    small.cfg.metadata.hook_name = Some(HOOK.into());
    save_sae(&small, &narrow, None).unwrap();
    let e = err(text.into(), &narrow);
    assert!(
        e.contains("narrow/cfg.json") && e.contains("d_in = 64") && !e.contains('\n'),
        "{e}"
    );
}
