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
    /// `b_dec` *not* subtracted) with training-form parameters. Gradients are *added*
    /// into `grads` (same names and shapes as `params`).
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
