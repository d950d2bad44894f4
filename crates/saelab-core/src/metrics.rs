//! Reconstruction and sparsity metrics, exactly as `docs/metrics.md` defines them, accumulated
//! batch by batch so that any number of tokens can be evaluated in bounded memory.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::kernels::{dot, gemm, Transpose};
use crate::latents::Latents;
use crate::tensor::Matrix;

/// Reconstruction and sparsity metrics over an evaluation set of `tokens` tokens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReconMetrics {
    /// Tokens evaluated.
    pub tokens: u64,
    /// Σ‖x − x̂‖² / Σ‖x − μ‖² (μ: per-dimension mean over the set).
    pub fvu: f64,
    /// 1 − fvu.
    pub explained_variance: f64,
    /// Σ‖x − x̂‖² / Σ‖x‖².
    pub nmse: f64,
    /// Mean over tokens of ‖x − x̂‖² / d.
    pub mse: f64,
    /// Mean over tokens of cos(x, x̂).
    pub cos_sim: f64,
    /// Mean over tokens of ‖x̂‖ / ‖x‖.
    pub l2_ratio: f64,
    /// E‖x̂‖² / E⟨x, x̂⟩ (1 = no shrinkage).
    pub rel_recon_bias: f64,
    /// Mean number of non-zero latents per token.
    pub l0: f64,
    /// Fraction of latents that never fire on the set.
    pub dead_frac: f64,
    /// Fraction of latents firing on more than 10 % of tokens.
    pub dense_frac: f64,
    /// The FVU with each token's active latents refit by least squares (same support,
    /// same decoder; [`crate::refit`]); `fvu − fvu_refit` is the encoder's share.
    /// Computed only when asked for (`saelab eval --refit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fvu_refit: Option<f64>,
}

/// Running sums for [`ReconMetrics`]. Sums are kept in f64.
#[derive(Clone, Debug)]
pub struct MetricsAccumulator {
    tokens: u64,
    sum_x: Vec<f64>,
    sum_x_sq: f64,
    sum_err_sq: f64,
    sum_cos: f64,
    sum_l2_ratio: f64,
    sum_xhat_sq: f64,
    sum_dot: f64,
    nnz: u64,
    fires: Vec<u64>,
    sum_refit_sq: Option<f64>,
}

impl MetricsAccumulator {
    /// An empty accumulator for outputs of width `d` and `n` latents.
    pub fn new(d: usize, n: usize) -> Self {
        MetricsAccumulator {
            tokens: 0,
            sum_x: vec![0.0; d],
            sum_x_sq: 0.0,
            sum_err_sq: 0.0,
            sum_cos: 0.0,
            sum_l2_ratio: 0.0,
            sum_xhat_sq: 0.0,
            sum_dot: 0.0,
            nnz: 0,
            fires: vec![0; n],
            sum_refit_sq: None,
        }
    }

    /// Adds a batch's refit squared error ([`crate::sae::Sae::refit_sq_err`]); give it
    /// for every batch or for none.
    pub fn add_refit(&mut self, sq_err: f64) {
        *self.sum_refit_sq.get_or_insert(0.0) += sq_err;
    }

    /// Adds a batch: targets `x [B, d]`, reconstructions `x_hat [B, d]`, and the latents
    /// that produced them (`[B, n]`, sparse; only entries ≠ 0 count as firing).
    pub fn add(&mut self, x: &Matrix, x_hat: &Matrix, latents: &Latents) {
        assert_eq!((x.rows, x.cols), (x_hat.rows, x_hat.cols));
        // per-row: (‖x‖², ‖x̂‖², ⟨x,x̂⟩, ‖x−x̂‖²)
        let per_row: Vec<[f64; 4]> = (0..x.rows)
            .into_par_iter()
            .map(|r| {
                let (a, b) = (x.row(r), x_hat.row(r));
                let mut s = [0.0f64; 4];
                for (&u, &v) in a.iter().zip(b) {
                    let (u, v) = (u as f64, v as f64);
                    s[0] += u * u;
                    s[1] += v * v;
                    s[2] += u * v;
                    s[3] += (u - v) * (u - v);
                }
                s
            })
            .collect();
        for s in per_row {
            self.sum_x_sq += s[0];
            self.sum_xhat_sq += s[1];
            self.sum_dot += s[2];
            self.sum_err_sq += s[3];
            let (nx, nh) = (s[0].sqrt(), s[1].sqrt());
            self.sum_cos += if nx > 0.0 && nh > 0.0 {
                s[2] / (nx * nh)
            } else {
                0.0
            };
            self.sum_l2_ratio += if nx > 0.0 { nh / nx } else { 0.0 };
        }
        for r in 0..x.rows {
            for (m, &v) in self.sum_x.iter_mut().zip(x.row(r)) {
                *m += v as f64;
            }
        }
        for (&j, &v) in latents.idx.iter().zip(&latents.val) {
            if v != 0.0 {
                self.fires[j as usize] += 1;
                self.nnz += 1;
            }
        }
        self.tokens += x.rows as u64;
    }

    /// Number of tokens each latent fired on.
    pub fn fire_counts(&self) -> &[u64] {
        &self.fires
    }

    /// Fraction of tokens on which each latent fired (SAELens stores log10 of this in
    /// `sparsity.safetensors`).
    pub fn firing_fractions(&self) -> Vec<f32> {
        let t = self.tokens.max(1) as f64;
        self.fires.iter().map(|&c| (c as f64 / t) as f32).collect()
    }

    /// The metrics over everything added so far.
    pub fn finish(&self) -> ReconMetrics {
        let t = self.tokens.max(1) as f64;
        let d = self.sum_x.len().max(1) as f64;
        let mean_sq: f64 = self.sum_x.iter().map(|s| (s / t) * (s / t)).sum();
        let total_var = (self.sum_x_sq - t * mean_sq).max(f64::MIN_POSITIVE);
        let fvu = self.sum_err_sq / total_var;
        let n = self.fires.len().max(1) as f64;
        ReconMetrics {
            tokens: self.tokens,
            fvu,
            explained_variance: 1.0 - fvu,
            nmse: self.sum_err_sq / self.sum_x_sq.max(f64::MIN_POSITIVE),
            mse: self.sum_err_sq / (t * d),
            cos_sim: self.sum_cos / t,
            l2_ratio: self.sum_l2_ratio / t,
            rel_recon_bias: self.sum_xhat_sq / self.sum_dot,
            l0: self.nnz as f64 / t,
            dead_frac: self.fires.iter().filter(|&&c| c == 0).count() as f64 / n,
            dense_frac: self.fires.iter().filter(|&&c| c as f64 > 0.1 * t).count() as f64 / n,
            fvu_refit: self.sum_refit_sq.map(|s| s / total_var),
        }
    }
}

/// Dictionary recovery on synthetic data with a known dictionary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecoveryMetrics {
    /// Mean over true features of the max cosine with any decoder row.
    pub mmcs: f64,
    /// Fraction of true features with a decoder row at cosine > 0.9.
    pub recovered_at_0_9: f64,
}

/// Compares the true dictionary `truth [F, d]` with decoder rows `w_dec [n, d]`.
pub fn dictionary_recovery(truth: &Matrix, w_dec: &Matrix) -> RecoveryMetrics {
    assert_eq!(truth.cols, w_dec.cols, "dictionary widths differ");
    let unit = |m: &Matrix| {
        let mut u = m.clone();
        for r in 0..u.rows {
            let row = u.row_mut(r);
            let norm = dot(row, row).sqrt().max(1e-12);
            row.iter_mut().for_each(|v| *v /= norm);
        }
        u
    };
    let (t, w) = (unit(truth), unit(w_dec));
    let mut cos = vec![0.0f32; t.rows * w.rows];
    gemm(
        t.rows,
        t.cols,
        w.rows,
        1.0,
        &t.data,
        Transpose::No,
        &w.data,
        Transpose::Yes,
        0.0,
        &mut cos,
    );
    let best: Vec<f32> = cos
        .chunks(w.rows.max(1))
        .map(|row| row.iter().cloned().fold(f32::NEG_INFINITY, f32::max))
        .collect();
    let f = best.len().max(1) as f64;
    RecoveryMetrics {
        mmcs: best.iter().map(|&b| b as f64).sum::<f64>() / f,
        recovered_at_0_9: best.iter().filter(|&&b| b > 0.9).count() as f64 / f,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_match_their_definitions_on_a_hand_computed_case() {
        let x = Matrix::from_vec(2, 2, vec![1.0, 0.0, 0.0, 2.0]).unwrap();
        let h = Matrix::from_vec(2, 2, vec![1.0, 1.0, 0.0, 1.0]).unwrap();
        let lat = Latents::from_dense(
            &Matrix::from_vec(2, 3, vec![1.0, 0.0, 0.0, 1.0, 2.0, 0.0]).unwrap(),
        );
        let mut acc = MetricsAccumulator::new(2, 3);
        acc.add(&x, &h, &lat);
        let m = acc.finish();
        // errors: row0 (0,-1) → 1, row1 (0,1) → 1; Σ = 2
        // μ = (0.5, 1); Σ‖x−μ‖² = (0.25+1) + (0.25+1) = 2.5
        assert!((m.fvu - 2.0 / 2.5).abs() < 1e-12);
        assert!((m.nmse - 2.0 / 5.0).abs() < 1e-12);
        assert!((m.mse - 0.5).abs() < 1e-12);
        let cos0 = 1.0 / 2f64.sqrt();
        assert!((m.cos_sim - (cos0 + 1.0) / 2.0).abs() < 1e-12);
        assert!((m.l2_ratio - (2f64.sqrt() + 0.5) / 2.0).abs() < 1e-12);
        // E‖x̂‖² = (2 + 1)/2, E⟨x,x̂⟩ = (1 + 2)/2
        assert!((m.rel_recon_bias - 1.0).abs() < 1e-12);
        assert!((m.l0 - 1.5).abs() < 1e-12);
        assert!((m.dead_frac - 1.0 / 3.0).abs() < 1e-12);
        assert!((m.dense_frac - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn recovery_counts_matching_directions() {
        let truth = Matrix::from_vec(2, 2, vec![1.0, 0.0, 0.0, 1.0]).unwrap();
        let dec = Matrix::from_vec(2, 2, vec![2.0, 0.1, 1.0, 1.0]).unwrap();
        let r = dictionary_recovery(&truth, &dec);
        assert!((r.recovered_at_0_9 - 0.5).abs() < 1e-12);
        let want = (2.0 / (4.01f64).sqrt() + 1.0 / 2f64.sqrt()) / 2.0;
        assert!((r.mmcs - want).abs() < 1e-6);
    }
}
