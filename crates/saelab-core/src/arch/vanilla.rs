//! The vanilla L1 SAE ("Towards Monosemanticity", Bricken et al. 2023; dictionary_learning's
//! `StandardTrainer`, SAEBench's "Standard"): a ReLU encoder with a plain L1 penalty and
//! unit-norm decoder rows.
//!
//! Forward, with `x' = x − b_dec`: `f = ReLU(x' W_enc + b_enc)`, `x̂ = f W_dec + b_dec`.
//!
//! Loss (per batch of `B` tokens; `λ = l1_coefficient`, `s` the warm-up scale):
//!
//! `L = mean_tokens ‖x − x̂‖² + λ·s · mean_tokens Σ_i f_i`
//!
//! With the penalty on `f` alone, shrinking `f` while growing the decoder row would
//! lower it for free; the unit-norm constraint on the decoder rows (renormalised after
//! each step, the parallel gradient component removed) closes that door. This is the
//! SAE that the April-2024 norm-weighted penalty ([`super::relu`]) replaced: the two
//! coincide while the rows have unit norm, but only the weighted one is invariant to
//! how the norm is split between `f` and `W_dec`.
//!
//! At inference a vanilla SAE is a plain ReLU SAE, and it is saved as one (SAELens
//! `standard`); `metadata.trained_as` records `vanilla`.

use serde::{Deserialize, Serialize};

use super::common::{encoder, sae_grads};
use super::relu::{default_l1_coefficient, ReluConfig};
use super::{ArchConfig, Architecture, Knob, Registered, SaeLensForm, Step, StepOutput, Train};
use crate::config::Dims;
use crate::kernels::engine::{AuxSelect, Select};
use crate::latents::Latents;
use crate::tensor::{Matrix, ParamSet};

/// The vanilla SAE's hyperparameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VanillaConfig {
    /// λ of the L1 penalty, reached at the end of the sparsity warm-up.
    #[serde(default = "default_l1_coefficient")]
    pub l1_coefficient: f32,
}

impl VanillaConfig {
    /// The ReLU SAE it is at inference and in files.
    fn as_relu(&self) -> ReluConfig {
        ReluConfig {
            l1_coefficient: self.l1_coefficient,
        }
    }
}

impl Registered for VanillaConfig {
    fn with_k(_k: usize) -> Self {
        VanillaConfig {
            l1_coefficient: default_l1_coefficient(),
        }
    }
}

impl Architecture for VanillaConfig {
    fn file_params(&self, dims: Dims) -> Vec<(&'static str, Vec<usize>)> {
        self.as_relu().file_params(dims)
    }

    fn encode(&self, p: &ParamSet, x_enc: &Matrix) -> Latents {
        self.as_relu().encode(p, x_enc)
    }

    fn knobs(&self) -> Vec<Knob> {
        vec![Knob::new("l1_coefficient", self.l1_coefficient).sparsity("lam", "λ")]
    }

    fn saelens(&self) -> Option<SaeLensForm> {
        self.as_relu().saelens()
    }

    fn saved_as(&self) -> Option<ArchConfig> {
        Some(self.as_relu().into())
    }

    fn trainer(&self, _dims: Dims) -> Result<Box<dyn Train>, String> {
        Ok(Box::new(self.clone()))
    }
}

/// Training: the training form is the file form (`W_enc`, `b_enc`, `W_dec`, `b_dec`).
impl Train for VanillaConfig {
    fn train_step(&mut self, step: Step<'_>) -> StepOutput {
        let (engine, p, x, grads) = (step.engine, step.params, step.x, step.grads);
        let enc = encoder(p);
        let w_dec = &p.get("W_dec").data;
        let bsz = x.rows.max(1) as f64;
        let zero = vec![0.0f32; enc.b_enc.len()];
        let sel = engine.encode(x, enc, Select::Above(&zero), AuxSelect::OFF);
        let mut rec = engine.reconstruct(x, w_dec, enc.b_dec, &sel);
        let (sq_err, mse) = (rec.sq_err, rec.sq_err / bsz);
        // Penalty c Σ f with c = λ s / B: ∂/∂f = c on every stored (positive) latent, and
        // ReLU' = 1 there, so ∂L/∂pre = ∂L/∂f + c.
        let c = self.l1_coefficient * step.ctx.sparsity_scale / bsz as f32;
        let l1 = c as f64 * sel.latents.val.iter().map(|&v| v as f64).sum::<f64>();
        rec.g_f.iter_mut().for_each(|g| *g += c);
        engine.backward(x, enc, w_dec, &sel, rec, sae_grads(grads));
        StepOutput {
            loss: mse + l1,
            terms: vec![("mse", mse), ("l1", l1)],
            latents: sel.latents,
            sq_err,
        }
    }

    /// The parameters as they are, under the ReLU config ([`Architecture::saved_as`]).
    fn to_file(&self, params: &ParamSet) -> (ParamSet, ArchConfig) {
        (params.clone(), ArchConfig::from(self.clone()).file_form())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::common::subtract_bias;
    use crate::arch::gradcheck;
    use crate::arch::StepContext;
    use crate::rng::Rng;
    use crate::train::{TrainConfig, Trainer};
    use crate::SaeConfig;

    fn arch(l1: f32) -> VanillaConfig {
        VanillaConfig { l1_coefficient: l1 }
    }

    #[test]
    fn loss_is_mse_plus_plain_l1() {
        let (d, n, rows) = (5, 12, 7);
        let mut rng = Rng::new(4);
        let mut a = arch(0.7);
        let dims = Dims::square(d, n);
        let p = gradcheck::perturbed_params(&a, dims, &mut rng, 0.2);
        let x = gradcheck::random_batch(&mut rng, rows, d);
        let (f, mse) = gradcheck::naive_relu(&p, &x);
        let l1: f64 = f.iter().flatten().sum();
        let s = 0.5;
        let (mse, l1) = (mse / rows as f64, 0.7 * s * l1 / rows as f64);
        let dead = vec![false; n];
        let ctx = StepContext::new(s as f32, &dead);
        for mut engine in gradcheck::engines() {
            let out = a.train_step(Step::new(engine.as_mut(), &p, &x, ctx, &mut p.zeros_like()));
            assert_eq!(out.terms[1].0, "l1");
            assert!((out.terms[0].1 - mse).abs() < 1e-5 * mse);
            assert!((out.terms[1].1 - l1).abs() < 1e-5 * l1);
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        gradcheck::check_standard_case(&mut arch(0.8), 0.2, 0.9);
    }

    #[test]
    fn trains_and_is_saved_as_a_relu_sae() {
        // Through the trainer (unit-norm rows kept), exported and written as SAELens
        // `standard`, read back as ReLU with the training latents.
        let d = 8;
        let mut rng = Rng::new(9);
        let x = gradcheck::random_batch(&mut rng, 512, d);
        let cfg = TrainConfig {
            batch_size: 64,
            total_tokens: 512,
            ..TrainConfig::default()
        };
        let sae_cfg = SaeConfig::new(
            VanillaConfig {
                l1_coefficient: 1.0,
            }
            .into(),
            d,
            32,
        );
        let mut t = Trainer::new(cfg, sae_cfg, &x).unwrap();
        let mut last = f64::INFINITY;
        for s in 0..8 {
            last = t.step(&x.slice_rows(s * 64, (s + 1) * 64)).unwrap().loss;
        }
        assert!(last.is_finite());
        for row in t.params().get("W_dec").data.chunks(d) {
            let norm: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5);
        }
        let (cfg, file) = t.export();
        assert_eq!(cfg.arch.name(), "relu");
        assert_eq!(cfg.metadata.trained_as.as_deref(), Some("vanilla"));
        let sae = crate::Sae::new(cfg, file).unwrap();
        let dir = tempfile::tempdir().unwrap();
        crate::format::save_sae(&sae, &dir.path().join("sae"), None).unwrap();
        let back = crate::format::load_sae(&dir.path().join("sae")).unwrap();
        assert_eq!(back.cfg.arch.name(), "relu");
        let batch = x.slice_rows(0, 16);
        assert_eq!(
            back.encode(&batch).unwrap().latents,
            sae.encode(&batch).unwrap().latents
        );
        // The raw-input latents of the file form equal the training latents of the
        // scaled input.
        let mut a = arch(1.0);
        let dead = vec![false; 32];
        let ctx = StepContext::new(1.0, &dead);
        let mut xs = batch.clone();
        xs.data.iter_mut().for_each(|v| *v *= t.input_scale());
        let out = gradcheck::step_on_cpu(&mut a, t.params(), &xs, ctx);
        let enc = a.encode(
            t.params(),
            &subtract_bias(&xs, &t.params().get("b_dec").data),
        );
        assert_eq!(enc, out.latents);
    }
}
