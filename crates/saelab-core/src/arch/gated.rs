//! Gated SAE ("Improving Dictionary Learning with Gated Sparse Autoencoders",
//! Rajamanoharan et al. 2024).
//!
//! Forward, with `x' = x − b_dec` and `r_mag` one log-scale per latent:
//!
//! - gate path `π_gate = x' W_enc + b_gate`,
//! - magnitude path `π_mag = x' (W_enc ⊙ exp r_mag) + b_mag = (x' W_enc) ⊙ exp r_mag + b_mag`,
//! - `f = 1[π_gate > 0] · ReLU(π_mag)`, `x̂ = f W_dec + b_dec`.
//!
//! Loss (per batch of `B` tokens; `λ = l1_coefficient`, `s` the warm-up scale):
//!
//! `L = mean ‖x − x̂‖² + λ·s · mean Σ_i ReLU(π_gate,i) ‖W_dec,i‖
//!      + mean ‖x − (ReLU(π_gate) sg(W_dec) + sg(b_dec))‖²`
//!
//! where `sg` is stop-gradient: the auxiliary reconstruction goes through a *frozen*
//! copy of the decoder, as in the paper, so that it trains only the gate path (it still
//! reaches `b_dec` through the encoder input `x'`, as in the paper's pseudo-code).
//!
//! The gate's Heaviside has zero gradient, so `π_gate` is trained only by the L1 and
//! auxiliary terms, and `π_mag` only by the reconstruction.
//!
//! Decoder rows are kept at unit norm, as in the paper. The L1 term is weighted by the
//! decoder row norms as SAELens does; with unit-norm rows the weight is 1 (the paper's
//! plain `‖ReLU(π_gate)‖₁`) and its gradient with respect to `W_dec` is parallel to the
//! rows, so the trainer's projection removes it: training follows the paper, and the
//! loss value agrees with SAELens for any decoder.
//!
//! Parameters (training and file form, SAELens names): `W_enc [d_in, n]`, `b_gate [n]`,
//! `r_mag [n]`, `b_mag [n]`, `W_dec [n, d_out]`, `b_dec [d_out]`; no `b_enc`.

use serde::{Deserialize, Serialize};

use super::common::{init_tied, sae_params, subtract_bias, NormL1};
use super::relu::default_l1_coefficient;
use super::{ArchConfig, Architecture, Knob, Registered, SaeLensForm, Step, StepOutput, Train};
use crate::config::Dims;
use crate::kernels::{affine, mse_and_grad, sub_assign};
use crate::latents::Latents;
use crate::rng::Rng;
use crate::tensor::{Matrix, ParamSet, Tensor};

/// The Gated SAE's hyperparameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatedConfig {
    /// λ of the L1 penalty on the gate pre-activations.
    #[serde(default = "default_l1_coefficient")]
    pub l1_coefficient: f32,
}

impl Registered for GatedConfig {
    fn with_k(_k: usize) -> Self {
        GatedConfig {
            l1_coefficient: default_l1_coefficient(),
        }
    }
}

impl Architecture for GatedConfig {
    fn file_params(&self, dims: Dims) -> Vec<(&'static str, Vec<usize>)> {
        sae_params(dims, &["b_gate", "r_mag", "b_mag"])
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

    fn knobs(&self) -> Vec<Knob> {
        vec![Knob::new("l1_coefficient", self.l1_coefficient).sparsity("lam", "λ")]
    }

    fn saelens(&self) -> Option<SaeLensForm> {
        SaeLensForm::named("gated")
    }

    fn trainer(&self, _dims: Dims) -> Result<Box<dyn Train>, String> {
        Ok(Box::new(self.clone()))
    }
}

impl GatedConfig {
    /// [`Train::train_step`] with the auxiliary reconstruction decoded through
    /// `frozen_w_dec [n, d_out]` and `frozen_b_dec [d_out]`, treated as constants.
    /// `train_step` passes the current `W_dec` and `b_dec`; tests pass fixed copies so
    /// that finite differences see the same stop-gradient.
    fn step_with_frozen(&self, step: Step<'_>, frozen: (&[f32], &[f32])) -> StepOutput {
        let (engine, p, x, grads) = (step.engine, step.params, step.x, step.grads);
        let (frozen_w_dec, frozen_b_dec) = frozen;
        // The operations below accumulate.
        grads.fill_zero();
        let w_enc = &p.get("W_enc").data;
        let (b_gate, r_mag, b_mag) = (
            &p.get("b_gate").data,
            &p.get("r_mag").data,
            &p.get("b_mag").data,
        );
        let (w_dec, b_dec) = (&p.get("W_dec").data, &p.get("b_dec").data);
        let [g_w_enc, g_b_gate, g_r_mag, g_b_mag, g_w_dec, g_b_dec] =
            grads.get_many_mut(["W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec"]);
        let n = b_gate.len();
        let d_out = b_dec.len();
        let bsz = x.rows.max(1) as f64;
        let scale: Vec<f32> = r_mag.iter().map(|r| r.exp()).collect();

        // Forward. Both paths share x' W_enc; the pattern is the gate-open set, with
        // f = ReLU(π_mag) (possibly 0) and ReLU(π_gate) = π_gate stored on it.
        let x_enc = subtract_bias(x, b_dec);
        let xw = engine.pre_activations(&x_enc, w_enc, &vec![0.0; n]);
        let mut f_lat = Latents::with_capacity(n, x.rows, 0);
        let mut gate_val = Vec::new();
        for r in 0..x.rows {
            let row = xw.row(r);
            f_lat.push_row((0..n).filter_map(|j| {
                let gate = row[j] + b_gate[j];
                (gate > 0.0).then(|| {
                    gate_val.push(gate);
                    (j as u32, (row[j] * scale[j] + b_mag[j]).max(0.0))
                })
            }));
        }
        let gate_lat = Latents {
            val: gate_val,
            ..f_lat.clone()
        };

        // Reconstruction: trains the magnitude path and the decoder.
        let x_hat = engine.decode(&f_lat, w_dec, b_dec);
        let (sq_err, g_out) = mse_and_grad(&x_hat, x);
        let mse = sq_err / bsz;
        let g_f =
            engine.decode_backward(&f_lat, &g_out, w_dec, &mut g_w_dec.data, &mut g_b_dec.data);
        let g_mag: Vec<f32> = g_f
            .iter()
            .zip(&f_lat.val)
            .map(|(&g, &v)| if v > 0.0 { g } else { 0.0 })
            .collect();

        // Sparsity: c Σ ReLU(π_gate,i) ‖W_dec,i‖ with c = λ s / B.
        let c = self.l1_coefficient * step.ctx.sparsity_scale / bsz as f32;
        let mut g_gate = vec![0.0f32; gate_lat.nnz()];
        let penalty = NormL1::new(&gate_lat, w_dec, d_out, c, &mut g_gate);
        penalty.add_decoder_grad(w_dec, &mut g_w_dec.data);
        let l1 = penalty.penalty;

        // Auxiliary reconstruction through the frozen decoder: trains the gate path only.
        let x_gate = engine.decode(&gate_lat, frozen_w_dec, frozen_b_dec);
        let (aux_sq, g_aux) = mse_and_grad(&x_gate, x);
        let aux = aux_sq / bsz;
        let g_gate_aux = engine.latent_grads(&gate_lat, &g_aux, frozen_w_dec);
        g_gate
            .iter_mut()
            .zip(&g_gate_aux)
            .for_each(|(g, a)| *g += a);

        // Encoder: ∂π_gate/∂W_enc = x', ∂π_mag/∂W_enc = x' exp(r_mag), so one backward
        // pass over the gate pattern with g = g_gate + g_mag · exp(r_mag).
        let mut g_pre = Vec::with_capacity(gate_lat.nnz());
        for r in 0..x.rows {
            let row = xw.row(r);
            for e in gate_lat.indptr[r]..gate_lat.indptr[r + 1] {
                let j = gate_lat.idx[e] as usize;
                g_b_gate.data[j] += g_gate[e];
                g_b_mag.data[j] += g_mag[e];
                g_r_mag.data[j] += g_mag[e] * row[j] * scale[j];
                g_pre.push(g_gate[e] + g_mag[e] * scale[j]);
            }
        }
        let s = engine.encode_backward(&gate_lat, &g_pre, &x_enc, w_enc, &mut g_w_enc.data, None);
        sub_assign(&mut g_b_dec.data, &s);

        let mut latents = f_lat;
        latents.prune_zeros();
        StepOutput {
            loss: mse + l1 + aux,
            terms: vec![("mse", mse), ("l1", l1), ("aux", aux)],
            latents,
            sq_err,
        }
    }
}

/// Training: the training form is the file form (SAELens names, no `b_enc`).
impl Train for GatedConfig {
    /// Tied init with unit-norm decoder rows (`W_enc = W_decᵀ`), `b_gate = r_mag =
    /// b_mag = 0` (so both paths start equal), `b_dec = 0`.
    fn init(&self, dims: Dims, rng: &mut Rng) -> ParamSet {
        let mut tied = init_tied(dims, 1.0, rng);
        let mut p = ParamSet::new();
        p.insert("W_enc", tied.remove("W_enc").unwrap());
        for name in ["b_gate", "r_mag", "b_mag"] {
            p.insert(name, Tensor::zeros(&[dims.n]));
        }
        p.insert("W_dec", tied.remove("W_dec").unwrap());
        p.insert("b_dec", tied.remove("b_dec").unwrap());
        p
    }

    fn train_step(&mut self, step: Step<'_>) -> StepOutput {
        let p = step.params;
        let frozen = (&p.get("W_dec").data[..], &p.get("b_dec").data[..]);
        self.step_with_frozen(step, frozen)
    }

    fn to_file(&self, params: &ParamSet) -> (ParamSet, ArchConfig) {
        (params.clone(), self.clone().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::common::row_norms;
    use crate::arch::gradcheck;
    use crate::arch::StepContext;
    use crate::kernels::cpu::CpuEngine;

    fn arch(l1: f32) -> GatedConfig {
        GatedConfig { l1_coefficient: l1 }
    }

    /// Gated with the auxiliary decoder frozen at fixed values, so that the loss it
    /// reports is a function whose exact gradient is what `train_step` computes.
    struct Frozen {
        inner: GatedConfig,
        w_dec: Vec<f32>,
        b_dec: Vec<f32>,
    }

    impl Train for Frozen {
        fn init(&self, dims: Dims, rng: &mut Rng) -> ParamSet {
            self.inner.init(dims, rng)
        }
        fn train_step(&mut self, step: Step<'_>) -> StepOutput {
            self.inner
                .step_with_frozen(step, (&self.w_dec, &self.b_dec))
        }
        fn to_file(&self, params: &ParamSet) -> (ParamSet, ArchConfig) {
            self.inner.to_file(params)
        }
    }

    /// Perturbed parameters with r_mag and b_mag moved off zero so that the two paths
    /// differ (some latents gate-open with a negative magnitude, and the reverse).
    fn params(a: &GatedConfig, dims: Dims, rng: &mut Rng) -> ParamSet {
        let mut p = gradcheck::perturbed_params(a, dims, rng, 0.1);
        for v in p.get_mut("r_mag").data.iter_mut() {
            *v = 0.3 * rng.normal() as f32;
        }
        for v in p.get_mut("b_mag").data.iter_mut() {
            *v = 0.3 * rng.normal() as f32;
        }
        p
    }

    #[test]
    fn init_has_saelens_names_and_tied_unit_rows() {
        let (d, n) = (5, 8);
        let p = arch(1.0).init(Dims::square(d, n), &mut Rng::new(1));
        let names: Vec<&str> = p.iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            ["W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec"]
        );
        for name in ["b_gate", "r_mag", "b_mag"] {
            assert_eq!(p.get(name).shape, [n]);
            assert!(p.get(name).data.iter().all(|&v| v == 0.0));
        }
        for nrm in row_norms(&p.get("W_dec").data, d) {
            assert!((nrm - 1.0).abs() < 1e-5);
        }
        let (we, wd) = (&p.get("W_enc").data, &p.get("W_dec").data);
        for i in 0..d {
            for j in 0..n {
                assert_eq!(we[i * n + j], wd[j * d + i]);
            }
        }
    }

    #[test]
    fn loss_terms_match_a_direct_computation() {
        let (d, n, rows) = (5, 14, 9);
        let mut rng = Rng::new(12);
        let mut a = arch(0.6);
        let p = params(&a, Dims::square(d, n), &mut rng);
        let x = gradcheck::random_batch(&mut rng, rows, d);
        let g = |k: &str| {
            p.get(k)
                .data
                .iter()
                .map(|&v| v as f64)
                .collect::<Vec<f64>>()
        };
        let (w_enc, b_gate, r_mag, b_mag, w_dec, b_dec) = (
            g("W_enc"),
            g("b_gate"),
            g("r_mag"),
            g("b_mag"),
            g("W_dec"),
            g("b_dec"),
        );
        let s = 0.7;
        let (mut mse, mut l1, mut aux) = (0.0, 0.0, 0.0);
        let mut nnz = 0;
        for r in 0..rows {
            let xc: Vec<f64> = (0..d).map(|i| x.row(r)[i] as f64 - b_dec[i]).collect();
            let mut f = vec![0.0; n];
            let mut gate_act = vec![0.0; n];
            for j in 0..n {
                let gate = (0..d).map(|i| xc[i] * w_enc[i * n + j]).sum::<f64>() + b_gate[j];
                let mag = (0..d)
                    .map(|i| xc[i] * w_enc[i * n + j] * r_mag[j].exp())
                    .sum::<f64>()
                    + b_mag[j];
                f[j] = if gate > 0.0 { mag.max(0.0) } else { 0.0 };
                gate_act[j] = gate.max(0.0);
                nnz += (f[j] != 0.0) as usize;
                let nrm = (0..d).map(|i| w_dec[j * d + i].powi(2)).sum::<f64>().sqrt();
                l1 += gate_act[j] * nrm;
            }
            for i in 0..d {
                let xh = b_dec[i] + (0..n).map(|j| f[j] * w_dec[j * d + i]).sum::<f64>();
                let xg = b_dec[i] + (0..n).map(|j| gate_act[j] * w_dec[j * d + i]).sum::<f64>();
                mse += (x.row(r)[i] as f64 - xh).powi(2);
                aux += (x.row(r)[i] as f64 - xg).powi(2);
            }
        }
        let bf = rows as f64;
        let want = [mse / bf, 0.6 * s * l1 / bf, aux / bf];
        let dead = vec![false; n];
        let ctx = StepContext::new(s as f32, &dead);
        for mut engine in gradcheck::engines() {
            let out = a.train_step(Step::new(engine.as_mut(), &p, &x, ctx, &mut p.zeros_like()));
            let names: Vec<&str> = out.terms.iter().map(|t| t.0).collect();
            assert_eq!(names, ["mse", "l1", "aux"]);
            for ((_, got), w) in out.terms.iter().zip(want) {
                assert!((got - w).abs() < 1e-5 * w, "{got} vs {w}");
            }
            assert!((out.loss - want.iter().sum::<f64>()).abs() < 1e-5 * out.loss);
            assert_eq!(out.latents.nnz(), nnz);
        }
    }

    #[test]
    fn gradient_matches_finite_differences_with_frozen_aux_decoder() {
        let dims = Dims::square(6, 20);
        let mut rng = Rng::new(5);
        let inner = arch(0.8);
        let p = params(&inner, dims, &mut rng);
        let x = gradcheck::random_batch(&mut rng, 9, 6);
        let dead = vec![false; 20];
        let mut frozen = Frozen {
            inner,
            w_dec: p.get("W_dec").data.clone(),
            b_dec: p.get("b_dec").data.clone(),
        };
        let ctx = StepContext::new(0.9, &dead);
        for mut engine in gradcheck::engines() {
            // At the frozen point, train_step and the frozen wrapper agree exactly, so
            // the finite-difference check below is a check of train_step's gradient.
            let (mut g1, mut g2) = (p.zeros_like(), p.zeros_like());
            let o1 = frozen
                .inner
                .train_step(Step::new(engine.as_mut(), &p, &x, ctx, &mut g1));
            let o2 = frozen.train_step(Step::new(engine.as_mut(), &p, &x, ctx, &mut g2));
            assert_eq!(o1.loss, o2.loss);
            assert_eq!(g1, g2);
            gradcheck::check(&mut frozen, engine.as_mut(), &p, &x, &ctx, &[], 40, None);
        }
    }

    #[test]
    fn aux_term_gives_the_decoder_no_gradient() {
        // Finite differences of the *unfrozen* loss in W_dec differ from train_step's
        // gradient by exactly the aux term's decoder gradient, which is
        // 2/B Σ_rows ReLU(π_gate)_j (x̂_gate − x) for row j.
        let (d, n, rows) = (4, 10, 8);
        let mut rng = Rng::new(31);
        let mut a = arch(0.5);
        let p = params(&a, Dims::square(d, n), &mut rng);
        let x = gradcheck::random_batch(&mut rng, rows, d);
        let dead = vec![false; n];
        let ctx = StepContext::new(1.0, &dead);
        let mut engine = CpuEngine::default();
        let mut g = p.zeros_like();
        a.train_step(Step::new(&mut engine, &p, &x, ctx, &mut g));
        let x_enc = subtract_bias(&x, &p.get("b_dec").data);
        let pre = affine(&x_enc, &p.get("W_enc").data, &p.get("b_gate").data);
        let gate = Latents::from_dense(&Matrix {
            data: pre.data.iter().map(|v| v.max(0.0)).collect(),
            ..pre
        });
        let xg =
            crate::kernels::reference::decode(&gate, &p.get("W_dec").data, &p.get("b_dec").data);
        let gate_d = gate.to_dense();
        let h = 1e-3f32;
        let mut checked = 0;
        for j in 0..n {
            for i in 0..d {
                let k = j * d + i;
                let aux_grad: f64 = (0..rows)
                    .map(|r| {
                        2.0 * gate_d.row(r)[j] as f64 * (xg.row(r)[i] - x.row(r)[i]) as f64
                            / rows as f64
                    })
                    .sum();
                let mut loss_at = |delta: f32| {
                    let mut q = p.clone();
                    q.get_mut("W_dec").data[k] += delta;
                    a.train_step(Step::new(&mut engine, &q, &x, ctx, &mut q.zeros_like()))
                        .loss
                };
                let fd = (loss_at(h) - loss_at(-h)) / (2.0 * h as f64);
                let an = g.get("W_dec").data[k] as f64 + aux_grad;
                assert!(
                    (fd - an).abs() <= 2e-2 * fd.abs().max(an.abs()) + 2e-3,
                    "W_dec[{k}]: {fd} vs {an}"
                );
                checked += (aux_grad.abs() > 1e-2) as usize;
            }
        }
        assert!(checked > 5, "aux gradient too small to tell: {checked}");
    }
}
