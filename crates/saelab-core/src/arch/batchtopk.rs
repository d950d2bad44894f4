//! BatchTopK SAE ("BatchTopK Sparse Autoencoders", Bussmann et al. 2024).
//!
//! Training forward, with `x' = x − b_dec` and `pre = x' W_enc + b_enc` `[B, n]`:
//! keep the `k·B` largest *positive* entries of `pre` across the whole batch (ties broken
//! towards the earlier token, then the lower latent index), zero the rest:
//! `f = pre ⊙ 1[selected]`, `x̂ = f W_dec + b_dec`. Tokens may get more or fewer than
//! `k` latents; the batch average is at most `k`.
//!
//! Loss: `mean ‖x − x̂‖² + aux`, where `aux` is the TopK family's AuxK term on dead
//! latents ([`super::topk_family`]). The selection is piecewise constant, so `pre` gets
//! the reconstruction gradient on the selected entries only.
//!
//! Inference threshold: after each step, `θ ← (1 − m) θ + m · min(selected values)`
//! (`m = threshold_momentum`; the first step sets θ directly). One batch's minimum is
//! already a precise estimate (the `k·B`-th largest of `B·n` values), so the EMA only
//! needs to smooth a little; what it must not do is lag: the selected values shrink a
//! lot early in training, and with `m = 0.01` θ lagged so far behind that halfway
//! through a 244-step run on SmolLM2 activations it gave an inference L0 of 25 for
//! k = 64. The default `m = 0.1` forgets in about ten steps. At inference BatchTopK is
//! JumpReLU with θ for every latent, `f = pre · 1[pre > θ]`, which gives no batch
//! dependence; [`Train::to_file`] writes that JumpReLU form (`threshold [n]`, saved as
//! [`ArchConfig::Jumprelu`]). θ is the extra training state ([`Train::state`]).
//!
//! Half the current θ is handed to the engine as a lower bound on the batch's cut, so
//! that the fast engine can collect candidates while the encoder runs.
//!
//! Decoder rows are kept at unit norm.

use serde::{Deserialize, Serialize};

use super::jumprelu::JumpReluConfig;
use super::topk::{check_k, default_aux_coefficient, default_aux_k};
use super::topk_family::{self, AuxK};
use super::{ArchConfig, Architecture, Knob, Registered, SaeLensForm, Step, StepOutput, Train};
use crate::config::Dims;
use crate::error::{Error, Result};
use crate::kernels::engine::Select;
use crate::latents::Latents;
use crate::tensor::{Matrix, ParamSet, Tensor};

/// BatchTopK's hyperparameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchTopKConfig {
    /// Mean latents kept per token.
    pub k: usize,
    /// Dead latents used by the AuxK loss (0 disables AuxK).
    #[serde(default = "default_aux_k")]
    pub aux_k: usize,
    /// Coefficient of the AuxK loss.
    #[serde(default = "default_aux_coefficient")]
    pub aux_coefficient: f32,
    /// EMA momentum of the inference threshold.
    #[serde(default = "default_threshold_momentum")]
    pub threshold_momentum: f32,
}

fn default_threshold_momentum() -> f32 {
    0.1
}

impl Registered for BatchTopKConfig {
    fn with_k(k: usize) -> Self {
        BatchTopKConfig {
            k,
            aux_k: default_aux_k(),
            aux_coefficient: default_aux_coefficient(),
            threshold_momentum: default_threshold_momentum(),
        }
    }
}

impl BatchTopKConfig {
    /// The JumpReLU SAE it is at inference and in files, with default training
    /// hyperparameters.
    fn as_jumprelu(&self) -> JumpReluConfig {
        JumpReluConfig::with_k(self.k)
    }
}

impl Architecture for BatchTopKConfig {
    fn check(&self, _dims: Dims) -> std::result::Result<(), String> {
        if self.k == 0 {
            return Err("k must be at least 1".into());
        }
        Ok(())
    }

    /// The file form: the JumpReLU tensors (`threshold [n]` = θ for every latent).
    fn file_params(&self, dims: Dims) -> Vec<(&'static str, Vec<usize>)> {
        self.as_jumprelu().file_params(dims)
    }

    /// JumpReLU with the file form's `threshold [n]`.
    fn encode(&self, p: &ParamSet, x_enc: &Matrix) -> Latents {
        self.as_jumprelu().encode(p, x_enc)
    }

    fn knobs(&self) -> Vec<Knob> {
        vec![
            Knob::new("k", self.k).sparsity("k", "k"),
            Knob::new("aux_k", self.aux_k),
            Knob::new("aux_coefficient", self.aux_coefficient),
            Knob::new("threshold_momentum", self.threshold_momentum),
        ]
    }

    /// Written as SAELens `jumprelu` (see [`Architecture::saved_as`]).
    fn saelens(&self) -> Option<SaeLensForm> {
        self.as_jumprelu().saelens()
    }

    /// JumpReLU with default training hyperparameters (the file form carries θ).
    fn saved_as(&self) -> Option<ArchConfig> {
        Some(self.as_jumprelu().into())
    }

    fn trainer(&self, dims: Dims) -> std::result::Result<Box<dyn Train>, String> {
        check_k(self.k, dims.n)?;
        Ok(Box::new(BatchTopK {
            cfg: self.clone(),
            threshold: None,
        }))
    }
}

/// The BatchTopK training object. Training form: `W_enc [d_in, n]`, `b_enc [n]`,
/// `W_dec [n, d_out]`, `b_dec [d_out]`; file form adds `threshold [n]` (all θ).
pub struct BatchTopK {
    cfg: BatchTopKConfig,
    /// EMA of the smallest selected value; `None` before the first step.
    threshold: Option<f32>,
}

impl BatchTopK {
    /// Updates the inference threshold with the smallest selected value of a step.
    fn update_threshold(&mut self, lat: &Latents) {
        let m = self.cfg.threshold_momentum;
        if let Some(min) = lat.val.iter().copied().reduce(f32::min) {
            self.threshold = Some(match self.threshold {
                None => min,
                Some(t) => (1.0 - m) * t + m * min,
            });
        }
    }

    /// The inference threshold θ (0 before the first training step).
    pub fn threshold(&self) -> f32 {
        self.threshold.unwrap_or(0.0)
    }
}

impl Train for BatchTopK {
    fn train_step(&mut self, step: Step<'_>) -> StepOutput {
        let select = Select::BatchTopK {
            total: self.cfg.k * step.x.rows,
            hint: self.threshold.map(|t| 0.5 * t),
        };
        let aux = AuxK {
            k: self.cfg.aux_k,
            coefficient: self.cfg.aux_coefficient,
        };
        let out = topk_family::step(step, select, aux);
        self.update_threshold(&out.latents);
        out
    }

    /// The JumpReLU form: the parameters plus `threshold [n]` = θ for every latent,
    /// under the config [`Architecture::saved_as`] gives.
    fn to_file(&self, params: &ParamSet) -> (ParamSet, ArchConfig) {
        let mut out = params.clone();
        let n = params.get("b_enc").data.len();
        out.insert(
            "threshold",
            Tensor::new(&[n], vec![self.threshold(); n]).unwrap(),
        );
        (out, ArchConfig::from(self.cfg.clone()).file_form())
    }

    /// `{"threshold": θ}` (`null` before the first step).
    fn state(&self) -> serde_json::Value {
        serde_json::json!({ "threshold": self.threshold })
    }

    fn load_state(&mut self, state: &serde_json::Value) -> Result<()> {
        match state.get("threshold") {
            Some(serde_json::Value::Null) => self.threshold = None,
            Some(v) => match v.as_f64() {
                Some(t) if t.is_finite() => self.threshold = Some(t as f32),
                _ => {
                    return Err(Error::config(format!(
                        "batchtopk training state: threshold {v} is not a finite number"
                    )))
                }
            },
            None => {
                return Err(Error::config(
                    "batchtopk training state: no \"threshold\" field",
                ))
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::common::{pre_activations, subtract_bias};
    use crate::arch::gradcheck;
    use crate::arch::StepContext;
    use crate::kernels::select::testing::{naive_select, triples};
    use crate::rng::Rng;

    fn arch(k: usize, aux_k: usize, momentum: f32) -> BatchTopK {
        BatchTopK {
            cfg: BatchTopKConfig {
                k,
                aux_k,
                aux_coefficient: 0.5,
                threshold_momentum: momentum,
            },
            threshold: None,
        }
    }

    #[test]
    fn training_selects_k_times_batch_across_the_batch() {
        let (d, n, rows, k) = (6, 24, 17, 3);
        let mut rng = Rng::new(2);
        let mut a = arch(k, 0, 0.1);
        let p = gradcheck::perturbed_params(&a, Dims::square(d, n), &mut rng, 0.1);
        let x = gradcheck::random_batch(&mut rng, rows, d);
        let dead = vec![false; n];
        let ctx = StepContext::new(1.0, &dead);
        let out = gradcheck::step_on_cpu(&mut a, &p, &x, ctx);
        // Independent pre-activations in f64, then the selection by full sort.
        let (w_enc, b_enc, b_dec) = (
            &p.get("W_enc").data,
            &p.get("b_enc").data,
            &p.get("b_dec").data,
        );
        let pre64: Vec<f64> = (0..rows * n)
            .map(|e| {
                let (r, j) = (e / n, e % n);
                b_enc[j] as f64
                    + (0..d)
                        .map(|i| (x.row(r)[i] - b_dec[i]) as f64 * w_enc[i * n + j] as f64)
                        .sum::<f64>()
            })
            .collect();
        let pre = Matrix::from_vec(rows, n, pre64.iter().map(|&v| v as f32).collect()).unwrap();
        let want = naive_select(&pre, k * rows);
        let got = triples(&out.latents);
        assert_eq!(got.len(), k * rows);
        let per_row: Vec<usize> = (0..rows).map(|r| out.latents.row(r).0.len()).collect();
        assert!(
            per_row.iter().any(|&c| c != k),
            "selection is per batch, not per row"
        );
        for (g, w) in got.iter().zip(&want) {
            assert_eq!((g.0, g.1), (w.0, w.1));
            assert!((g.2 - w.2).abs() < 1e-5 * (1.0 + w.2.abs()));
        }
        assert_eq!(
            a.threshold(),
            got.iter().map(|e| e.2).fold(f32::INFINITY, f32::min)
        );
    }

    #[test]
    fn gradient_matches_finite_differences() {
        gradcheck::check_standard_case(&mut arch(4, 0, 0.01), 0.1, 1.0);
    }

    #[test]
    fn threshold_is_an_ema_of_the_smallest_selected_value() {
        let (d, n, rows, k, m) = (5, 16, 10, 2, 0.2f32);
        let mut rng = Rng::new(13);
        let mut a = arch(k, 0, m);
        let p = gradcheck::perturbed_params(&a, Dims::square(d, n), &mut rng, 0.1);
        let dead = vec![false; n];
        let ctx = StepContext::new(1.0, &dead);
        assert_eq!(a.state(), serde_json::json!({ "threshold": null }));
        let mut want: Option<f64> = None;
        for _ in 0..6 {
            let x = gradcheck::random_batch(&mut rng, rows, d);
            let pre = pre_activations(&p, &subtract_bias(&x, &p.get("b_dec").data));
            let min = naive_select(&pre, k * rows)
                .iter()
                .map(|e| e.2)
                .fold(f32::INFINITY, f32::min) as f64;
            want = Some(match want {
                None => min,
                Some(t) => (1.0 - m as f64) * t + m as f64 * min,
            });
            gradcheck::step_on_cpu(&mut a, &p, &x, ctx);
            assert!((a.threshold() as f64 - want.unwrap()).abs() < 1e-5);
        }
        // state round trip, and refusal of a malformed state
        let mut b = arch(k, 0, m);
        b.load_state(&a.state()).unwrap();
        assert_eq!(b.threshold(), a.threshold());
        assert_eq!(b.to_file(&p), a.to_file(&p));
        assert!(b
            .load_state(&serde_json::json!({ "threshold": "x" }))
            .is_err());
        assert!(b.load_state(&serde_json::Value::Null).is_err());
        b.load_state(&serde_json::json!({ "threshold": null }))
            .unwrap();
        assert_eq!(b.threshold, None);
    }

    #[test]
    fn jumprelu_file_form_reproduces_training_sparsity() {
        // Fixed parameters, a stream of batches from one distribution: θ settles, and the
        // JumpReLU file form then gives about k latents per token on fresh batches, with
        // nearly the same active set as the batch selection and identical values.
        let (d, n, rows, k) = (16, 96, 256, 6);
        let mut rng = Rng::new(17);
        let mut a = arch(k, 0, 0.05);
        let p = gradcheck::perturbed_params(&a, Dims::square(d, n), &mut rng, 0.05);
        let dead = vec![false; n];
        let ctx = StepContext::new(1.0, &dead);
        for _ in 0..200 {
            let x = gradcheck::random_batch(&mut rng, rows, d);
            gradcheck::step_on_cpu(&mut a, &p, &x, ctx);
        }
        let (file, cfg) = a.to_file(&p);
        assert!(matches!(cfg, ArchConfig::Jumprelu(_)));
        let th = &file.get("threshold").data;
        assert_eq!(th.len(), n);
        assert!(th.iter().all(|&t| t == a.threshold() && t > 0.0));
        let jump = cfg.spec();
        let (mut l0_train, mut l0_file, mut common, mut union) = (0usize, 0usize, 0usize, 0usize);
        for _ in 0..20 {
            let x = gradcheck::random_batch(&mut rng, rows, d);
            let train = gradcheck::step_on_cpu(&mut a, &p, &x, ctx).latents;
            let enc = jump.encode(&file, &subtract_bias(&x, &p.get("b_dec").data));
            l0_train += train.nnz();
            l0_file += enc.nnz();
            let (t, e) = (triples(&train), triples(&enc));
            for r in 0..rows {
                let tr: Vec<_> = t.iter().filter(|v| v.0 == r).collect();
                let er: Vec<_> = e.iter().filter(|v| v.0 == r).collect();
                for a in &tr {
                    if let Some(b) = er.iter().find(|b| b.1 == a.1) {
                        assert_eq!(a.2, b.2);
                        common += 1;
                    }
                }
                union += tr.len() + er.len();
            }
        }
        let union = union - common;
        let (l0_train, l0_file) = (l0_train as f64 / 5120.0, l0_file as f64 / 5120.0);
        eprintln!(
            "L0: batch selection {l0_train:.3}, JumpReLU file form {l0_file:.3}; Jaccard {:.3}",
            common as f64 / union as f64
        );
        assert_eq!(l0_train, k as f64);
        assert!(
            (l0_file - k as f64).abs() < 0.1 * k as f64,
            "file-form L0 {l0_file}"
        );
        assert!(common as f64 / union as f64 > 0.9);
    }
}
