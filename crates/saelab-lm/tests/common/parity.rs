//! saelab's last-position logits against a reference implementation of the same model.

use candle_core::{Device, Tensor};
use saelab_lm::model::{ForwardOptions, HookedModel, Logits};
use saelab_lm::tokenizer::Tokenizer;

use super::compare::{argmax, max_abs_diff};

/// For every prompt, saelab's last-position logits and `reference`'s (given the prompt
/// as a `[1, T]` tensor of ids, its own cache cleared, returning the last position's
/// logits) have the same argmax, and differ by at most 1e-3 anywhere. Prints each
/// prompt's difference and the worst.
pub fn assert_last_logits_match(
    model: &HookedModel,
    tok: &Tokenizer,
    prompts: &[Vec<u32>],
    mut reference: impl FnMut(&Tensor) -> Tensor,
) {
    let mut worst = 0f32;
    for p in prompts {
        let ours = model
            .forward(&[p], &ForwardOptions::new().logits(Logits::Last))
            .unwrap()
            .logits
            .unwrap();
        let ids = Tensor::new(p.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let theirs: Vec<f32> = reference(&ids).flatten_all().unwrap().to_vec1().unwrap();
        let diff = max_abs_diff(ours.as_slice(), &theirs);
        let scale = theirs.iter().fold(0f32, |m, v| m.max(v.abs()));
        eprintln!(
            "prompt of {} tokens: last position max |Δlogit| = {diff:.2e} (max |logit| \
             {scale:.1}), argmax {} {:?}",
            p.len(),
            argmax(&theirs),
            tok.token_str(argmax(&theirs) as u32).unwrap_or_default()
        );
        assert_eq!(argmax(ours.as_slice()), argmax(&theirs));
        worst = worst.max(diff);
    }
    eprintln!(
        "worst last-position max |Δlogit| over {} prompts: {worst:.2e}",
        prompts.len()
    );
    assert!(
        worst <= 1e-3,
        "last-position logit difference {worst} > 1e-3"
    );
}
