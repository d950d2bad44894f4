//! TopK SAE ("Scaling and evaluating sparse autoencoders", Gao et al. 2024).
//!
//! `f = ReLU(TopK_k((x − b_dec) W_enc + b_enc))`, `x̂ = f W_dec + b_dec`.
//! Loss: `mean ‖x − x̂‖² + c_aux · mean ‖e − ê‖²`, where `e = x − x̂` (no gradient
//! through e) and `ê = ReLU(TopK_{k_aux} over dead latents) · W_dec` — the AuxK term
//! that gives dead latents a gradient ([`super::topk_family`]). Decoder rows are kept at
//! unit norm.

use serde::{Deserialize, Serialize};

use super::common::{pre_activations, sae_params};
use super::topk_family::{self, AuxK};
use super::{ArchConfig, Architecture, Knob, Registered, SaeLensForm, Step, StepOutput, Train};
use crate::config::Dims;
use crate::kernels::engine::Select;
use crate::kernels::select::topk_rows;
use crate::latents::Latents;
use crate::tensor::{Matrix, ParamSet};

/// TopK's hyperparameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopKConfig {
    /// Latents kept per token.
    pub k: usize,
    /// Dead latents used by the AuxK loss (0 disables AuxK).
    #[serde(default = "default_aux_k")]
    pub aux_k: usize,
    /// Coefficient of the AuxK loss.
    #[serde(default = "default_aux_coefficient")]
    pub aux_coefficient: f32,
}

/// Default `aux_k` of the TopK family (Gao et al.: 512 of 16M; SAELens/sparsify 256-512).
pub(crate) fn default_aux_k() -> usize {
    256
}

/// Default AuxK coefficient (Gao et al.: 1/32).
pub(crate) fn default_aux_coefficient() -> f32 {
    1.0 / 32.0
}

/// `k` must lie in `1..=n` to be trained (and be at least 1 to be run).
pub(crate) fn check_k(k: usize, n: usize) -> Result<(), String> {
    if k == 0 || k > n {
        return Err(format!("k = {k} must be in 1..={n}"));
    }
    Ok(())
}

impl Registered for TopKConfig {
    fn with_k(k: usize) -> Self {
        TopKConfig {
            k,
            aux_k: default_aux_k(),
            aux_coefficient: default_aux_coefficient(),
        }
    }
}

impl Architecture for TopKConfig {
    fn check(&self, _dims: Dims) -> Result<(), String> {
        if self.k == 0 {
            return Err("k must be at least 1".into());
        }
        Ok(())
    }

    fn file_params(&self, dims: Dims) -> Vec<(&'static str, Vec<usize>)> {
        sae_params(dims, &["b_enc"])
    }

    fn encode(&self, p: &ParamSet, x_enc: &Matrix) -> Latents {
        let pre = pre_activations(p, x_enc);
        topk_rows(&pre, self.k, None)
    }

    fn knobs(&self) -> Vec<Knob> {
        vec![
            Knob::new("k", self.k).sparsity("k", "k"),
            Knob::new("aux_k", self.aux_k),
            Knob::new("aux_coefficient", self.aux_coefficient),
        ]
    }

    fn saelens(&self) -> Option<SaeLensForm> {
        Some(SaeLensForm {
            architecture: "topk",
            k: Some(self.k),
        })
    }

    fn rescales_by_decoder_norm(&self) -> bool {
        true
    }

    fn trainer(&self, dims: Dims) -> Result<Box<dyn Train>, String> {
        check_k(self.k, dims.n)?;
        Ok(Box::new(self.clone()))
    }
}

/// Training: the training form is the file form (`W_enc`, `b_enc`, `W_dec`, `b_dec`).
impl Train for TopKConfig {
    fn train_step(&mut self, step: Step<'_>) -> StepOutput {
        let aux = AuxK {
            k: self.aux_k,
            coefficient: self.aux_coefficient,
        };
        topk_family::step(step, Select::TopK(self.k), aux)
    }

    fn to_file(&self, params: &ParamSet) -> (ParamSet, ArchConfig) {
        (params.clone(), self.clone().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::gradcheck;
    use crate::arch::StepContext;
    use crate::kernels::cpu::CpuEngine;
    use crate::kernels::reference::ReferenceEngine;
    use crate::rng::Rng;

    fn arch(k: usize, aux_k: usize) -> TopKConfig {
        TopKConfig {
            k,
            aux_k,
            aux_coefficient: 0.5,
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        gradcheck::check_standard_case(&mut arch(4, 0), 0.1, 1.0);
    }

    /// The CPU engine against the reference on two corner cases: few dead latents with a
    /// large k_aux (the AuxK pairs fill most of [B, |dead|], so the CPU engine takes its
    /// dense-over-the-dead-set route), and one row with k above the number of positive
    /// pre-activations and every latent dead.
    #[test]
    fn fast_and_reference_agree() {
        let dims = Dims::square(13, 67);
        let some_dead: Vec<bool> = (0..67).map(|j| j % 5 == 2).collect();
        let all_dead = vec![true; 67];
        for (seed, k, aux_k, rows, dead) in [(12, 5, 6, 41, &some_dead), (8, 70, 5, 1, &all_dead)] {
            let mut rng = Rng::new(seed);
            let mut a = arch(k, aux_k);
            let p = gradcheck::perturbed_params(&a, dims, &mut rng, 0.1);
            let x = gradcheck::random_batch(&mut rng, rows, 13);
            let ctx = StepContext::new(1.0, dead);
            let (mut g1, mut g2) = (p.zeros_like(), p.zeros_like());
            let o1 = a.train_step(Step::new(&mut CpuEngine::default(), &p, &x, ctx, &mut g1));
            let mut reference = ReferenceEngine::default();
            let o2 = a.train_step(Step::new(&mut reference, &p, &x, ctx, &mut g2));
            let aux = |o: &StepOutput| o.terms.iter().find(|t| t.0 == "aux").map(|t| t.1);
            let (aux1, aux2) = (aux(&o1).unwrap(), aux(&o2).unwrap());
            assert!(aux2 > 0.0, "k = {k}: the AuxK term is on");
            assert!((aux1 - aux2).abs() < 1e-4 * aux2);
            assert!((o1.loss - o2.loss).abs() < 1e-4 * o2.loss);
            // Same selection; values equal up to the summation order of the two products.
            assert_eq!(o1.latents.indptr, o2.latents.indptr);
            assert_eq!(o1.latents.idx, o2.latents.idx);
            for (u, v) in o1.latents.val.iter().zip(&o2.latents.val) {
                assert!((u - v).abs() < 1e-5 * (1.0 + v.abs()));
            }
            for ((name, t1), (_, t2)) in g1.iter().zip(g2.iter()) {
                for (u, v) in t1.data.iter().zip(&t2.data) {
                    assert!((u - v).abs() < 1e-4 * (1.0 + u.abs()), "{name}: {u} vs {v}");
                }
            }
        }
    }
}
