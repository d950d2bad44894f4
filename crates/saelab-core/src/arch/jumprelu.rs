//! JumpRelu SAE. (Being written.)

use super::{Architecture, StepContext, StepOutput};
use crate::config::{ArchConfig, Dims};
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
    fn encode(&self, _p: &ParamSet, _x_enc: &Matrix) -> Latents {
        unimplemented!()
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
