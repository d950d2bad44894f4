//! JumpReLU SAE ("Jumping Ahead", Rajamanoharan et al. 2024; the Gemma Scope recipe).
//!
//! Forward, with `x' = x − b_dec`, `pre = x' W_enc + b_enc` and a per-latent threshold
//! `θ = exp(log_threshold) > 0`:
//!
//! `f = pre · H(pre − θ)`, `x̂ = f W_dec + b_dec`
//!
//! (`H` the Heaviside step; since θ > 0 this equals SAELens' `ReLU(pre) · 1[pre > θ]`).
//!
//! Loss (per batch of `B` tokens; `λ = l0_coefficient`, `s` the warm-up scale):
//!
//! `L = mean_tokens ‖x − x̂‖² + λ·s · mean_tokens Σ_i H(pre_i − θ_i)`
//!
//! Gradients. `pre` gets the ordinary gradient through `f` where the latent is on
//! (`∂f/∂pre = H(pre − θ)`) and none through the L0 term (whose true gradient is zero
//! almost everywhere). θ gets straight-through pseudo-derivatives with the rectangle
//! kernel `K(u) = 1[|u| < 1/2]` and bandwidth `ε`:
//!
//! - `∂f/∂θ = −(θ/ε) · K((pre − θ)/ε)`,
//! - `∂H/∂θ = −(1/ε) · K((pre − θ)/ε)`,
//!
//! so `∂L/∂θ_i = Σ_tokens K((pre − θ_i)/ε) · (−(θ_i/ε) ∂L/∂f_i − λ·s/(B ε))`, where
//! `∂L/∂f_i` is taken for every token in the kernel band, including those where the
//! latent is off. The chain rule through `θ = exp(log_threshold)` multiplies by θ.
//!
//! Decoder rows are kept at unit norm (Gemma Scope). The file form replaces
//! `log_threshold` by `threshold = exp(log_threshold)`.

use serde::{Deserialize, Serialize};

use super::common::{encoder, init_tied, sae_params, threshold_encode};
use super::{ArchConfig, Architecture, Knob, Registered, SaeLensForm, Step, StepOutput, Train};
use crate::config::Dims;
use crate::kernels::engine::{AuxSelect, Grads, Select};
use crate::latents::Latents;
use crate::rng::Rng;
use crate::tensor::{Matrix, ParamSet, Tensor};

/// JumpReLU's hyperparameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JumpReluConfig {
    /// λ of the L0 penalty, reached at the end of the sparsity warm-up.
    #[serde(default = "default_l0_coefficient")]
    pub l0_coefficient: f32,
    /// Bandwidth ε of the rectangle kernel.
    #[serde(default = "default_bandwidth")]
    pub bandwidth: f32,
    /// Initial threshold θ for every latent.
    #[serde(default = "default_init_threshold")]
    pub init_threshold: f32,
}

/// Gemma Scope's λ for unit-norm inputs.
fn default_l0_coefficient() -> f32 {
    1e-3
}

/// Gemma Scope's ε.
fn default_bandwidth() -> f32 {
    1e-3
}

fn default_init_threshold() -> f32 {
    1e-3
}

impl Registered for JumpReluConfig {
    fn with_k(_k: usize) -> Self {
        JumpReluConfig {
            l0_coefficient: default_l0_coefficient(),
            bandwidth: default_bandwidth(),
            init_threshold: default_init_threshold(),
        }
    }
}

impl Architecture for JumpReluConfig {
    fn file_params(&self, dims: Dims) -> Vec<(&'static str, Vec<usize>)> {
        sae_params(dims, &["b_enc", "threshold"])
    }

    fn encode(&self, p: &ParamSet, x_enc: &Matrix) -> Latents {
        threshold_encode(p, x_enc)
    }

    fn knobs(&self) -> Vec<Knob> {
        vec![
            Knob::new("l0_coefficient", self.l0_coefficient).sparsity("l0c", "λ0"),
            Knob::new("bandwidth", self.bandwidth),
            Knob::new("init_threshold", self.init_threshold).sparsity("th", "θ0"),
        ]
    }

    fn saelens(&self) -> Option<SaeLensForm> {
        SaeLensForm::named("jumprelu")
    }

    fn trainer(&self, _dims: Dims) -> Result<Box<dyn Train>, String> {
        Ok(Box::new(self.clone()))
    }
}

/// Training form: `W_enc [d_in, n]`, `b_enc [n]`, `W_dec [n, d_out]`, `b_dec [d_out]`,
/// `log_threshold [n]`; the file form has `threshold [n]` in place of `log_threshold`.
impl Train for JumpReluConfig {
    /// Tied init with unit-norm decoder rows, `b_enc = 0`, `b_dec = 0`,
    /// `log_threshold = ln(init_threshold)` for every latent.
    fn init(&self, dims: Dims, rng: &mut Rng) -> ParamSet {
        let mut p = init_tied(dims, 1.0, rng);
        p.insert(
            "log_threshold",
            Tensor::new(&[dims.n], vec![self.init_threshold.ln(); dims.n]).unwrap(),
        );
        p
    }

    /// The encoder keeps, per token, the latents that are on (`pre > θ`) or inside the
    /// kernel band (`|pre − θ| < ε/2`), with their pre-activations for the θ estimator.
    /// Band entries that are off are stored with value 0: they do not change x̂ but the
    /// θ estimator needs `∂L/∂f` there. Active entries hold `pre > θ > 0`, so "stored
    /// value ≠ 0" is "latent on".
    fn train_step(&mut self, step: Step<'_>) -> StepOutput {
        let (engine, p, x, grads) = (step.engine, step.params, step.x, step.grads);
        let enc = encoder(p);
        let (w_dec, b_dec) = (&p.get("W_dec").data, &p.get("b_dec").data);
        let theta: Vec<f32> = p
            .get("log_threshold")
            .data
            .iter()
            .map(|v| v.exp())
            .collect();
        let n = theta.len();
        let eps = self.bandwidth;
        let half = 0.5 * eps;
        let bsz = x.rows.max(1) as f64;
        // A superset of the band and the active latents (a little below θ − ε/2), then
        // the exact classification.
        let lower: Vec<f32> = theta
            .iter()
            .map(|&t| {
                let l = t - half;
                l - l.abs() * 1e-5 - f32::MIN_POSITIVE
            })
            .collect();
        let mut band = Vec::new();
        let sel = engine
            .encode(x, enc, Select::Above(&lower), AuxSelect::OFF)
            .refine(|superset| {
                let mut pattern = Latents::with_capacity(n, superset.rows(), 0);
                for r in 0..superset.rows() {
                    let (idx, val) = superset.row(r);
                    for (&j, &v) in idx.iter().zip(val) {
                        let t = theta[j as usize];
                        let in_band = (v - t).abs() < half;
                        if v > t {
                            pattern.idx.push(j);
                            pattern.val.push(v);
                            band.push(if in_band { v } else { f32::NAN });
                        } else if in_band {
                            pattern.idx.push(j);
                            pattern.val.push(0.0);
                            band.push(v);
                        }
                    }
                    pattern.indptr.push(pattern.idx.len());
                }
                pattern
            });
        let pattern = &sel.latents;
        let l0_count = pattern.val.iter().filter(|&&v| v != 0.0).count();
        let mut rec = engine.reconstruct(x, w_dec, b_dec, &sel);
        let sq_err = rec.sq_err;
        let mse = sq_err / bsz;
        let lam = (self.l0_coefficient * step.ctx.sparsity_scale) as f64;
        let l0_term = lam * l0_count as f64 / bsz;
        // θ pseudo-gradient over the band entries (from ∂L/∂f there, including off
        // entries), then chain rule to log θ.
        let l0_per_token = (lam / bsz) as f32;
        let mut g_theta = vec![0.0f32; n];
        for ((&j, &g), &v) in pattern.idx.iter().zip(&rec.g_f).zip(&band) {
            if !v.is_nan() {
                let j = j as usize;
                g_theta[j] -= (theta[j] / eps) * g + l0_per_token / eps;
            }
        }
        // pre gets ∂L/∂f where the latent is on, nothing where it is off.
        for (g, &v) in rec.g_f.iter_mut().zip(&pattern.val) {
            if v == 0.0 {
                *g = 0.0;
            }
        }
        let [g_w_enc, g_b_enc, g_w_dec, g_b_dec, g_log_theta] =
            grads.get_many_mut(["W_enc", "b_enc", "W_dec", "b_dec", "log_threshold"]);
        for ((g, gt), t) in g_log_theta.data.iter_mut().zip(&g_theta).zip(&theta) {
            *g = gt * t;
        }
        let sae = Grads {
            w_enc: &mut g_w_enc.data,
            b_enc: &mut g_b_enc.data,
            w_dec: &mut g_w_dec.data,
            b_dec: &mut g_b_dec.data,
        };
        engine.backward(x, enc, w_dec, &sel, rec, sae);
        let mut latents = sel.latents;
        latents.prune_zeros();
        StepOutput {
            loss: mse + l0_term,
            terms: vec![("mse", mse), ("l0", l0_term)],
            latents,
            sq_err,
        }
    }

    /// Replaces `log_threshold` by `threshold = exp(log_threshold)`.
    fn to_file(&self, params: &ParamSet) -> (ParamSet, ArchConfig) {
        let mut out = ParamSet::new();
        for (name, t) in params.iter() {
            if name == "log_threshold" {
                let th = t.data.iter().map(|v| v.exp()).collect();
                out.insert("threshold", Tensor::new(&t.shape, th).unwrap());
            } else {
                out.insert(name, t.clone());
            }
        }
        (out, self.clone().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::gradcheck;
    use crate::arch::StepContext;

    fn arch(l0_coefficient: f32, bandwidth: f32) -> JumpReluConfig {
        JumpReluConfig {
            l0_coefficient,
            bandwidth,
            init_threshold: 1e-3,
        }
    }

    /// Parameters with thresholds spread around 0.1–0.5, so that a good share of the
    /// positive pre-activations are switched off by the jump.
    fn params(a: &JumpReluConfig, dims: Dims, rng: &mut Rng) -> ParamSet {
        let mut p = gradcheck::perturbed_params(a, dims, rng, 0.1);
        for v in p.get_mut("log_threshold").data.iter_mut() {
            *v = (0.1 + 0.4 * rng.uniform() as f32).ln();
        }
        p
    }

    #[test]
    fn init_has_log_threshold_and_unit_decoder_rows() {
        let a = arch(1e-3, 1e-3);
        let dims = Dims::square(5, 7);
        let p = a.init(dims, &mut Rng::new(1));
        for &v in &p.get("log_threshold").data {
            assert!((v - 1e-3f32.ln()).abs() < 1e-6);
        }
        for row in p.get("W_dec").data.chunks(5) {
            let norm: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5);
        }
        assert!(a.unit_norm_decoder());
    }

    #[test]
    fn gradient_matches_finite_differences() {
        // log_threshold has only a pseudo-gradient (checked separately below); every
        // other parameter has a true gradient away from the jumps. A wide band (ε = 0.2)
        // puts many switched-off latents in the pattern, which must not pass gradient to pre.
        let dims = Dims::square(6, 20);
        let mut rng = Rng::new(15);
        let mut a = arch(0.05, 0.2);
        let p = params(&a, dims, &mut rng);
        let x = gradcheck::random_batch(&mut rng, 9, 6);
        let dead = vec![false; 20];
        let ctx = StepContext::new(0.8, &dead);
        gradcheck::check_on_every_engine(&mut a, &p, &x, &ctx, &["log_threshold"]);
    }

    #[test]
    fn threshold_gradient_is_the_rectangle_kernel_estimator() {
        // Direct dense computation of the loss and of
        // ∂L/∂log θ_j = θ_j Σ_r K((pre_rj − θ_j)/ε)(−(θ_j/ε) ∂L/∂f_rj − λ s/(B ε)).
        let (d, n, rows) = (5, 16, 11);
        let dims = Dims::square(d, n);
        let mut rng = Rng::new(21);
        let (lam, eps, s) = (0.3f32, 0.25f32, 0.6f32);
        let mut a = arch(lam, eps);
        let p = params(&a, dims, &mut rng);
        let x = gradcheck::random_batch(&mut rng, rows, d);
        let (w_enc, b_enc) = (&p.get("W_enc").data, &p.get("b_enc").data);
        let (w_dec, b_dec) = (&p.get("W_dec").data, &p.get("b_dec").data);
        let theta: Vec<f64> = p
            .get("log_threshold")
            .data
            .iter()
            .map(|&v| (v as f64).exp())
            .collect();
        let bf = rows as f64;
        let mut pre_row = vec![0.0f64; n];
        let mut want = vec![0.0f64; n];
        let (mut mse, mut l0, mut in_band) = (0.0f64, 0.0f64, 0);
        for r in 0..rows {
            for j in 0..n {
                pre_row[j] = b_enc[j] as f64
                    + (0..d)
                        .map(|i| (x.row(r)[i] - b_dec[i]) as f64 * w_enc[i * n + j] as f64)
                        .sum::<f64>();
            }
            let f: Vec<f64> = (0..n)
                .map(|j| {
                    if pre_row[j] > theta[j] {
                        pre_row[j]
                    } else {
                        0.0
                    }
                })
                .collect();
            l0 += f.iter().filter(|&&v| v != 0.0).count() as f64;
            let err: Vec<f64> = (0..d)
                .map(|i| {
                    b_dec[i] as f64 + (0..n).map(|j| f[j] * w_dec[j * d + i] as f64).sum::<f64>()
                        - x.row(r)[i] as f64
                })
                .collect();
            mse += err.iter().map(|e| e * e).sum::<f64>();
            for j in 0..n {
                if ((pre_row[j] - theta[j]) / eps as f64).abs() < 0.5 {
                    in_band += 1;
                    let g_f: f64 = (0..d)
                        .map(|i| 2.0 * err[i] * w_dec[j * d + i] as f64 / bf)
                        .sum();
                    let g_theta =
                        -(theta[j] / eps as f64) * g_f - (lam * s) as f64 / (bf * eps as f64);
                    want[j] += g_theta * theta[j];
                }
            }
        }
        assert!(in_band >= 10, "only {in_band} entries in the kernel band");
        let want_loss = mse / bf + (lam * s) as f64 * l0 / bf;
        let dead = vec![false; n];
        let ctx = StepContext::new(s, &dead);
        for mut engine in gradcheck::engines() {
            let mut g = p.zeros_like();
            let out = a.train_step(Step::new(engine.as_mut(), &p, &x, ctx, &mut g));
            assert!((out.loss - want_loss).abs() < 1e-4 * want_loss);
            assert_eq!(out.latents.nnz() as f64, l0);
            for (j, (&got, &w)) in g.get("log_threshold").data.iter().zip(&want).enumerate() {
                assert!(
                    (got as f64 - w).abs() < 1e-4 * (1.0 + w.abs()),
                    "log_threshold[{j}]: {got} vs {w}"
                );
            }
            assert!(want.iter().any(|&w| w.abs() > 1e-2));
        }
    }

    #[test]
    fn file_form_holds_the_threshold_itself() {
        let dims = Dims::square(8, 40);
        let a = arch(1e-2, 1e-3);
        let p = params(&a, dims, &mut Rng::new(3));
        let (file, _) = a.to_file(&p);
        let log = &p.get("log_threshold").data;
        for (t, l) in file.get("threshold").data.iter().zip(log) {
            assert_eq!(*t, l.exp());
        }
    }
}
