//! ReLU SAE with the L1 penalty of Anthropic's April-2024 update ("Circuits Updates —
//! April 2024", the "standard" SAE of SAELens).
//!
//! Forward, with `x' = x − b_dec`:
//!
//! `f = ReLU(x' W_enc + b_enc)`, `x̂ = f W_dec + b_dec`
//!
//! Loss (per batch of `B` tokens; `λ = l1_coefficient`, `s` the warm-up scale):
//!
//! `L = mean_tokens ‖x − x̂‖² + λ·s · mean_tokens Σ_i f_i ‖W_dec,i‖`
//!
//! The penalty weights each latent by its decoder row norm, so the decoder is *not*
//! renormalised: shrinking a row does not buy a smaller penalty. The gradient flows
//! through both factors: `∂/∂f_i += λ·s·‖W_dec,i‖ / B` and
//! `∂/∂W_dec,i += (λ·s / B) (Σ_tokens f_i) W_dec,i / ‖W_dec,i‖`.
//!
//! Initialisation: decoder rows random directions of norm 0.1, `W_enc = W_decᵀ`.
//!
//! ReLU latents are as sparse as training has made them (about half are on early in
//! training); the engine picks sparse or dense products by the batch's density.

use serde::{Deserialize, Serialize};

use super::common::{encoder, init_tied, pre_activations, sae_grads, sae_params, NormL1};
use super::{ArchConfig, Architecture, Knob, Registered, SaeLensForm, Step, StepOutput, Train};
use crate::config::Dims;
use crate::kernels::engine::{AuxSelect, Select};
use crate::latents::Latents;
use crate::rng::Rng;
use crate::tensor::{Matrix, ParamSet};

/// The ReLU SAE's hyperparameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReluConfig {
    /// λ, reached at the end of the sparsity warm-up.
    #[serde(default = "default_l1_coefficient")]
    pub l1_coefficient: f32,
}

/// Default λ of the norm-weighted L1 penalties (ReLU, Gated), for inputs scaled to
/// `E‖x‖² = d`.
pub(crate) fn default_l1_coefficient() -> f32 {
    5.0
}

impl Registered for ReluConfig {
    fn with_k(_k: usize) -> Self {
        ReluConfig {
            l1_coefficient: default_l1_coefficient(),
        }
    }
}

impl Architecture for ReluConfig {
    fn file_params(&self, dims: Dims) -> Vec<(&'static str, Vec<usize>)> {
        sae_params(dims, &["b_enc"])
    }

    fn encode(&self, p: &ParamSet, x_enc: &Matrix) -> Latents {
        let mut pre = pre_activations(p, x_enc);
        pre.data.iter_mut().for_each(|v| *v = v.max(0.0));
        Latents::from_dense(&pre)
    }

    fn knobs(&self) -> Vec<Knob> {
        vec![Knob::new("l1_coefficient", self.l1_coefficient).sparsity("lam", "λ")]
    }

    fn saelens(&self) -> Option<SaeLensForm> {
        SaeLensForm::named("standard")
    }

    fn trainer(&self, _dims: Dims) -> Result<Box<dyn Train>, String> {
        Ok(Box::new(self.clone()))
    }
}

/// Training: `W_enc [d_in, n]`, `b_enc [n]`, `W_dec [n, d_out]`, `b_dec [d_out]`
/// (training and file form are the same).
impl Train for ReluConfig {
    /// Tied init with decoder rows of norm 0.1, biases zero.
    fn init(&self, dims: Dims, rng: &mut Rng) -> ParamSet {
        init_tied(dims, 0.1, rng)
    }

    fn train_step(&mut self, step: Step<'_>) -> StepOutput {
        let (engine, p, x, grads) = (step.engine, step.params, step.x, step.grads);
        let enc = encoder(p);
        let w_dec = &p.get("W_dec").data;
        let (d, n) = (x.cols, enc.b_enc.len());
        let bsz = x.rows.max(1) as f64;
        let zero = vec![0.0f32; n];
        let sel = engine.encode(x, enc, Select::Above(&zero), AuxSelect::OFF);
        let mut rec = engine.reconstruct(x, w_dec, enc.b_dec, &sel);
        let (sq_err, mse) = (rec.sq_err, rec.sq_err / bsz);
        // Sparsity penalty c Σ f_i ‖W_dec,i‖ with c = λ s / B; ReLU' = 1 on every stored
        // (positive) latent, so ∂L/∂pre = ∂L/∂f there.
        let c = self.l1_coefficient * step.ctx.sparsity_scale / bsz as f32;
        let l1 = NormL1::new(&sel.latents, w_dec, d, c, &mut rec.g_f);
        engine.backward(x, enc, w_dec, &sel, rec, sae_grads(grads));
        // The backward wrote the decoder gradient; the penalty's part is added after.
        l1.add_decoder_grad(w_dec, &mut grads.get_mut("W_dec").data);
        StepOutput {
            loss: mse + l1.penalty,
            terms: vec![("mse", mse), ("l1", l1.penalty)],
            latents: sel.latents,
            sq_err,
        }
    }

    /// False: the norm-weighted penalty replaces the unit-norm constraint.
    fn unit_norm_decoder(&self) -> bool {
        false
    }

    fn to_file(&self, params: &ParamSet) -> (ParamSet, ArchConfig) {
        (params.clone(), self.clone().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::common::row_norms;
    use crate::arch::gradcheck;
    use crate::arch::StepContext;
    use crate::kernels::cpu::CpuEngine;

    fn arch(l1: f32) -> ReluConfig {
        ReluConfig { l1_coefficient: l1 }
    }

    #[test]
    fn init_is_tied_with_decoder_rows_of_norm_one_tenth() {
        let a = arch(1.0);
        let (d, n) = (6, 9);
        let p = a.init(Dims::square(d, n), &mut Rng::new(2));
        for nrm in row_norms(&p.get("W_dec").data, d) {
            assert!((nrm - 0.1).abs() < 1e-6);
        }
        let (we, wd) = (&p.get("W_enc").data, &p.get("W_dec").data);
        for i in 0..d {
            for j in 0..n {
                assert_eq!(we[i * n + j], wd[j * d + i]);
            }
        }
        assert!(!a.unit_norm_decoder());
    }

    #[test]
    fn loss_is_mse_plus_norm_weighted_l1() {
        let (d, n, rows) = (5, 12, 7);
        let mut rng = Rng::new(4);
        let mut a = arch(0.7);
        let p = gradcheck::perturbed_params(&a, Dims::square(d, n), &mut rng, 0.2);
        let x = gradcheck::random_batch(&mut rng, rows, d);
        let w_dec = &p.get("W_dec").data;
        let (f, mse) = gradcheck::naive_relu(&p, &x);
        let mut l1 = 0.0f64;
        for f in &f {
            for j in 0..n {
                let nrm = (0..d)
                    .map(|i| (w_dec[j * d + i] as f64).powi(2))
                    .sum::<f64>()
                    .sqrt();
                l1 += f[j] * nrm;
            }
        }
        let s = 0.5;
        let (mse, l1) = (mse / rows as f64, 0.7 * s * l1 / rows as f64);
        let dead = vec![false; n];
        let ctx = StepContext::new(s as f32, &dead);
        let out = gradcheck::step_on_cpu(&mut a, &p, &x, ctx);
        assert_eq!(out.terms[0].0, "mse");
        assert!((out.terms[0].1 - mse).abs() < 1e-5 * mse);
        assert_eq!(out.terms[1].0, "l1");
        assert!((out.terms[1].1 - l1).abs() < 1e-5 * l1);
        assert!((out.loss - mse - l1).abs() < 1e-5 * (mse + l1));
    }

    #[test]
    fn gradient_matches_finite_differences() {
        gradcheck::check_standard_case(&mut arch(0.8), 0.2, 0.9);
    }

    #[test]
    fn sparse_and_dense_paths_agree() {
        let dims = Dims::square(11, 70);
        let mut rng = Rng::new(8);
        let mut a = arch(2.0);
        let p = gradcheck::perturbed_params(&a, dims, &mut rng, 0.1);
        let x = gradcheck::random_batch(&mut rng, 67, 11);
        let dead = vec![false; 70];
        let ctx = StepContext::new(1.0, &dead);
        let run = |a: &mut ReluConfig, dense_above| {
            // NaN-filled: both routes must write every gradient entry.
            let mut g = super::super::tests::nan_like(&p);
            let mut engine = CpuEngine::with_dense_above(dense_above);
            let o = a.train_step(Step::new(&mut engine, &p, &x, ctx, &mut g));
            (o, g)
        };
        let (o1, g1) = run(&mut a, 1.0); // always sparse
        let (o2, g2) = run(&mut a, 0.0); // always dense
        assert!((o1.loss - o2.loss).abs() < 1e-5 * o1.loss);
        assert_eq!(o1.latents, o2.latents);
        for ((_, t1), (_, t2)) in g1.iter().zip(g2.iter()) {
            for (u, v) in t1.data.iter().zip(&t2.data) {
                assert!((u - v).abs() < 1e-4 * (1.0 + u.abs()));
            }
        }
    }
}
