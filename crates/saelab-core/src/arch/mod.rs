//! SAE architectures: one file each, behind the [`Architecture`] trait.
//!
//! An architecture owns the maths that differs between SAEs: which parameters exist,
//! how latents are computed from pre-activations, the loss and its gradient. What all
//! SAEs share — the optimizer, schedules, decoder normalisation, dead-latent tracking,
//! checkpoints — lives in the trainer, and the dense/sparse products live in
//! [`crate::kernels`].
//!
//! Two parameter forms exist. The *training form* is what the optimizer updates (for
//! JumpReLU, `log_threshold`); the *file form* is what a SAELens `sae_weights.safetensors`
//! holds (for JumpReLU, `threshold`; BatchTopK is saved as JumpReLU). `encode` works on
//! the file form; `train_step` on the training form; `to_file` converts.
//!
//! Adding an architecture: write one file implementing the trait, add a variant to
//! [`crate::config::ArchConfig`], and one line in [`build`].

pub mod batchtopk;
pub mod common;
pub mod gated;
pub mod groupmax;
pub mod jumprelu;
pub mod relu;
pub mod topk;

#[cfg(test)]
pub(crate) mod gradcheck;

use crate::config::{ArchConfig, Dims};
use crate::error::Result;
use crate::latents::Latents;
use crate::rng::Rng;
use crate::tensor::{Matrix, ParamSet};

/// What the trainer tells an architecture about the current step.
#[derive(Clone, Copy, Debug)]
pub struct StepContext<'a> {
    /// Multiplier in `[0, 1]` on the sparsity coefficient (λ warm-up).
    pub sparsity_scale: f32,
    /// `dead[j]` is true when latent `j` has not fired for the configured number of tokens.
    pub dead: &'a [bool],
    /// Use the dense reference kernels instead of the fast sparse ones.
    pub reference: bool,
}

/// The result of one forward/backward pass on a batch.
#[derive(Clone, Debug, Default)]
pub struct StepOutput {
    /// Total loss (the quantity whose gradient was computed).
    pub loss: f64,
    /// Named loss terms, each already multiplied by its coefficient
    /// (`mse`, `l1`, `l0`, `aux`, ...). They sum to `loss`.
    pub terms: Vec<(&'static str, f64)>,
    /// Latents that fired in this batch (training-time activations), for L0 and
    /// dead-latent tracking.
    pub latents: Latents,
    /// Σ over the batch of ‖x − x̂‖² (for FVU).
    pub sq_err: f64,
}

/// One SAE architecture: parameters, activation, loss and gradient.
///
/// Shapes: `x` is `[B, d_in]`; latents are `[B, n]` (sparse); reconstructions `[B, d_out]`.
pub trait Architecture: Send + Sync {
    /// The configuration this architecture was built from.
    fn config(&self) -> &ArchConfig;

    /// Fresh training-form parameters for `dims` (W_dec rows random unit directions or
    /// as the method prescribes, W_enc = W_decᵀ, biases zero). The trainer sets `b_dec`
    /// from data afterwards.
    fn init(&self, dims: Dims, rng: &mut Rng) -> ParamSet;

    /// Inference: sparse latents for `x_enc` `[B, d_in]` (input already normalised and,
    /// where the config says so, with `b_dec` subtracted), from file-form parameters.
    fn encode(&self, params: &ParamSet, x_enc: &Matrix) -> Latents;

    /// Training: forward pass, loss and gradient on `x` `[B, d_in]` (normalised input,
    /// `b_dec` *not* subtracted) with training-form parameters. Gradients are *written*
    /// into `grads` (same names and shapes as `params`): every entry is overwritten,
    /// whatever it held before, so the trainer never clears them (the fast TopK-family
    /// step writes each gradient once instead of zeroing it and adding into it).
    fn train_step(
        &mut self,
        params: &ParamSet,
        x: &Matrix,
        ctx: &StepContext,
        grads: &mut ParamSet,
    ) -> StepOutput;

    /// Whether decoder rows are kept at unit norm (renormalised after each step, with the
    /// gradient component parallel to each row removed before it).
    fn unit_norm_decoder(&self) -> bool;

    /// File-form parameters and the architecture config to save them under.
    fn to_file(&self, params: &ParamSet) -> (ParamSet, ArchConfig) {
        (params.clone(), self.config().clone())
    }

    /// Architecture-specific training state beyond the parameters (e.g. BatchTopK's
    /// threshold EMA), for checkpoints.
    fn state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Restores what [`Architecture::state`] returned.
    fn load_state(&mut self, _state: &serde_json::Value) -> Result<()> {
        Ok(())
    }
}

/// Builds the architecture described by `cfg`.
pub fn build(cfg: &ArchConfig) -> Box<dyn Architecture> {
    match cfg {
        ArchConfig::Relu { .. } => Box::new(relu::Relu::new(cfg.clone())),
        ArchConfig::Topk { .. } => Box::new(topk::TopK::new(cfg.clone())),
        ArchConfig::Batchtopk { .. } => Box::new(batchtopk::BatchTopK::new(cfg.clone())),
        ArchConfig::Jumprelu { .. } => Box::new(jumprelu::JumpRelu::new(cfg.clone())),
        ArchConfig::Gated { .. } => Box::new(gated::Gated::new(cfg.clone())),
        ArchConfig::Groupmax { .. } => Box::new(groupmax::GroupMax::new(cfg.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy of `p`'s shapes filled with NaN: an entry a step fails to write shows.
    pub(crate) fn nan_like(p: &ParamSet) -> ParamSet {
        let mut g = p.zeros_like();
        for (_, t) in g.iter_mut() {
            t.data.fill(f32::NAN);
        }
        g
    }

    #[test]
    fn train_step_overwrites_every_gradient_entry() {
        let dims = Dims {
            d_in: 13,
            n: 67,
            d_out: 13,
        };
        let some_dead: Vec<bool> = (0..67).map(|j| j % 5 == 2).collect();
        let all_dead = vec![true; 67];
        let topk = |aux_k| ArchConfig::Topk {
            k: 5,
            aux_k,
            aux_coefficient: 1.0 / 32.0,
        };
        let batchtopk = |aux_k| ArchConfig::Batchtopk {
            k: 5,
            aux_k,
            aux_coefficient: 1.0 / 32.0,
            threshold_momentum: 0.1,
        };
        // (config, dead set): AuxK over a small dead set takes the dense route, over
        // all latents with a small k_aux the sparse one.
        let cases = [
            (topk(6), &some_dead),
            (topk(5), &all_dead),
            (batchtopk(6), &some_dead),
            (batchtopk(5), &all_dead),
            (
                ArchConfig::Jumprelu {
                    l0_coefficient: 0.05,
                    bandwidth: 0.05,
                    init_threshold: 0.1,
                },
                &some_dead,
            ),
            (
                ArchConfig::Relu {
                    l1_coefficient: 2.0,
                },
                &some_dead,
            ),
            (
                ArchConfig::Gated {
                    l1_coefficient: 1.0,
                },
                &some_dead,
            ),
        ];
        for (cfg, dead) in cases {
            for reference in [false, true] {
                let mut rng = Rng::new(4);
                let (mut a1, mut a2) = (build(&cfg), build(&cfg));
                let p = gradcheck::perturbed_params(a1.as_ref(), dims, &mut rng, 0.1);
                let ctx = StepContext {
                    sparsity_scale: 1.0,
                    dead,
                    reference,
                };
                // Two steps each, so that state-dependent routes (BatchTopK's threshold,
                // ReLU's density) are taken alike.
                for step in 0..2 {
                    let x = gradcheck::random_batch(&mut rng, 41, 13);
                    let mut g1 = p.zeros_like();
                    let mut g2 = nan_like(&p);
                    let o1 = a1.train_step(&p, &x, &ctx, &mut g1);
                    let o2 = a2.train_step(&p, &x, &ctx, &mut g2);
                    assert_eq!(o1.loss.to_bits(), o2.loss.to_bits());
                    for ((name, t1), (_, t2)) in g1.iter().zip(g2.iter()) {
                        for (i, (u, v)) in t1.data.iter().zip(&t2.data).enumerate() {
                            assert!(
                                u.to_bits() == v.to_bits(),
                                "{} (reference {reference}, step {step}): {name}[{i}] is \
                                 {u} from zeroed gradients, {v} from NaN-filled ones",
                                cfg.name()
                            );
                        }
                    }
                }
            }
        }
    }
}
