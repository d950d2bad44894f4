//! Synthetic activations with a known dictionary: the ground-truth benchmark for SAE
//! training.
//!
//! `F` true features are random unit directions in `R^d` (in superposition when
//! `F > d`). Feature `i` is active in a sample with probability `p_i ∝ (i+1)^(−α)`
//! (power-law frequencies), scaled so that on average `avg_active` features are active.
//! An active feature contributes `m · dir_i` with magnitude `m ~ Uniform[mag_min,
//! mag_max]`; isotropic Gaussian noise of standard deviation `noise_std` is added.
//!
//! Activity is sampled per feature by geometric gaps between active samples, so the
//! cost is proportional to the number of active (sample, feature) pairs.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::kernels::axpy;
use crate::rng::Rng;
use crate::tensor::Matrix;

/// Parameters of the synthetic distribution.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynthConfig {
    /// Activation width.
    pub d: usize,
    /// Number of true features.
    pub n_features: usize,
    /// Mean number of active features per sample.
    pub avg_active: f64,
    /// Power-law exponent α of the feature frequencies (0 = all equally frequent).
    pub freq_exponent: f64,
    /// Smallest magnitude of an active feature.
    pub mag_min: f32,
    /// Largest magnitude of an active feature.
    pub mag_max: f32,
    /// Standard deviation of the added Gaussian noise, per dimension.
    pub noise_std: f32,
    /// Seed of the dictionary and of the samples.
    pub seed: u64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            d: 128,
            n_features: 2048,
            avg_active: 10.0,
            freq_exponent: 0.5,
            mag_min: 0.5,
            mag_max: 1.5,
            noise_std: 0.01,
            seed: 0,
        }
    }
}

/// A synthetic dataset: samples and the dictionary that generated them.
pub struct SynthData {
    /// Samples `[rows, d]`.
    pub x: Matrix,
    /// True feature directions `[F, d]`, unit norm.
    pub dictionary: Matrix,
    /// Activation probability of each feature.
    pub freqs: Vec<f64>,
}

/// Feature probabilities `p_i ∝ (i+1)^(−α)` summing to `avg_active` (each capped at 1).
pub fn feature_frequencies(cfg: &SynthConfig) -> Vec<f64> {
    let raw: Vec<f64> = (0..cfg.n_features)
        .map(|i| ((i + 1) as f64).powf(-cfg.freq_exponent))
        .collect();
    let total: f64 = raw.iter().sum();
    raw.iter()
        .map(|r| (r * cfg.avg_active / total).min(1.0))
        .collect()
}

/// Generates a dictionary and `rows` samples from the distribution `cfg`.
pub fn generate(cfg: &SynthConfig, rows: usize) -> Result<SynthData> {
    validate(cfg, rows)?;
    let mut rng = Rng::new(cfg.seed);
    let mut dict = Matrix::zeros(cfg.n_features, cfg.d);
    for f in 0..cfg.n_features {
        dict.row_mut(f).copy_from_slice(&rng.unit_vector(cfg.d));
    }
    let x = generate_samples(cfg, &dict, rows, cfg.seed.wrapping_add(1))?;
    Ok(SynthData {
        x,
        freqs: feature_frequencies(cfg),
        dictionary: dict,
    })
}

/// `rows` further samples `[rows, d]` from the distribution `cfg` with the given
/// dictionary `[F, d]`, using `seed` (e.g. an independent held-out set).
pub fn generate_samples(cfg: &SynthConfig, dict: &Matrix, rows: usize, seed: u64) -> Result<Matrix> {
    validate(cfg, rows)?;
    if (dict.rows, dict.cols) != (cfg.n_features, cfg.d) {
        return Err(Error::Shape(format!(
            "dictionary is [{}, {}], the config needs [{}, {}]",
            dict.rows, dict.cols, cfg.n_features, cfg.d
        )));
    }
    let rng = Rng::new(seed);
    let mut x = Matrix::zeros(rows, cfg.d);
    for (f, &p) in feature_frequencies(cfg).iter().enumerate() {
        let mut frng = rng.fork(f as u64 + 1);
        let mut row = next_gap(&mut frng, p);
        while row < rows {
            let m = cfg.mag_min + (cfg.mag_max - cfg.mag_min) * frng.uniform() as f32;
            axpy(m, dict.row(f), x.row_mut(row));
            row += 1 + next_gap(&mut frng, p);
        }
    }
    if cfg.noise_std > 0.0 {
        let mut nrng = rng.fork(0);
        for v in x.data.iter_mut() {
            *v += cfg.noise_std * nrng.normal() as f32;
        }
    }
    Ok(x)
}

fn validate(cfg: &SynthConfig, rows: usize) -> Result<()> {
    if cfg.d == 0 || cfg.n_features == 0 || rows == 0 {
        return Err(Error::config("synth: d, n_features and rows must be positive"));
    }
    if !(cfg.avg_active > 0.0 && cfg.avg_active <= cfg.n_features as f64) {
        return Err(Error::config("synth: avg_active must be in (0, n_features]"));
    }
    if !(cfg.mag_min >= 0.0 && cfg.mag_max >= cfg.mag_min) {
        return Err(Error::config("synth: need 0 <= mag_min <= mag_max"));
    }
    Ok(())
}

/// Number of inactive samples before the next active one, for activity probability `p`
/// (geometric distribution).
fn next_gap(rng: &mut Rng, p: f64) -> usize {
    if p >= 1.0 {
        return 0;
    }
    let u = 1.0 - rng.uniform(); // (0, 1]
    (u.ln() / (1.0 - p).ln())
        .floor()
        .min(usize::MAX as f64 / 2.0) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_have_the_requested_activity_and_unit_features() {
        let cfg = SynthConfig {
            d: 16,
            n_features: 64,
            avg_active: 4.0,
            noise_std: 0.0,
            mag_min: 1.0,
            mag_max: 1.0,
            ..SynthConfig::default()
        };
        let data = generate(&cfg, 20000).unwrap();
        let freqs = feature_frequencies(&cfg);
        assert!((freqs.iter().sum::<f64>() - 4.0).abs() < 1e-9);
        assert!(freqs[0] > freqs[63]);
        for f in 0..64 {
            let r = data.dictionary.row(f);
            assert!((r.iter().map(|v| v * v).sum::<f32>() - 1.0).abs() < 1e-5);
        }
        // With unit magnitudes, E‖x‖² = Σ_i p_i + Σ_{i≠j} p_i p_j cos_ij; the cross term
        // is zero in expectation over random directions, so ≈ 4 up to sampling noise.
        let mean_sq: f64 = data.x.data.iter().map(|&v| (v * v) as f64).sum::<f64>() / 20000.0;
        assert!((mean_sq - 4.0).abs() < 0.4, "{mean_sq}");
        // The same seed gives the same data.
        assert_eq!(
            generate(&cfg, 100).unwrap().x,
            generate(&cfg, 100).unwrap().x
        );
    }
}
