//! ReLU SAE with the L1 penalty of Anthropic's April-2024 update ("Circuits Updates —
//! April 2024", the "standard" SAE of SAELens).
//!
//! Forward, with `x' = x − b_dec`:
//!
//! `f = ReLU(x' W_enc + b_enc)`, `x̂ = f W_dec + b_dec`
//!
//! Loss (per batch of `B` tokens; `λ = l1_coefficient`, `s` the warm-up scale):
//!
//! `L = mean_tokens ‖x − x̂‖² + λ·s · mean_tokens Σ_i f_i ‖W_dec,i‖`
//!
//! The penalty weights each latent by its decoder row norm, so the decoder is *not*
//! renormalised: shrinking a row does not buy a smaller penalty. The gradient flows
//! through both factors: `∂/∂f_i += λ·s·‖W_dec,i‖ / B` and
//! `∂/∂W_dec,i += (λ·s / B) (Σ_tokens f_i) W_dec,i / ‖W_dec,i‖`.
//!
//! Initialisation: decoder rows random directions of norm 0.1, `W_enc = W_decᵀ`.
//!
//! ReLU latents are as sparse as training has made them, so a step uses the sparse
//! kernels while the batch's latent density is below [`DENSE_DENSITY`] and the dense
//! ones above it (early in training, about half the latents are on).

use super::common::{
    init_tied, mse_and_grad, sub_assign, subtract_bias, Kernels, NormL1, DENSE_DENSITY,
};
use super::{Architecture, StepContext, StepOutput};
use crate::config::{ArchConfig, Dims};
use crate::kernels::affine;
use crate::kernels::select::for_each_above;
use crate::kernels::sparse::{AuxBackward, Grads, Workspace};
use crate::latents::Latents;
use crate::rng::Rng;
use crate::tensor::{Matrix, ParamSet};

/// The ReLU architecture: `W_enc [d_in, n]`, `b_enc [n]`, `W_dec [n, d_out]`,
/// `b_dec [d_out]` (training and file form are the same).
pub struct Relu {
    cfg: ArchConfig,
    l1_coefficient: f32,
    /// Latent density above which the dense kernels are used.
    dense_above: f64,
    /// Latent density of the previous fast step (`None` before the first): the next
    /// step takes the fused sparse route when it was at most `dense_above`.
    last_density: Option<f64>,
    ws: Workspace,
}

impl Relu {
    /// Builds from an [`ArchConfig::Relu`].
    pub fn new(cfg: ArchConfig) -> Self {
        let ArchConfig::Relu { l1_coefficient } = cfg else {
            panic!("Relu::new needs ArchConfig::Relu");
        };
        Relu {
            cfg,
            l1_coefficient,
            dense_above: DENSE_DENSITY,
            last_density: None,
            ws: Workspace::default(),
        }
    }

    /// The fused sparse step: the encoder runs block by block keeping the positive
    /// pre-activations; decoder, penalty and gradients are sparse. `None` (nothing
    /// changed) when the batch turns out denser than `dense_above`.
    fn train_step_sparse(
        &mut self,
        p: &ParamSet,
        x: &Matrix,
        ctx: &StepContext,
        grads: &mut ParamSet,
    ) -> Option<StepOutput> {
        let (w_enc, b_enc) = (&p.get("W_enc").data, &p.get("b_enc").data);
        let (w_dec, b_dec) = (&p.get("W_dec").data, &p.get("b_dec").data);
        let (d, n) = (x.cols, b_enc.len());
        let bsz = x.rows.max(1) as f64;
        let zero = vec![0.0f32; n];
        self.ws.encoder.load(w_enc, d, n);
        let parts = self.ws.encoder.run(
            w_enc,
            x,
            Some(b_dec),
            b_enc,
            || Latents::new(n),
            |lat, _r, pre| {
                for_each_above(pre, &zero, |j, v| {
                    lat.idx.push(j as u32);
                    lat.val.push(v);
                });
                lat.indptr.push(lat.idx.len());
            },
        );
        let mut lat = Latents::with_capacity(n, x.rows, 0);
        for l in &parts {
            lat.append(l);
        }
        let density = lat.nnz() as f64 / (x.rows * n).max(1) as f64;
        self.last_density = Some(density);
        if density > self.dense_above {
            return None;
        }
        let sums = self.ws.rows(x, w_dec, b_dec, &lat, None);
        let mse = sums.sq_err / bsz;
        let mut g_f = std::mem::take(&mut self.ws.g_f);
        let [g_w_enc, g_b_enc, g_w_dec, g_b_dec] =
            grads.get_many_mut(["W_enc", "b_enc", "W_dec", "b_dec"]);
        // Sparsity penalty c Σ f_i ‖W_dec,i‖ with c = λ s / B.
        let c = self.l1_coefficient * ctx.sparsity_scale / bsz as f32;
        let l1 = NormL1::new(&lat, w_dec, d, c, &mut g_f);
        // Writes every gradient entry; the L1 term's decoder part is added after.
        self.ws.backward(
            x,
            b_dec,
            w_enc,
            &lat,
            &g_f,
            w_dec,
            AuxBackward::None,
            Grads {
                w_enc: &mut g_w_enc.data,
                b_enc: &mut g_b_enc.data,
                w_dec: &mut g_w_dec.data,
                b_dec: &mut g_b_dec.data,
            },
        );
        l1.add_decoder_grad(w_dec, &mut g_w_dec.data);
        self.ws.g_f = g_f;
        let l1 = l1.penalty;
        Some(StepOutput {
            loss: mse + l1,
            terms: vec![("mse", mse), ("l1", l1)],
            latents: lat,
            sq_err: sums.sq_err,
        })
    }
}

impl Architecture for Relu {
    fn config(&self) -> &ArchConfig {
        &self.cfg
    }

    /// Tied init with decoder rows of norm 0.1, biases zero.
    fn init(&self, dims: Dims, rng: &mut Rng) -> ParamSet {
        init_tied(dims, 0.1, rng)
    }

    fn encode(&self, p: &ParamSet, x_enc: &Matrix) -> Latents {
        let mut pre = affine(x_enc, &p.get("W_enc").data, &p.get("b_enc").data);
        pre.data.iter_mut().for_each(|v| *v = v.max(0.0));
        Latents::from_dense(&pre)
    }

    fn train_step(
        &mut self,
        p: &ParamSet,
        x: &Matrix,
        ctx: &StepContext,
        grads: &mut ParamSet,
    ) -> StepOutput {
        // The fused sparse route while the previous step was sparse enough (and, before
        // any step, only if forced by dense_above ≥ 1).
        let try_sparse = !ctx.reference
            && match self.last_density {
                Some(dens) => dens <= self.dense_above,
                None => self.dense_above >= 1.0,
            };
        if try_sparse {
            if let Some(out) = self.train_step_sparse(p, x, ctx, grads) {
                return out;
            }
        }
        // The dense route's kernels accumulate.
        grads.fill_zero();
        let (w_enc, b_enc) = (&p.get("W_enc").data, &p.get("b_enc").data);
        let (w_dec, b_dec) = (&p.get("W_dec").data, &p.get("b_dec").data);
        let [g_w_enc, g_b_enc, g_w_dec, g_b_dec] =
            grads.get_many_mut(["W_enc", "b_enc", "W_dec", "b_dec"]);
        let d_out = b_dec.len();
        let bsz = x.rows.max(1) as f64;

        let x_enc = subtract_bias(x, b_dec);
        let pre = affine(&x_enc, w_enc, b_enc);
        let mut lat = Latents::with_capacity(pre.cols, pre.rows, 0);
        for r in 0..pre.rows {
            lat.push_row(
                pre.row(r)
                    .iter()
                    .enumerate()
                    .filter(|(_, &v)| v > 0.0)
                    .map(|(j, &v)| (j as u32, v)),
            );
        }
        let kern = Kernels::for_density(ctx.reference, &lat, self.dense_above);
        if !ctx.reference {
            self.last_density = Some(lat.nnz() as f64 / (lat.rows() * lat.n).max(1) as f64);
        }

        let x_hat = kern.decode(&lat, w_dec, b_dec);
        let (sq_err, g_out) = mse_and_grad(&x_hat, x);
        let mse = sq_err / bsz;
        let mut g_f =
            kern.decode_backward(&lat, &g_out, w_dec, &mut g_w_dec.data, &mut g_b_dec.data);

        // Sparsity penalty c Σ f_i ‖W_dec,i‖ with c = λ s / B.
        let c = self.l1_coefficient * ctx.sparsity_scale / bsz as f32;
        let penalty = NormL1::new(&lat, w_dec, d_out, c, &mut g_f);
        penalty.add_decoder_grad(w_dec, &mut g_w_dec.data);
        let l1 = penalty.penalty;

        // ReLU' = 1 on every stored (positive) latent.
        let s = kern.encode_backward(
            &lat,
            &g_f,
            &x_enc,
            w_enc,
            &mut g_w_enc.data,
            Some(&mut g_b_enc.data),
        );
        sub_assign(&mut g_b_dec.data, &s);

        StepOutput {
            loss: mse + l1,
            terms: vec![("mse", mse), ("l1", l1)],
            latents: lat,
            sq_err,
        }
    }

    /// False: the norm-weighted penalty replaces the unit-norm constraint.
    fn unit_norm_decoder(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::common::row_norms;
    use crate::arch::gradcheck;

    fn arch(l1: f32) -> Relu {
        Relu::new(ArchConfig::Relu { l1_coefficient: l1 })
    }

    #[test]
    fn init_is_tied_with_decoder_rows_of_norm_one_tenth() {
        let a = arch(1.0);
        let (d, n) = (6, 9);
        let p = a.init(
            Dims {
                d_in: d,
                n,
                d_out: d,
            },
            &mut Rng::new(2),
        );
        for nrm in row_norms(&p.get("W_dec").data, d) {
            assert!((nrm - 0.1).abs() < 1e-6);
        }
        let (we, wd) = (&p.get("W_enc").data, &p.get("W_dec").data);
        for i in 0..d {
            for j in 0..n {
                assert_eq!(we[i * n + j], wd[j * d + i]);
            }
        }
        assert!(!a.unit_norm_decoder());
    }

    #[test]
    fn loss_is_mse_plus_norm_weighted_l1() {
        let (d, n, rows) = (5, 12, 7);
        let mut rng = Rng::new(4);
        let mut a = arch(0.7);
        let p = gradcheck::perturbed_params(
            &a,
            Dims {
                d_in: d,
                n,
                d_out: d,
            },
            &mut rng,
            0.2,
        );
        let x = gradcheck::random_batch(&mut rng, rows, d);
        let (w_enc, b_enc) = (&p.get("W_enc").data, &p.get("b_enc").data);
        let (w_dec, b_dec) = (&p.get("W_dec").data, &p.get("b_dec").data);
        let (mut mse, mut l1) = (0.0f64, 0.0f64);
        for r in 0..rows {
            let f: Vec<f64> = (0..n)
                .map(|j| {
                    let pre = b_enc[j] as f64
                        + (0..d)
                            .map(|i| (x.row(r)[i] - b_dec[i]) as f64 * w_enc[i * n + j] as f64)
                            .sum::<f64>();
                    pre.max(0.0)
                })
                .collect();
            for i in 0..d {
                let xh =
                    b_dec[i] as f64 + (0..n).map(|j| f[j] * w_dec[j * d + i] as f64).sum::<f64>();
                mse += (xh - x.row(r)[i] as f64).powi(2);
            }
            for j in 0..n {
                let nrm = (0..d)
                    .map(|i| (w_dec[j * d + i] as f64).powi(2))
                    .sum::<f64>()
                    .sqrt();
                l1 += f[j] * nrm;
            }
        }
        let s = 0.5;
        let (mse, l1) = (mse / rows as f64, 0.7 * s * l1 / rows as f64);
        let dead = vec![false; n];
        let ctx = StepContext {
            sparsity_scale: s as f32,
            dead: &dead,
            reference: false,
        };
        let out = a.train_step(&p, &x, &ctx, &mut p.zeros_like());
        assert_eq!(out.terms[0].0, "mse");
        assert!((out.terms[0].1 - mse).abs() < 1e-5 * mse);
        assert_eq!(out.terms[1].0, "l1");
        assert!((out.terms[1].1 - l1).abs() < 1e-5 * l1);
        assert!((out.loss - mse - l1).abs() < 1e-5 * (mse + l1));
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let dims = Dims {
            d_in: 6,
            n: 20,
            d_out: 6,
        };
        let mut rng = Rng::new(5);
        let mut a = arch(0.8);
        let p = gradcheck::perturbed_params(&a, dims, &mut rng, 0.2);
        let x = gradcheck::random_batch(&mut rng, 9, 6);
        let dead = vec![false; 20];
        // Sparse kernels forced, then the dense reference kernels.
        for (reference, dense_above) in [(false, 1.0), (true, 1.0)] {
            a.dense_above = dense_above;
            let ctx = StepContext {
                sparsity_scale: 0.9,
                dead: &dead,
                reference,
            };
            gradcheck::check(&mut a, &p, &x, &ctx, &[], 40, None);
        }
    }

    #[test]
    fn sparse_and_dense_paths_agree() {
        let dims = Dims {
            d_in: 11,
            n: 70,
            d_out: 11,
        };
        let mut rng = Rng::new(8);
        let mut a = arch(2.0);
        let p = gradcheck::perturbed_params(&a, dims, &mut rng, 0.1);
        let x = gradcheck::random_batch(&mut rng, 67, 11);
        let dead = vec![false; 70];
        let ctx = StepContext {
            sparsity_scale: 1.0,
            dead: &dead,
            reference: false,
        };
        let run = |a: &mut Relu, dense_above| {
            a.dense_above = dense_above;
            // NaN-filled: both routes must write every gradient entry.
            let mut g = super::super::tests::nan_like(&p);
            let o = a.train_step(&p, &x, &ctx, &mut g);
            (o, g)
        };
        let (o1, g1) = run(&mut a, 1.0); // always sparse
        let (o2, g2) = run(&mut a, 0.0); // always dense
        assert!((o1.loss - o2.loss).abs() < 1e-5 * o1.loss);
        assert_eq!(o1.latents, o2.latents);
        for ((_, t1), (_, t2)) in g1.iter().zip(g2.iter()) {
            for (u, v) in t1.data.iter().zip(&t2.data) {
                assert!((u - v).abs() < 1e-4 * (1.0 + u.abs()));
            }
        }
    }

    #[test]
    fn training_latents_equal_inference_encode() {
        let dims = Dims {
            d_in: 8,
            n: 30,
            d_out: 8,
        };
        let mut rng = Rng::new(9);
        let mut a = arch(1.0);
        let p = gradcheck::perturbed_params(&a, dims, &mut rng, 0.1);
        let x = gradcheck::random_batch(&mut rng, 13, 8);
        let dead = vec![false; 30];
        let ctx = StepContext {
            sparsity_scale: 1.0,
            dead: &dead,
            reference: false,
        };
        let out = a.train_step(&p, &x, &ctx, &mut p.zeros_like());
        let (file, _) = a.to_file(&p);
        let enc = a.encode(&file, &subtract_bias(&x, &p.get("b_dec").data));
        assert_eq!(enc, out.latents);
    }
}
