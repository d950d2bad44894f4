//! Relu SAE. (Being written.)

use super::{Architecture, StepContext, StepOutput};
use crate::config::{ArchConfig, Dims};
use crate::kernels::affine;
use crate::latents::Latents;
use crate::rng::Rng;
use crate::tensor::{Matrix, ParamSet};

/// The Relu architecture.
pub struct Relu {
    cfg: ArchConfig,
}

impl Relu {
    /// Builds from its [`ArchConfig`] variant.
    pub fn new(cfg: ArchConfig) -> Self {
        Relu { cfg }
    }
}

impl Architecture for Relu {
    fn config(&self) -> &ArchConfig {
        &self.cfg
    }
    fn init(&self, _dims: Dims, _rng: &mut Rng) -> ParamSet {
        unimplemented!()
    }
    fn encode(&self, p: &ParamSet, x_enc: &Matrix) -> Latents {
        let mut pre = affine(x_enc, &p.get("W_enc").data, &p.get("b_enc").data);
        pre.data.iter_mut().for_each(|v| *v = v.max(0.0));
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
