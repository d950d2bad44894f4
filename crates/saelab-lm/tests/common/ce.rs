//! Next-token cross-entropy of a model on held-out text, as the family tests measure it.

use saelab_lm::model::{ForwardOptions, HookedModel};
use saelab_lm::tokenizer::Tokenizer;

/// The mean next-token loss (nats) of 8 windows of 256 tokens, each `sep` followed by
/// positions 256..511 of a held-out document of at least 512 tokens (from inside the
/// documents, so no window starts at a title), and each window's mean.
pub fn held_out_window_ce(
    model: &HookedModel,
    tok: &Tokenizer,
    texts: &[String],
    sep: u32,
) -> (f64, Vec<f64>) {
    let batch: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| tok.encode(t).unwrap())
        .filter(|ids| ids.len() >= 512)
        .take(8)
        .map(|ids| {
            std::iter::once(sep)
                .chain(ids[256..511].iter().copied())
                .collect()
        })
        .collect();
    assert_eq!(batch.len(), 8);
    let loss = model
        .forward(&batch, &ForwardOptions::new().loss(true))
        .unwrap()
        .loss
        .unwrap();
    let per: Vec<f64> = loss
        .data
        .chunks(loss.cols)
        .map(|r| r.iter().map(|&v| v as f64).sum::<f64>() / r.len() as f64)
        .collect();
    (per.iter().sum::<f64>() / per.len() as f64, per)
}
