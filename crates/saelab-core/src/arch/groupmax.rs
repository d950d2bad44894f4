//! GroupMax SAE (EleutherAI sparsify's `activation = "groupmax"`). Inference only.
//!
//! The `n` latents are split into `k` contiguous groups of `n / k`; in each group only
//! the largest ReLU'd pre-activation survives:
//! `f_j = ReLU(pre_j) · 1[j = argmax_{i ∈ group(j)} ReLU(pre_i)]`, with
//! `pre = x_enc · W_enc + b_enc`. Ties go to the lowest index (as `torch.max` does on
//! CPU). Groups whose maximum is zero contribute no stored latent.
//!
//! **Training is not supported.** saelab reads GroupMax SAEs from sparsify files to run
//! and evaluate them, but never trains one: [`crate::config::ArchConfig::trainable`]
//! returns `false` for it and the trainer must refuse such a config before calling
//! [`Architecture::train_step`], which therefore is never reached (it panics with a
//! message saying so, as the trait has no error path).

use super::common::init_tied;
use super::{Architecture, StepContext, StepOutput};
use crate::config::{ArchConfig, Dims};
use crate::kernels::affine;
use crate::latents::Latents;
use crate::rng::Rng;
use crate::tensor::{Matrix, ParamSet};

/// The GroupMax architecture.
pub struct GroupMax {
    cfg: ArchConfig,
    k: usize,
}

impl GroupMax {
    /// Builds from an [`ArchConfig::Groupmax`].
    pub fn new(cfg: ArchConfig) -> Self {
        let ArchConfig::Groupmax { k } = cfg else {
            panic!("GroupMax::new needs ArchConfig::Groupmax");
        };
        GroupMax { cfg, k }
    }
}

impl Architecture for GroupMax {
    fn config(&self) -> &ArchConfig {
        &self.cfg
    }

    /// Tied initialisation with unit-norm decoder rows (as sparsify initialises); only
    /// useful to build test SAEs, since GroupMax is never trained.
    fn init(&self, dims: Dims, rng: &mut Rng) -> ParamSet {
        init_tied(dims, 1.0, rng)
    }

    /// `x_enc [B, d_in]` → latents `[B, n]` with at most `k` entries per row, one per
    /// group, ordered by group. Needs `W_enc [d_in, n]`, `b_enc [n]`, `n % k == 0`
    /// (checked by the SAE config validation).
    fn encode(&self, p: &ParamSet, x_enc: &Matrix) -> Latents {
        let pre = affine(x_enc, &p.get("W_enc").data, &p.get("b_enc").data);
        let n = pre.cols;
        let group = n / self.k.max(1);
        let mut out = Latents::with_capacity(n, pre.rows, self.k);
        for r in 0..pre.rows {
            let row = pre.row(r);
            out.push_row((0..self.k).filter_map(|g| {
                let start = g * group;
                let mut best = start;
                for j in start + 1..start + group {
                    if row[j] > row[best] {
                        best = j;
                    }
                }
                (row[best] > 0.0).then_some((best as u32, row[best]))
            }));
        }
        out
    }

    fn train_step(
        &mut self,
        _p: &ParamSet,
        _x: &Matrix,
        _ctx: &StepContext,
        _g: &mut ParamSet,
    ) -> StepOutput {
        unreachable!("GroupMax is inference-only; the trainer refuses configs where ArchConfig::trainable() is false")
    }

    fn unit_norm_decoder(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Tensor;

    #[test]
    fn keeps_the_largest_positive_value_of_each_group() {
        // d_in = 1, n = 6, k = 3 → groups {0,1}, {2,3}, {4,5}; W_enc = identity-ish row.
        let mut p = ParamSet::new();
        p.insert("W_enc", Tensor::new(&[1, 6], vec![1.0; 6]).unwrap());
        p.insert(
            "b_enc",
            Tensor::new(&[6], vec![0.5, 2.0, -3.0, -4.0, 1.0, 1.0]).unwrap(),
        );
        let a = GroupMax::new(ArchConfig::Groupmax { k: 3 });
        let x = Matrix::from_vec(1, 1, vec![0.0]).unwrap();
        let l = a.encode(&p, &x);
        // group 0 → latent 1 (2.0); group 1 all negative → nothing; group 2 tie → latent 4.
        assert_eq!(l.row(0), (&[1u32, 4][..], &[2.0f32, 1.0][..]));
    }
}
