//! Weights-only tables: what a latent writes, read off the SAE's decoder and the
//! model's unembedding without running anything.
//!
//! - logit effects: `W_dec[i] · W_Uᵀ` over the whole vocabulary (`W_U [d_vocab,
//!   d_model]` as the model stores it; the final RMSNorm gain is **not** folded in,
//!   SAEDashboard's convention), its top and bottom tokens and a histogram whose
//!   heights sum to `d_vocab`;
//! - decoder neighbours: the cosine of `W_dec[i]` with every other row, over all
//!   latents.
//!
//! Both are computed for one block of latents at a time (a product of the block
//! against everything), so memory stays at `block × max(d_vocab, n)` floats.

use std::ops::Range;

use rayon::prelude::*;
use saelab_core::kernels::{gemm, Transpose};

use crate::manifest::TablesConfig;
use crate::rank::{asc_then_index, desc_then_index, TopN};
use crate::record::{LogitTable, Neighbour, TokenValue};
use crate::stats::histogram;

/// Latents per product block of the logit tables (`64 × d_vocab` floats at a time).
const LOGIT_BLOCK: usize = 64;
/// Latents per product block of the decoder cosines.
const COSINE_BLOCK: usize = 256;

/// The decoder, `W_dec [n, d]` row-major.
#[derive(Clone, Copy, Debug)]
pub struct Decoder<'a> {
    /// The rows.
    pub w: &'a [f32],
    /// Width of a row.
    pub d: usize,
}

impl Decoder<'_> {
    /// Number of rows.
    pub fn n(&self) -> usize {
        self.w.len() / self.d
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.w[i * self.d..(i + 1) * self.d]
    }

    /// Every row divided by its norm (a zero row stays zero).
    pub fn normalised(&self) -> Vec<f32> {
        let mut out = self.w.to_vec();
        out.par_chunks_mut(self.d).for_each(|r| {
            let norm = r.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
            if norm > 0.0 {
                r.iter_mut().for_each(|x| *x = (*x as f64 / norm) as f32);
            }
        });
        out
    }

    /// The norm of every row.
    pub fn norms(&self) -> Vec<f32> {
        self.w
            .chunks(self.d)
            .map(|r| r.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt() as f32)
            .collect()
    }
}

/// The logit table of one row of effects (`[d_vocab]`).
pub fn logit_table(effects: &[f32], cfg: &TablesConfig) -> LogitTable {
    let mut top = TopN::new(cfg.logit_tokens, desc_then_index);
    let mut bottom = TopN::new(cfg.logit_tokens, asc_then_index);
    for (t, &v) in effects.iter().enumerate() {
        top.push((t as u32, v as f64));
        bottom.push((t as u32, v as f64));
    }
    let tv = |(token, value): (u32, f64)| TokenValue {
        token,
        value: value as f32,
    };
    let histogram = histogram(effects, cfg.logit_hist_bins);
    LogitTable {
        top: top.into_sorted().into_iter().map(tv).collect(),
        bottom: bottom.into_sorted().into_iter().map(tv).collect(),
        histogram,
    }
}

/// The logit tables of latents `latents` through the unembedding `w_u [d_vocab, d]`.
pub fn logit_tables(
    dec: Decoder<'_>,
    w_u: &[f32],
    latents: Range<usize>,
    cfg: &TablesConfig,
) -> Vec<LogitTable> {
    let d = dec.d;
    let v = w_u.len() / d;
    let mut out = Vec::with_capacity(latents.len());
    let mut buf = Vec::new();
    for s in latents.clone().step_by(LOGIT_BLOCK) {
        let e = (s + LOGIT_BLOCK).min(latents.end);
        buf.resize((e - s) * v, 0.0);
        gemm(
            e - s,
            d,
            v,
            1.0,
            &dec.w[s * d..e * d],
            Transpose::No,
            w_u,
            Transpose::Yes,
            0.0,
            &mut buf,
        );
        let tables: Vec<LogitTable> = buf.par_chunks(v).map(|r| logit_table(r, cfg)).collect();
        out.extend(tables);
    }
    out
}

/// The `k` nearest latents by decoder cosine of each latent in `latents`, over all
/// latents but itself: cosine descending, ties by lower index. `normalised` is
/// [`Decoder::normalised`].
pub fn decoder_neighbours(
    normalised: &[f32],
    d: usize,
    latents: Range<usize>,
    k: usize,
) -> Vec<Vec<Neighbour>> {
    let n = normalised.len() / d;
    let mut out = Vec::with_capacity(latents.len());
    let mut buf = Vec::new();
    for s in latents.clone().step_by(COSINE_BLOCK) {
        let e = (s + COSINE_BLOCK).min(latents.end);
        buf.resize((e - s) * n, 0.0);
        gemm(
            e - s,
            d,
            n,
            1.0,
            &normalised[s * d..e * d],
            Transpose::No,
            normalised,
            Transpose::Yes,
            0.0,
            &mut buf,
        );
        let block: Vec<Vec<Neighbour>> = buf
            .par_chunks(n)
            .enumerate()
            .map(|(r, row)| {
                let me = s + r;
                let mut top = TopN::new(k, desc_then_index);
                for (j, &c) in row.iter().enumerate() {
                    if j != me {
                        top.push((j as u32, c as f64));
                    }
                }
                top.into_sorted()
                    .into_iter()
                    .map(|(latent, c)| Neighbour {
                        latent,
                        cosine: c as f32,
                    })
                    .collect()
            })
            .collect();
        out.extend(block);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logit_tables_rank_tokens_and_bin_the_vocabulary() {
        // d = 2, three latents, four tokens.
        let w_dec = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let w_u = [1.0, 0.0, 0.0, 2.0, -1.0, 1.0, 0.5, 0.5];
        let cfg = TablesConfig {
            logit_tokens: 2,
            logit_hist_bins: 4,
            ..TablesConfig::default()
        };
        let dec = Decoder { w: &w_dec, d: 2 };
        let t = logit_tables(dec, &w_u, 0..3, &cfg);
        // Latent 0: effects [1, 0, -1, 0.5].
        let top: Vec<u32> = t[0].top.iter().map(|x| x.token).collect();
        let bottom: Vec<u32> = t[0].bottom.iter().map(|x| x.token).collect();
        assert_eq!((top, bottom), (vec![0, 3], vec![2, 1]));
        assert_eq!(t[0].histogram.heights.iter().sum::<u64>(), 4);
        // Latent 2: effects [1, 2, 0, 1]: a tie at 1 goes to the lower token.
        let top: Vec<u32> = t[2].top.iter().map(|x| x.token).collect();
        assert_eq!(top, vec![1, 0]);
    }

    #[test]
    fn decoder_neighbours_exclude_the_latent_itself() {
        let w = [1.0, 0.0, 2.0, 0.0, 0.0, 3.0, 1.0, 1.0];
        let dec = Decoder { w: &w, d: 2 };
        let nb = decoder_neighbours(&dec.normalised(), 2, 0..4, 2);
        assert_eq!(nb[0][0].latent, 1);
        assert!((nb[0][0].cosine - 1.0).abs() < 1e-6);
        assert_eq!(nb[0][1].latent, 3);
        assert!((nb[3][0].cosine - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
        assert!(nb
            .iter()
            .enumerate()
            .all(|(i, l)| l.iter().all(|x| x.latent as usize != i)));
    }
}
