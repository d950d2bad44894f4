//! What the TopK family (TopK, BatchTopK) shares: the AuxK term and the step once the
//! selection rule is fixed.
//!
//! AuxK ("Scaling and evaluating sparse autoencoders", Gao et al. 2024): per token, the
//! `k_aux` largest positive pre-activations among the *dead* latents, decoded without
//! `b_dec`, reconstruct the residual `e = x − x̂` of the main path:
//! `aux = c · mean_tokens ‖e − ReLU(TopK_{k_aux, dead}(pre)) W_dec‖²`. The target `e`
//! carries no gradient (a constant), so the term trains only the dead latents' encoder
//! columns, their decoder rows, `b_enc` at them and `b_dec` through the encoder input.
//!
//! The family's loss is `mean ‖x − x̂‖² + aux`; every selected latent is positive and
//! passes the reconstruction gradient straight to its pre-activation (`∂f/∂pre = 1` on
//! the selection, which is piecewise constant).

use super::common::{encoder, sae_grads};
use super::{Step, StepOutput};
use crate::kernels::engine::{AuxSelect, Select};

/// The AuxK settings of a TopK-family SAE.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AuxK {
    /// Dead latents used per token (0 disables the term).
    pub k: usize,
    /// Coefficient `c` of the term.
    pub coefficient: f32,
}

impl AuxK {
    /// The dead latents (increasing) when the term is computed this step, else none:
    /// it is on when `k` and the coefficient are positive and some latent is dead.
    pub fn dead_latents(&self, dead: &[bool]) -> Vec<u32> {
        if self.k == 0 || self.coefficient <= 0.0 || !dead.iter().any(|&d| d) {
            return Vec::new();
        }
        (0..dead.len() as u32)
            .filter(|&j| dead[j as usize])
            .collect()
    }
}

/// One TopK-family step: the latents `select` names (with AuxK over the dead latents),
/// the reconstruction, the loss `mse (+ aux)` and every gradient, written into `grads`.
pub fn step(step: Step<'_>, select: Select, aux: AuxK) -> StepOutput {
    let (engine, p, x, grads) = (step.engine, step.params, step.x, step.grads);
    let enc = encoder(p);
    let (w_dec, b_dec) = (&p.get("W_dec").data, &p.get("b_dec").data);
    let bsz = x.rows.max(1) as f64;
    let dead = aux.dead_latents(step.ctx.dead);
    let aux_select = AuxSelect {
        dead: &dead,
        k: aux.k,
        coefficient: aux.coefficient,
    };
    let sel = engine.encode(x, enc, select, aux_select);
    // ∂L/∂pre = ∂L/∂f on every selected (positive) latent: the engine's g_f as it is.
    let rec = engine.reconstruct(x, w_dec, b_dec, &sel);
    let sq_err = rec.sq_err;
    let mse = sq_err / bsz;
    let aux_sq = engine.backward(x, enc, w_dec, &sel, rec, sae_grads(grads));
    let mut terms = vec![("mse", mse)];
    let mut loss = mse;
    if sel.aux.on() {
        let a = aux.coefficient as f64 * aux_sq / bsz;
        terms.push(("aux", a));
        loss += a;
    }
    StepOutput {
        loss,
        terms,
        latents: sel.latents,
        sq_err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::StepContext;
    use crate::arch::{gradcheck, ArchConfig, BatchTopKConfig, TopKConfig};
    use crate::config::Dims;
    use crate::rng::Rng;

    #[test]
    fn auxk_gradient_matches_finite_differences_on_dead_latents() {
        // The AuxK target e = x − x̂ carries no gradient, so finite differences equal the
        // analytic gradient only for parameters x̂ does not depend on: those of latents
        // that are dead *and* unselected by the main path on this batch.
        let (d, n, rows) = (6, 24, 7);
        let dims = Dims::square(d, n);
        let archs = [
            ArchConfig::Topk(TopKConfig {
                k: 3,
                aux_k: 4,
                aux_coefficient: 0.5,
            }),
            ArchConfig::Batchtopk(BatchTopKConfig {
                k: 3,
                aux_k: 4,
                aux_coefficient: 0.5,
                threshold_momentum: 0.01,
            }),
        ];
        for cfg in archs {
            let mut rng = Rng::new(6);
            let mut a = cfg.trainer(dims).unwrap();
            let p = gradcheck::perturbed_params(a.as_ref(), dims, &mut rng, 0.1);
            let x = gradcheck::random_batch(&mut rng, rows, d);
            let alive = vec![false; n];
            let no_dead = StepContext::new(1.0, &alive);
            let used = gradcheck::step_on_cpu(a.as_mut(), &p, &x, no_dead).latents;
            let dead: Vec<bool> = (0..n).map(|j| !used.idx.contains(&(j as u32))).collect();
            assert!(dead.iter().filter(|&&v| v).count() >= 4);
            let only = |name: &str, i: usize| match name {
                "W_enc" => dead[i % n],
                "b_enc" => dead[i],
                "W_dec" => dead[i / d],
                _ => false,
            };
            let ctx = StepContext::new(1.0, &dead);
            for mut engine in gradcheck::engines() {
                let out =
                    a.train_step(Step::new(engine.as_mut(), &p, &x, ctx, &mut p.zeros_like()));
                assert!(
                    out.terms.iter().any(|(t, v)| *t == "aux" && *v > 0.0),
                    "{}: no AuxK term",
                    cfg.name()
                );
                gradcheck::check(
                    a.as_mut(),
                    engine.as_mut(),
                    &p,
                    &x,
                    &ctx,
                    &[],
                    40,
                    Some(&only),
                );
            }
        }
    }
}
