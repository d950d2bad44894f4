//! Format (A): SAEDashboard's Neuronpedia runner output, one `batch-{n}.json` per
//! batch of latents, built from a latent's [`LatentRecord`].
//!
//! Field by field (`docs/neuronpedia.md` has the table and the differences from
//! SAEDashboard's own statistics):
//!
//! - `activations`: the top group first (`bin_min = bin_contains = −1`, `bin_max` = the
//!   latent's max), then the interval groups in increasing order (`bin_min`, `bin_max`
//!   their edges, which tile `[0, max]`; `bin_contains` the fraction of all positions,
//!   zeros included, in the interval). Each example is its whole context minus the BOS
//!   at position 0 (`ctx_len − 1` tokens and values, the latent's value at every
//!   position), `qualifying_token_index` its position minus one.
//! - `neuron_alignment_*`: the three largest entries of the decoder row divided by its
//!   Euclidean norm (SAEDashboard folds the decoder norm first), ties by lower index, and
//!   `|entry| / ‖row‖₁`.
//! - `correlated_features_indices` / `correlated_features_l1`: saelab's top three
//!   co-occurrence neighbours and their **Jaccard index** over active positions
//!   (`both / (count_a + count_b − both)`, over all latents of the SAE, ties by lower
//!   index). SAEDashboard puts the cosine between activation vectors there, computed only
//!   among the 128 latents of the same batch; `correlated_features_pearson` has no saelab
//!   counterpart and is empty.
//! - `correlated_neurons_*`, `decoder_weights_dist`, `vector`: not computed by saelab;
//!   empty, as SAEDashboard writes them when absent. No DFA fields.
//! - `frac_nonzero`: `count / positions` over the non-BOS positions of the pass, as a
//!   fraction and not rounded (SAEDashboard's has 5 decimals, parsed back from a
//!   percentage; rounding would show a rare latent as never active).
//!
//! Every other float is rounded to 5 decimals, as SAEDashboard's `np.round(…, 5)`.

use saelab_core::{Error, Result};
use saelab_features::record::Sample;
use saelab_features::LatentRecord;
use serde::Serialize;

use crate::text::token_string;

/// Rounds to 5 decimals (SAEDashboard's `np.round(x, 5)`, halves away from zero), with
/// no negative zero.
pub fn round5(x: f64) -> f64 {
    let y = (x * 1e5).round() / 1e5;
    if y == 0.0 {
        0.0
    } else {
        y
    }
}

fn round_all(xs: impl IntoIterator<Item = f64>) -> Vec<f64> {
    xs.into_iter().map(round5).collect()
}

/// One `batch-{n}.json`.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Batch {
    pub model_id: String,
    pub layer: u32,
    pub sae_set: String,
    pub sae_id_suffix: Option<String>,
    pub features: Vec<Feature>,
}

/// One latent of a batch (SAEDashboard's `NeuronpediaDashboardFeature.to_dict`).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Feature {
    pub feature_index: u32,
    pub neuron_alignment_indices: Vec<u32>,
    pub neuron_alignment_values: Vec<f64>,
    pub neuron_alignment_l1: Vec<f64>,
    pub correlated_neurons_indices: Vec<u32>,
    pub correlated_neurons_l1: Vec<f64>,
    pub correlated_neurons_pearson: Vec<f64>,
    pub correlated_features_indices: Vec<u32>,
    pub correlated_features_l1: Vec<f64>,
    pub correlated_features_pearson: Vec<f64>,
    pub neg_str: Vec<String>,
    pub neg_values: Vec<f64>,
    pub pos_str: Vec<String>,
    pub pos_values: Vec<f64>,
    pub frac_nonzero: f64,
    pub freq_hist_data_bar_values: Vec<f64>,
    pub freq_hist_data_bar_heights: Vec<u64>,
    pub logits_hist_data_bar_heights: Vec<u64>,
    pub logits_hist_data_bar_values: Vec<f64>,
    pub n_prompts_total: usize,
    pub n_tokens_in_prompt: usize,
    pub dataset: String,
    pub decoder_weights_dist: Vec<f64>,
    pub activations: Vec<Activation>,
    pub vector: Vec<f64>,
}

/// One example context of a latent.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Activation {
    pub bin_min: f64,
    pub bin_max: f64,
    pub bin_contains: f64,
    pub tokens: Vec<String>,
    pub values: Vec<f64>,
    pub qualifying_token_index: u32,
}

/// What every latent's feature is built from.
pub(crate) struct Inputs<'a> {
    /// The token matrix `[contexts, ctx_len]`.
    pub tokens: &'a [u32],
    pub ctx_len: usize,
    /// Dashboard strings of every token id.
    pub strings: &'a [String],
    /// `W_dec [n, d]`, row-major.
    pub w_dec: &'a [f32],
    pub d: usize,
    pub n_prompts_total: usize,
    pub dataset: String,
    /// Named in errors about a record.
    pub stats_dir: &'a std::path::Path,
}

/// Co-occurrence neighbours written as correlated features.
const CORRELATED: usize = 3;
/// Decoder entries in the neuron alignment table.
const ALIGNMENT: usize = 3;

/// The three largest entries of `row` (ties by lower index), divided by `‖row‖₂`, and
/// their share of `‖row‖₁`; empty for a zero row.
pub(crate) fn neuron_alignment(row: &[f32]) -> (Vec<u32>, Vec<f64>, Vec<f64>) {
    let l2 = row.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    let l1: f64 = row.iter().map(|&x| (x as f64).abs()).sum();
    if l2 == 0.0 {
        return (Vec::new(), Vec::new(), Vec::new());
    }
    let mut idx: Vec<u32> = (0..row.len() as u32).collect();
    idx.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
    idx.truncate(ALIGNMENT);
    let values = round_all(idx.iter().map(|&i| row[i as usize] as f64 / l2));
    let shares = round_all(idx.iter().map(|&i| (row[i as usize] as f64).abs() / l1));
    (idx, values, shares)
}

impl Inputs<'_> {
    /// The example of `s` in a group with the given bin fields.
    fn activation(&self, latent: u32, s: &Sample, bin: (f64, f64, f64)) -> Result<Activation> {
        let ctx = self.ctx_len;
        let contexts = self.tokens.len() / ctx.max(1);
        let bad = |what: String| {
            Error::bad_file(self.stats_dir, format!("corrupt: latent {latent}: {what}"))
        };
        if s.seq as usize >= contexts {
            return Err(bad(format!(
                "an example in context {} of {contexts}",
                s.seq
            )));
        }
        if s.pos == 0 || s.pos as usize >= ctx {
            return Err(bad(format!(
                "an example at position {} (positions 1..{ctx} hold text)",
                s.pos
            )));
        }
        let row = &self.tokens[s.seq as usize * ctx..(s.seq as usize + 1) * ctx];
        let mut values = vec![0.0; ctx - 1];
        for &(p, v) in &s.acts {
            if p == 0 || p as usize >= ctx {
                return Err(bad(format!("a value at position {p}")));
            }
            values[p as usize - 1] = round5(v as f64);
        }
        Ok(Activation {
            bin_min: bin.0,
            bin_max: bin.1,
            bin_contains: bin.2,
            tokens: row[1..]
                .iter()
                .map(|&t| token_string(self.strings, t).to_string())
                .collect(),
            values,
            qualifying_token_index: s.pos - 1,
        })
    }

    /// The batch entry of a latent that fires (`rec.count > 0`).
    pub fn feature(&self, rec: &LatentRecord, positions: u64) -> Result<Feature> {
        let i = rec.latent;
        let max = round5(rec.max as f64);
        let mut activations = Vec::new();
        for s in &rec.top {
            activations.push(self.activation(i, s, (-1.0, max, -1.0))?);
        }
        let mut groups: Vec<_> = rec.intervals.iter().collect();
        groups.sort_by(|a, b| a.lo.total_cmp(&b.lo));
        for g in groups {
            let bin = (round5(g.lo), round5(g.hi), round5(g.contains));
            for s in &g.samples {
                activations.push(self.activation(i, s, bin)?);
            }
        }
        let row = &self.w_dec[i as usize * self.d..(i as usize + 1) * self.d];
        let (al_idx, al_val, al_l1) = neuron_alignment(row);
        let co: Vec<_> = rec
            .cooccurrence_neighbours
            .iter()
            .take(CORRELATED)
            .collect();
        let strs = |tv: &[saelab_features::record::TokenValue]| -> Vec<String> {
            tv.iter()
                .map(|t| token_string(self.strings, t.token).to_string())
                .collect()
        };
        let vals = |tv: &[saelab_features::record::TokenValue]| {
            round_all(tv.iter().map(|t| t.value as f64))
        };
        Ok(Feature {
            feature_index: i,
            neuron_alignment_indices: al_idx,
            neuron_alignment_values: al_val,
            neuron_alignment_l1: al_l1,
            correlated_neurons_indices: Vec::new(),
            correlated_neurons_l1: Vec::new(),
            correlated_neurons_pearson: Vec::new(),
            correlated_features_indices: co.iter().map(|c| c.latent).collect(),
            correlated_features_l1: round_all(co.iter().map(|c| c.jaccard)),
            correlated_features_pearson: Vec::new(),
            neg_str: strs(&rec.logits.bottom),
            neg_values: vals(&rec.logits.bottom),
            pos_str: strs(&rec.logits.top),
            pos_values: vals(&rec.logits.top),
            frac_nonzero: rec.count as f64 / positions as f64,
            freq_hist_data_bar_values: round_all(rec.histogram.midpoints.iter().map(|&m| m as f64)),
            freq_hist_data_bar_heights: rec.histogram.heights.clone(),
            logits_hist_data_bar_heights: rec.logits.histogram.heights.clone(),
            logits_hist_data_bar_values: round_all(
                rec.logits.histogram.midpoints.iter().map(|&m| m as f64),
            ),
            n_prompts_total: self.n_prompts_total,
            n_tokens_in_prompt: self.ctx_len,
            dataset: self.dataset.clone(),
            decoder_weights_dist: Vec::new(),
            activations,
            vector: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_and_alignment() {
        assert_eq!(round5(1.234_565_1), 1.23457);
        assert_eq!(round5(-0.000_001), 0.0);
        assert!(round5(-0.000_001).is_sign_positive());
        // Largest entries by value (not magnitude), ties by lower index.
        let (i, v, l1) = neuron_alignment(&[3.0, 0.0, -4.0, 0.0]);
        assert_eq!(i, vec![0, 1, 3]);
        assert_eq!(v, vec![0.6, 0.0, 0.0]);
        assert_eq!(l1, vec![0.42857, 0.0, 0.0]);
        assert_eq!(neuron_alignment(&[0.0; 4]).0, Vec::<u32>::new());
    }
}
