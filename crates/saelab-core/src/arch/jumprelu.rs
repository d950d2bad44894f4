//! JumpRelu SAE. (Being written.)

use super::{Architecture, StepContext, StepOutput};
use crate::config::{ArchConfig, Dims};
use crate::kernels::affine;
use crate::latents::Latents;
use crate::rng::Rng;
use crate::tensor::{Matrix, ParamSet};

/// The JumpRelu architecture.
pub struct JumpRelu {
    cfg: ArchConfig,
}

impl JumpRelu {
    /// Builds from its [`ArchConfig`] variant.
    pub fn new(cfg: ArchConfig) -> Self {
        JumpRelu { cfg }
    }
}

impl Architecture for JumpRelu {
    fn config(&self) -> &ArchConfig {
        &self.cfg
    }
    fn init(&self, _dims: Dims, _rng: &mut Rng) -> ParamSet {
        unimplemented!()
    }
    fn encode(&self, p: &ParamSet, x_enc: &Matrix) -> Latents {
        let mut pre = affine(x_enc, &p.get("W_enc").data, &p.get("b_enc").data);
        let theta = &p.get("threshold").data;
        for row in pre.data.chunks_mut(theta.len()) {
            for (v, &t) in row.iter_mut().zip(theta) {
                // SAELens: ReLU(pre) · 1[pre > θ]
                if !(*v > t && *v > 0.0) {
                    *v = 0.0;
                }
            }
        }
        Latents::from_dense(&pre)
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
