//! Gated SAE. (Being written.)

use super::{Architecture, StepContext, StepOutput};
use crate::config::{ArchConfig, Dims};
use crate::kernels::affine;
use crate::latents::Latents;
use crate::rng::Rng;
use crate::tensor::{Matrix, ParamSet};

/// The Gated architecture.
pub struct Gated {
    cfg: ArchConfig,
}

impl Gated {
    /// Builds from its [`ArchConfig`] variant.
    pub fn new(cfg: ArchConfig) -> Self {
        Gated { cfg }
    }
}

impl Architecture for Gated {
    fn config(&self) -> &ArchConfig {
        &self.cfg
    }
    fn init(&self, _dims: Dims, _rng: &mut Rng) -> ParamSet {
        unimplemented!()
    }
    fn encode(&self, p: &ParamSet, x_enc: &Matrix) -> Latents {
        // gate = x W_enc + b_gate; magnitude = x (W_enc ⊙ exp r_mag) + b_mag, which is
        // (x W_enc) ⊙ exp(r_mag) + b_mag since r_mag scales whole columns.
        let n = p.get("b_gate").data.len();
        let zero = vec![0.0f32; n];
        let mut xw = affine(x_enc, &p.get("W_enc").data, &zero);
        let (b_gate, r_mag, b_mag) = (
            &p.get("b_gate").data,
            &p.get("r_mag").data,
            &p.get("b_mag").data,
        );
        for row in xw.data.chunks_mut(n) {
            for j in 0..n {
                let gate = row[j] + b_gate[j];
                let mag = row[j] * r_mag[j].exp() + b_mag[j];
                row[j] = if gate > 0.0 { mag.max(0.0) } else { 0.0 };
            }
        }
        Latents::from_dense(&xw)
    }
    fn train_step(
        &mut self,
        _p: &ParamSet,
        _x: &Matrix,
        _ctx: &StepContext,
        _g: &mut ParamSet,
    ) -> StepOutput {
        unimplemented!()
    }
    fn unit_norm_decoder(&self) -> bool {
        true
    }
}
