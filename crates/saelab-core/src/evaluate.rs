//! Evaluating an SAE on stored activations: reconstruction and sparsity metrics over a
//! row range, batch by batch.

use crate::error::Result;
use crate::metrics::{MetricsAccumulator, ReconMetrics};
use crate::sae::Sae;
use crate::store::ActivationStore;

/// Rows per evaluation batch.
pub const EVAL_BATCH: usize = 4096;

/// Metrics of `sae` on rows `rows` of `store`, with every latent's firing fraction
/// (for `sparsity.safetensors`); with `refit`, also `fvu_refit`. `on_batch` is called
/// with the rows done so far.
pub fn evaluate_store(
    sae: &Sae,
    store: &ActivationStore,
    rows: std::ops::Range<usize>,
    refit: bool,
    mut on_batch: impl FnMut(usize),
) -> Result<(ReconMetrics, Vec<f32>)> {
    let mut acc = MetricsAccumulator::new(sae.cfg.d_out, sae.cfg.d_sae);
    let mut start = rows.start;
    while start < rows.end {
        let end = (start + EVAL_BATCH).min(rows.end);
        let x = store.read_range(start, end)?;
        let (latents, x_hat) = sae.forward(&x)?;
        acc.add(&x, &x_hat, &latents);
        if refit {
            acc.add_refit(sae.refit_sq_err(&x, &latents)?);
        }
        start = end;
        on_batch(start - rows.start);
    }
    Ok((acc.finish(), acc.firing_fractions()))
}
