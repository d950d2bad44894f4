//! The surprisal scorer's losses, computed with the prefix run once into a KV cache,
//! against the same sequences run whole through the real SmolLM2 model.

use saelab_interp::score::surprisal::SurprisalScorer;
use saelab_lm::model::{ForwardOptions, HookedModel};
use saelab_lm::tokenizer::Tokenizer;

#[test]
fn cached_prefix_losses_equal_whole_sequence_losses() {
    let Some(data) = saelab_testkit::real_data() else {
        return;
    };
    let model = HookedModel::load(&data.model).unwrap();
    let tok = Tokenizer::from_gguf(&data.model).unwrap();
    let scorer = SurprisalScorer::new(&model, &tok);
    let prefix =
        "The following sentences are examples of text where this appears: numbers\nSentences:\n";
    let texts = [
        "In 1862 the Congress passed the Homestead Act.",
        "whale",
        "",
        "The sea was calm, and the ship rode at anchor for three days while the crew mended sails.",
    ];
    let excerpts: Vec<Vec<u32>> = texts.iter().map(|t| tok.encode(t).unwrap()).collect();
    let got = scorer.losses(prefix, &excerpts).unwrap();

    let mut head = vec![tok.bos_id().or(model.bos_token_id()).unwrap()];
    head.extend(tok.encode(prefix).unwrap());
    for (i, e) in excerpts.iter().enumerate() {
        if e.is_empty() {
            assert!(got[i].is_nan(), "an empty excerpt has no loss");
            continue;
        }
        let seq = [head.as_slice(), e].concat();
        let out = model
            .forward(&[&seq], &ForwardOptions::new().loss(true))
            .unwrap();
        let loss = out.loss.unwrap();
        let p = head.len();
        let want = loss.data[p - 1..p - 1 + e.len()]
            .iter()
            .map(|&v| v as f64)
            .sum::<f64>()
            / e.len() as f64;
        assert!(
            (got[i] - want).abs() < 1e-4 && want > 0.5,
            "excerpt {i}: cached {} whole {want}",
            got[i]
        );
    }
}
