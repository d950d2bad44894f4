//! GroupMax SAE. (Being written.)

use super::{Architecture, StepContext, StepOutput};
use crate::config::{ArchConfig, Dims};
use crate::latents::Latents;
use crate::rng::Rng;
use crate::tensor::{Matrix, ParamSet};

/// The GroupMax architecture.
pub struct GroupMax {
    cfg: ArchConfig,
}

impl GroupMax {
    /// Builds from its [`ArchConfig`] variant.
    pub fn new(cfg: ArchConfig) -> Self {
        GroupMax { cfg }
    }
}

impl Architecture for GroupMax {
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
