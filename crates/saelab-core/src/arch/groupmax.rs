//! GroupMax SAE (EleutherAI sparsify's `activation = "groupmax"`). Inference only.
//!
//! The `n` latents are split into `k` contiguous groups of `n / k`; in each group only
//! the largest ReLU'd pre-activation survives:
//! `f_j = ReLU(pre_j) · 1[j = argmax_{i ∈ group(j)} ReLU(pre_i)]`, with
//! `pre = x_enc · W_enc + b_enc`. Ties go to the lowest index (as `torch.max` does on
//! CPU). Groups whose maximum is zero contribute no stored latent.
//!
//! saelab reads GroupMax SAEs from sparsify files to run and evaluate them, but does not
//! train them: the config implements [`Architecture`] only, and its
//! [`Architecture::trainer`] says so.

use serde::{Deserialize, Serialize};

use super::common::{pre_activations, sae_params};
use super::{Architecture, Knob, Registered, SaeLensForm, Train};
use crate::config::Dims;
use crate::latents::Latents;
use crate::tensor::{Matrix, ParamSet};

/// GroupMax's hyperparameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupMaxConfig {
    /// Number of groups.
    pub k: usize,
}

impl Registered for GroupMaxConfig {
    fn with_k(k: usize) -> Self {
        GroupMaxConfig { k }
    }
}

impl Architecture for GroupMaxConfig {
    fn check(&self, dims: Dims) -> Result<(), String> {
        if self.k == 0 || !dims.n.is_multiple_of(self.k) {
            return Err(format!(
                "groupmax needs k >= 1 dividing d_sae (k={}, d_sae={})",
                self.k, dims.n
            ));
        }
        Ok(())
    }

    fn file_params(&self, dims: Dims) -> Vec<(&'static str, Vec<usize>)> {
        sae_params(dims, &["b_enc"])
    }

    /// `x_enc [B, d_in]` → latents `[B, n]` with at most `k` entries per row, one per
    /// group, ordered by group. Needs `W_enc [d_in, n]`, `b_enc [n]`, `n % k == 0`
    /// (checked by [`Architecture::check`]).
    fn encode(&self, p: &ParamSet, x_enc: &Matrix) -> Latents {
        let pre = pre_activations(p, x_enc);
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

    fn knobs(&self) -> Vec<Knob> {
        vec![Knob::new("k", self.k).sparsity("k", "groups")]
    }

    /// SAELens has no GroupMax.
    fn saelens(&self) -> Option<SaeLensForm> {
        None
    }

    fn trainer(&self, _dims: Dims) -> Result<Box<dyn Train>, String> {
        Err("groupmax SAEs can be loaded and evaluated, not trained".into())
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
        let a = GroupMaxConfig { k: 3 };
        let x = Matrix::from_vec(1, 1, vec![0.0]).unwrap();
        let l = a.encode(&p, &x);
        // group 0 → latent 1 (2.0); group 1 all negative → nothing; group 2 tie → latent 4.
        assert_eq!(l.row(0), (&[1u32, 4][..], &[2.0f32, 1.0][..]));
    }

    #[test]
    fn is_inference_only_and_checks_its_groups() {
        let dims = |n| Dims::square(4, n);
        let a = GroupMaxConfig { k: 3 };
        let err = a
            .trainer(dims(6))
            .err()
            .expect("groupmax cannot be trained");
        assert!(err.contains("not trained"), "{err}");
        assert!(a.check(dims(6)).is_ok());
        assert!(a.check(dims(7)).unwrap_err().contains("dividing d_sae"));
        assert!(GroupMaxConfig { k: 0 }.check(dims(6)).is_err());
        assert!(a.saelens().is_none());
    }
}
